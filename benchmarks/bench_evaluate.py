"""Batched probe training (all seeds x grid points as one model) vs one member at a time.

Both train the same members for the same number of epochs with early stopping disabled, so the
work is identical; the sequential side is `train_sequential` of tests/probe_oracle.py
(nn.Sequential + torch.optim.Adam, one member after another, as heareval runs them). Prints a
table and a JSON line.

    .venv/bin/python benchmarks/bench_evaluate.py                      # 10 seeds x 2, 2000 x 3840
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda        # where the batching pays
    .venv/bin/python benchmarks/bench_evaluate.py --seq-members 4      # time 4 sequential members,
                                                                       # extrapolate to all

On a CPU both sides do the same FLOPs in large GEMMs, so expect about 1x there (measured 0.85x
in process CPU time on a shared 2-core machine); the batched model's gain is in kernel and
Python overhead, i.e. on GPUs, where one member's 1024-row steps leave the device mostly idle.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mwmae.evaluation.metrics import top1_accuracy
from mwmae.evaluation.probe import BatchedProbe, Member, TrainSettings, preset_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from probe_oracle import train_sequential  # noqa: E402  (the tests' sequential oracle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--preset", default="paper", choices=("paper", "hear"))
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-valid", type=int, default=500)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--seq-members",
        type=int,
        default=None,
        help="time only this many members sequentially and extrapolate",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    y = rng.integers(0, args.classes, args.n_train)
    x = centres[y] + 3 * rng.normal(size=(args.n_train, args.dim)).astype(np.float32)
    yv = rng.integers(0, args.classes, args.n_valid)
    xv = centres[yv] + 3 * rng.normal(size=(args.n_valid, args.dim)).astype(np.float32)
    onehot = np.eye(args.classes)[yv]

    def score(p: np.ndarray) -> tuple[float, None]:
        return top1_accuracy(p, onehot), None

    grid = [g for g in preset_grid(args.preset) if g.hidden_layers == 1]  # one batched group
    members = [Member(g, s * 100 + i) for s in range(args.seeds) for i, g in enumerate(grid)]
    st = TrainSettings(max_epochs=args.epochs, patience=10**9)

    def sync() -> None:
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    probe = BatchedProbe(members, args.dim, args.classes, False, st, args.device)
    probe.fit(x, y, xv, score)
    sync()
    t_batched, c_batched = time.perf_counter() - t0, time.process_time() - c0

    k = min(args.seq_members or len(members), len(members))
    t0, c0 = time.perf_counter(), time.process_time()
    for m in members[:k]:
        train_sequential(m, x, y, xv, score, False, st, device=args.device)
    sync()
    t_seq = (time.perf_counter() - t0) * len(members) / k
    c_seq = (time.process_time() - c0) * len(members) / k

    result = {
        "members": len(members),
        "grid_points": len(grid),
        "seeds": args.seeds,
        "n_train": args.n_train,
        "dim": args.dim,
        "classes": args.classes,
        "epochs": args.epochs,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batched_s": round(t_batched, 3),
        "sequential_s": round(t_seq, 3),
        "batched_cpu_s": round(c_batched, 3),
        "sequential_cpu_s": round(c_seq, 3),
        "sequential_members_timed": k,
        "speedup": round(t_seq / t_batched, 2),
        "cpu_time_ratio": round(c_seq / c_batched, 2),
    }
    print(
        f"{len(members)} members ({args.seeds} seeds x {len(grid)} grid points), "
        f"{args.n_train} x {args.dim} -> {args.classes} classes, {args.epochs} epochs, "
        f"{args.device}, {torch.get_num_threads()} threads"
    )
    # Process CPU time is the steadier measure on a shared CPU (wall time counts waiting).
    print(f"  batched:    {t_batched:8.2f} s wall, {c_batched:8.2f} s CPU")
    print(
        f"  sequential: {t_seq:8.2f} s wall, {c_seq:8.2f} s CPU"
        + (f" (extrapolated from {k} members)" if k < len(members) else "")
    )
    print(f"  speed-up:   {t_seq / t_batched:8.2f}x wall, {c_seq / c_batched:8.2f}x CPU time")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
