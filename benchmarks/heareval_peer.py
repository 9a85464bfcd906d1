"""mwmae's evaluator side by side with hear-eval-kit 2021.1.3 on the same embeddings and grid.

Runs the kit's own `task_predictions` once per seed (its `seed_everything(42)` replaced so that
Python's `random` still gets 42, i.e. the same shuffled grid, while torch/numpy get the seed),
then `mwmae.evaluation.protocol.evaluate_task` with all seeds batched, and prints one table.
The kit is not a project dependency; install it in a side folder (see
/work/shared/reference/heareval_peer.md) and pass that folder with --kit-path:

    PYTHONPATH=src python benchmarks/heareval_peer.py EMB/TASK --seeds 10 --grid-points 2 \\
        --kit-path /tmp/kitlib:/tmp/kitlib2:/tmp/kitstub
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KIT_RUN = r"""
import json, random, sys, logging
from pathlib import Path
import numpy as np, torch
import pytorch_lightning as pl
from pytorch_lightning.loops import FitLoop
import heareval.predictions.task_predictions as tp

seed = int(sys.argv[2])
def seeded(_ignored, workers=False):
    random.seed(42)  # the kit's grid shuffle, unchanged
    np.random.seed(seed)
    torch.manual_seed(seed)
tp.seed_everything = seeded
# Lightning >= 1.7: heareval assigns fit_loop.current_epoch before testing event tasks.
FitLoop.current_epoch = property(
    lambda self: self.epoch_progress.current.completed,
    lambda self, v: setattr(self.epoch_progress.current, "completed", v),
)
path = Path(sys.argv[1])
dims = json.loads((path / "train.embedding-dimensions.json").read_text()
                  if (path / "train.embedding-dimensions.json").exists()
                  else next(path.glob("*.embedding-dimensions.json")).read_text())
tp.task_predictions(path, dims[1], int(sys.argv[3]), None, True, True, sys.argv[4],
                    logging.getLogger("kit"))
"""


def kit_score(result: dict, metric: str) -> float:
    if "aggregated_scores" in result:
        return float(result["aggregated_scores"][f"test_{metric}_mean"])
    (test,) = [v for k, v in result.items() if isinstance(v, dict) and "test_score" in v]
    return float(test.get(f"test_{metric}", test["test_score"]))


def run_kit(task: Path, seeds: int, grid_points: int, kit_path: str, work: Path) -> tuple:
    from mwmae.evaluation.stored import export_heareval

    env = dict(os.environ, PYTHONPATH=kit_path, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    metric = json.loads((task / "task_metadata.json").read_text())["evaluation"][0]
    scores, t0 = [], time.perf_counter()
    for seed in range(seeds):
        dest = work / f"kit_seed{seed}" / task.name
        if dest.exists():
            shutil.rmtree(dest)
        export_heareval(task, dest)
        cmd = [sys.executable, "-c", KIT_RUN, str(dest), str(seed), str(grid_points), "default"]
        subprocess.run(cmd, env=env, cwd=dest.parent, check=True, capture_output=True)
        result = json.loads((dest / "test.predicted-scores.json").read_text())
        scores.append(kit_score(result, metric))
    return scores, time.perf_counter() - t0


def run_ours(task: Path, seeds: int, grid_points: int) -> tuple:
    from mwmae.evaluation.protocol import EvalOptions, evaluate_task

    t0 = time.perf_counter()
    res = evaluate_task(task, EvalOptions(preset="hear", seeds=seeds, grid_points=grid_points))
    return res["scores"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", type=Path, help="an embedded task folder (mwmae layout)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--grid-points", type=int, default=8)
    ap.add_argument("--kit-path", required=True, help="PYTHONPATH that imports heareval")
    ap.add_argument("--skip-kit", action="store_true")
    args = ap.parse_args()
    from mwmae.evaluation.report import ci95_half_width

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_kit:
            rows.append(
                (
                    "hear-eval-kit 2021.1.3 (sequential)",
                    *run_kit(args.task, args.seeds, args.grid_points, args.kit_path, Path(tmp)),
                )
            )
        rows.append(("mwmae (batched)", *run_ours(args.task, args.seeds, args.grid_points)))
    print(f"task {args.task.name}, {args.seeds} seeds, hear grid, {args.grid_points} points")
    print("| tool | wall s | mean | 95% CI | min..max | per seed |")
    print("|---|---|---|---|---|---|")
    for name, scores, wall in rows:
        print(
            f"| {name} | {wall:.1f} | {np.mean(scores):.4f} | {ci95_half_width(scores):.4f} | "
            f"{min(scores):.4f}..{max(scores):.4f} | {' '.join(f'{s:.3f}' for s in scores)} |"
        )
    if len(rows) == 2:
        print(f"speed-up: {rows[0][2] / rows[1][2]:.1f}x")


if __name__ == "__main__":
    main()
