"""The main job: built-in data -> pretrain a tiny MAE and MW-MAE -> HEAR evaluation -> table.

Everything runs on a CPU in minutes with the defaults, and every number in the table comes from
the run. `run_demo` reports its stages through a callback (the CLI prints them with an ETA);
it writes into `out_dir`:

    data/                  the generated corpus and HEAR-layout tasks
    runs/<model>/          pretraining runs (checkpoints, log.jsonl, TensorBoard, figures, final/)
    embeddings/<model>/    per-task embeddings
    results/<model>/       results.json + results.md per model
    results.md, results.json   the paper-style table (all models) and its numbers
    figures/               loss curves and reconstructions
    summary.json           timings, settings and where everything is
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Relative cost of each stage for the ETA: seconds measured with the defaults on 2 CPU cores.
_STAGE_WEIGHTS = {"data": 24.0, "pretrain": 347.0, "embed": 34.0, "evaluate": 363.0, "report": 1.0}


@dataclass
class DemoSettings:
    """Knobs of the demo; the defaults fit in well under 20 minutes on 2 CPU cores."""

    out_dir: str = "demo_out"
    data_size: str = "small"  # tiny | small | medium
    seed: int = 0
    models: tuple[str, ...] = ("mae_tiny_cpu", "mwmae_tiny_cpu")  # pretraining presets
    steps: int = 400  # pretraining steps per model (same budget for each)
    batch_size: int = 32
    eval_seeds: int = 3
    eval_preset: str = "paper"
    max_epochs: int = 150  # probe epochs (the paper: 500)
    threads: int = 0  # torch threads (0: leave as is)
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)


StageCallback = Callable[[str, str, float], None]  # (stage, message, fraction of work done)


def _notify(callback: StageCallback | None, stage: str, message: str, done: float) -> None:
    if callback is not None:
        callback(stage, message, done)


def _loss_curves_figure(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mwmae.pretraining.loop import load_log

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, run_dir in runs.items():
        records = [r for r in load_log(run_dir) if "loss" in r and "step" in r]
        if records:
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("masked reconstruction loss (MSE)")
    ax.set_title("Pretraining loss, same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reconstructions(runs: dict[str, Path], corpus: Path, figures: Path, seed: int) -> list[str]:
    import torch

    from mwmae.analysis.clips import find_audio_files, load_spec_batch, select_evenly
    from mwmae.analysis.figures import save_reconstruction_figure
    from mwmae.hub import from_pretrained

    batch, _, _ = load_spec_batch(select_evenly(find_audio_files(corpus), 4), seed=seed)
    written = []
    for name, run_dir in runs.items():
        model = from_pretrained(run_dir / "final")
        path = figures / f"reconstruction_{name}.png"
        torch.manual_seed(seed)
        save_reconstruction_figure(model, batch, path, num_samples=batch.shape[0])
        written.append(str(path))
    return written


def run_demo(settings: DemoSettings, callback: StageCallback | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to out_dir/summary.json)."""
    import torch

    from mwmae import hear
    from mwmae.builtin import logmel
    from mwmae.builtin.synth import generate
    from mwmae.evaluation.embed import embed_task
    from mwmae.evaluation.run import evaluate_embeddings, results_table
    from mwmae.evaluation.tasks import find_task_dirs
    from mwmae.pretraining import pretrain

    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    total_weight = sum(_STAGE_WEIGHTS.values())
    done_weight = 0.0

    def stage_done(name: str, start: float) -> None:
        nonlocal done_weight
        timings[name] = time.perf_counter() - start
        done_weight += _STAGE_WEIGHTS[name]

    # 1. data -------------------------------------------------------------------------------
    start = time.perf_counter()
    _notify(callback, "data", f"generating built-in data ({settings.data_size})", 0.0)
    manifest = generate(out / "data", size=settings.data_size, seed=settings.seed, progress=True)
    corpus = Path(manifest["root"]) / "corpus"
    task_dirs = find_task_dirs(Path(manifest["root"]) / "tasks")
    stage_done("data", start)

    # 2. pretraining, same budget for every model ----------------------------------------------
    start = time.perf_counter()
    runs: dict[str, Path] = {}
    for i, preset in enumerate(settings.models):
        name = preset.removesuffix("_cpu")
        _notify(
            callback,
            "pretrain",
            f"pretraining {name} ({settings.steps} steps, batch {settings.batch_size})",
            (done_weight + _STAGE_WEIGHTS["pretrain"] * i / len(settings.models)) / total_weight,
        )
        overrides = [
            f"data.source={corpus}",
            f"schedule.steps={settings.steps}",
            f"batch.global_size={settings.batch_size}",
            f"seed={settings.seed}",
            f"output.dir={out / 'runs'}",
            f"output.run_name={name}",
            *settings.extra_overrides,
        ]
        runs[name] = Path(pretrain(preset, overrides, progress=True))
    stage_done("pretrain", start)

    # 3. embeddings -------------------------------------------------------------------------
    start = time.perf_counter()
    embedders: dict[str, tuple[Any, Any]] = {"logmel": (logmel, logmel.load_model())}
    for name, run_dir in runs.items():
        embedders[name] = (hear, hear.load_model(str(run_dir / "final"), device="cpu"))
    emb_dirs: dict[str, Path] = {}
    for i, (name, (module, model)) in enumerate(embedders.items()):
        _notify(
            callback,
            "embed",
            f"embedding {len(task_dirs)} tasks with {name}",
            (done_weight + _STAGE_WEIGHTS["embed"] * i / len(embedders)) / total_weight,
        )
        emb_dirs[name] = out / "embeddings" / name
        for task_dir in task_dirs:
            embed_task(
                module, model, task_dir, emb_dirs[name], batch_size=32, progress=True, model_id=name
            )
    stage_done("embed", start)

    # 4. HEAR evaluation --------------------------------------------------------------------
    start = time.perf_counter()
    results = []
    for i, (name, emb_dir) in enumerate(emb_dirs.items()):
        _notify(
            callback,
            "evaluate",
            f"HEAR protocol for {name} ({settings.eval_seeds} seeds, preset "
            f"{settings.eval_preset})",
            (done_weight + _STAGE_WEIGHTS["evaluate"] * i / len(emb_dirs)) / total_weight,
        )
        results.append(
            evaluate_embeddings(
                emb_dir,
                preset=settings.eval_preset,
                seeds=settings.eval_seeds,
                max_epochs=settings.max_epochs,
                model_name=name,
                out_dir=out / "results" / name,
                progress=True,
            )
        )
    stage_done("evaluate", start)

    # 5. table and figures ------------------------------------------------------------------
    start = time.perf_counter()
    _notify(callback, "report", "writing the table and figures", done_weight / total_weight)
    table = results_table(results)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    _loss_curves_figure(runs, figures / "pretraining_loss.png")
    recon = _reconstructions(runs, corpus, figures, settings.seed)
    stage_done("report", start)

    summary = {
        "settings": asdict(settings),
        "timings_s": timings,
        "total_s": sum(timings.values()),
        "data": {
            "root": manifest["root"],
            "sources": manifest.get("sources"),
            "tasks": [p.name for p in task_dirs],
        },
        "runs": {k: str(v) for k, v in runs.items()},
        "table": table,
        "figures": [str(figures / "pretraining_loss.png"), *recon],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _notify(callback, "done", f"finished in {summary['total_s'] / 60:.1f} min", 1.0)
    return summary
