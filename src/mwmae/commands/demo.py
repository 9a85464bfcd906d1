"""`mwmae demo`: the main job on the built-in data (see mwmae.builtin.demo)."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    from mwmae.builtin.demo import DemoSettings

    d = DemoSettings()
    p = subparsers.add_parser(
        "demo",
        help="generate data, pretrain a tiny MAE and MW-MAE, evaluate with HEAR, print the table",
        description="The main job, on CPU in under 20 minutes: make the built-in data, pretrain "
        "a tiny MAE and a tiny MW-MAE with the same budget, embed every built-in task with both, "
        "with their random-initialised twins (the same runs at step 0), with intermediate "
        "snapshots and with a log-mel baseline, run the HEAR downstream protocol, and print the "
        "paper-style table with s(m) and how often pretraining beat its twin. Writes figures "
        "(learning curve, losses, reconstructions), JSON and markdown into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=d.out_dir, help="output folder")
    p.add_argument(
        "--data-size",
        default=d.data_size,
        choices=["tiny", "small", "medium"],
        help="size of the generated corpus and tasks",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed for data and pretraining")
    p.add_argument(
        "--steps", type=int, default=d.steps, help="pretraining budget: optimiser steps per model"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pretraining batch")
    p.add_argument(
        "--models",
        nargs="+",
        default=list(d.models),
        help="pretraining presets to compare (mwmae/pretraining/configs/*.yaml)",
    )
    p.add_argument(
        "--eval-seeds",
        type=int,
        default=d.eval_seeds,
        help="downstream seeds per task (the paper: 10)",
    )
    p.add_argument(
        "--eval-preset",
        default=d.eval_preset,
        choices=["paper", "hear"],
        help="downstream hyper-parameter grid",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=d.max_epochs,
        help="downstream probe epochs at most (the paper: 500)",
    )
    p.add_argument(
        "--curve-points",
        type=int,
        default=d.curve_points,
        help="learning-curve points per model (steps 0 .. --steps, evenly spaced)",
    )
    p.add_argument(
        "--curve-seeds",
        type=int,
        default=d.curve_seeds,
        help="probe seeds for the intermediate learning-curve points",
    )
    p.add_argument(
        "--probe-hidden-dim",
        type=int,
        default=d.probe_hidden_dim,
        help="width of the probe's hidden layer (the paper: 1024)",
    )
    p.add_argument(
        "--grid-points",
        type=int,
        default=d.grid_points,
        help="probe grid points, in the kit's shuffled order (0: all; the paper: all)",
    )
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: default)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra pretraining config overrides, e.g. model.depth=2",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mwmae.builtin.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out_dir=args.out,
        data_size=args.data_size,
        seed=args.seed,
        models=tuple(args.models),
        steps=args.steps,
        batch_size=args.batch_size,
        eval_seeds=args.eval_seeds,
        eval_preset=args.eval_preset,
        max_epochs=args.max_epochs,
        curve_points=args.curve_points,
        curve_seeds=args.curve_seeds,
        probe_hidden_dim=args.probe_hidden_dim,
        grid_points=args.grid_points or None,
        threads=args.threads,
        extra_overrides=tuple(args.set),
    )
    started = time.perf_counter()

    def on_stage(stage: str, message: str, done: float) -> None:
        elapsed = time.perf_counter() - started
        eta = ""
        if 0.02 < done < 1.0:
            eta = f", ETA ~{elapsed / done * (1 - done) / 60:.1f} min"
        print(f"\n[{elapsed / 60:5.1f} min] {stage}: {message}{eta}", file=sys.stderr, flush=True)

    summary = run_demo(settings, on_stage)
    print()
    print(summary["table"])
    for name, twin in summary["pretrained_vs_random_twin"].items():
        print(
            f"{name} beats its random-initialised twin on {twin['num_wins']} of {twin['of']} "
            f"tasks ({', '.join(twin['wins']) or 'none'})."
        )
    print(f"Figures: {', '.join(summary['figures'])}")
    print(
        f"Everything (JSON, markdown, runs, embeddings) is in {args.out}/ "
        f"({summary['total_s'] / 60:.1f} min)."
    )
    return 0
