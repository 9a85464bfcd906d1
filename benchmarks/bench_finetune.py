"""Fine-tuning on built-in tasks: pretrained tiny MW-MAE and MAE against random init.

    PYTHONPATH=src python benchmarks/bench_finetune.py --demo demo_out \
        --out /tmp/bench_ft --tasks synth_count --seeds 3 --steps 30 --batch 16

For each task and model: `finetune` with the `finetune_tiny_cpu` preset (shortened by
--steps/--batch), `seeds` seeds; prints one markdown row per model (test score mean +- 95%
t half-width over seeds) with the frozen-probe score of the same model from the demo's
results.json beside it, and fine-tuning throughput (training samples/s, this machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mwmae.finetuning import finetune


def _models(demo: Path) -> dict[str, str]:
    return {
        "mwmae_tiny": str(demo / "runs" / "mwmae_tiny" / "final"),
        "mae_tiny": str(demo / "runs" / "mae_tiny" / "final"),
        "random_mwmae_tiny": "random:" + str(demo / "runs" / "mwmae_tiny" / "final"),
    }


def _throughput(run_dir: Path) -> float:
    rates = []
    for log in run_dir.glob("seed_*/*/log.jsonl"):
        recs = [json.loads(x) for x in log.read_text().splitlines()]
        rates += [r["samples_per_s"] for r in recs if r["event"] == "train"]
    return sum(rates) / max(len(rates), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=Path("demo_out"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_ft"))
    ap.add_argument("--tasks", nargs="+", default=["synth_count"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    probe = {r["model"]: r for r in json.loads((args.demo / "results.json").read_text())}
    rows = []
    for task in args.tasks:
        for label, model in _models(args.demo).items():
            overrides = [
                f"task={args.demo / 'data' / 'tasks' / task}",
                f"seeds={args.seeds}",
                f"schedule.steps={args.steps}",
                f"schedule.warmup_steps={max(1, args.steps // 10)}",
                f"batch.size={args.batch}",
                f"eval.every={max(1, args.steps // 3)}",
                f"train.num_threads={args.threads}",
                f"output.dir={args.out}",
                f"output.run_name={task}_{label}",
            ]
            overrides.append(f"model={model}")
            t0 = time.perf_counter()
            run_dir = finetune("finetune_tiny_cpu", overrides, progress=False)
            wall = time.perf_counter() - t0
            res = json.loads((run_dir / "results.json").read_text())["tasks"][task]
            p = probe.get(label, {}).get("tasks", {}).get(task)
            rows.append((task, label, res, p, _throughput(run_dir), wall))
            print(_row(*rows[-1]), flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}")


def _row(task, label, res, probe, sps, wall) -> str:
    ft = f"{100 * res['mean']:.1f} ± {100 * res['ci95']:.1f}"
    pr = f"{100 * probe['mean']:.1f} ± {100 * probe['ci95']:.1f}" if probe else "—"
    return f"| {task} | {label} | {ft} | {pr} | {sps:.1f} | {wall:.0f} |"


if __name__ == "__main__":
    main()
