"""`mwmae demo`: the main job on the built-in data (see mwmae.builtin.demo)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from mwmae.builtin.demo import DemoSettings, run_demo
from mwmae.commands import add_command

HELP = "generate data, pretrain a tiny MAE and MW-MAE, evaluate with HEAR, print the table"
DESCRIPTION = (
    "The main job, on CPU in under 20 minutes: make the built-in data, pretrain a tiny MAE and a "
    "tiny MW-MAE with the same budget, embed every built-in task with both, with their "
    "random-initialised twins (the same runs at step 0), with intermediate snapshots and with a "
    "log-mel baseline, run the HEAR downstream protocol, and print the paper-style table with "
    "s(m) and how often pretraining beat its twin. Writes figures (learning curve, losses, "
    "reconstructions), JSON and markdown into --out."
)


def _options() -> list[tuple[str, str, dict[str, Any]]]:
    """Per `DemoSettings` field: its name, its flag and its `add_argument` keywords (the
    field's default and type; tuples are taken and shown as lists; then its metadata)."""
    options = []
    for f in dataclasses.fields(DemoSettings):
        keywords = dict(f.metadata)
        flag = keywords.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, tuple):
            keywords = {"default": list(default), **keywords}
        else:
            keywords = {"type": type(default), "default": default, **keywords}
        options.append((f.name, flag, keywords))
    return options


def _dest(flag: str) -> str:
    """The attribute argparse stores an option under: --batch-size -> batch_size."""
    return flag.removeprefix("--").replace("-", "_")


def register(subparsers: argparse._SubParsersAction) -> None:
    # threads=False: DemoSettings.threads is the demo's --threads.
    formatter = argparse.ArgumentDefaultsHelpFormatter
    p = add_command(
        subparsers, "demo", run, HELP, DESCRIPTION, formatter_class=formatter, threads=False
    )
    for _, flag, keywords in _options():
        p.add_argument(flag, **keywords)


def _settings(args: argparse.Namespace) -> DemoSettings:
    values = {}
    for name, flag, _ in _options():
        value = getattr(args, _dest(flag))
        values[name] = tuple(value) if isinstance(value, list) else value
    # --grid-points 0 means every grid point.
    return DemoSettings(**{**values, "grid_points": values["grid_points"] or None})


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()

    def on_stage(stage: str, message: str, done: float) -> None:
        elapsed = time.perf_counter() - started
        eta = ""
        if 0.02 < done < 1.0:
            eta = f", ETA ~{elapsed / done * (1 - done) / 60:.1f} min"
        print(f"\n[{elapsed / 60:5.1f} min] {stage}: {message}{eta}", file=sys.stderr, flush=True)

    summary = run_demo(_settings(args), on_stage)
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
