"""`mwmae make-data`: generate the built-in synthetic corpus and HEAR-layout tasks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mwmae.commands import add_command

HELP = "generate the built-in synthetic pretraining corpus and HEAR-layout tasks"
DESCRIPTION = (
    "Generate a deterministic synthetic data root: OUT/corpus/*.wav (unlabelled pretraining "
    "clips), OUT/tasks/<task>/ (HEAR hear-preprocess layout) and OUT/manifest.json (sizes, "
    "sources used). Uses espeak-ng speech and fluidsynth instrument notes where installed, "
    "pure-numpy synthesis otherwise. A folder already holding the same data (size, seed, sources) "
    "is reused unless --force."
)


def _print_summary(summary: dict, seconds: float) -> None:
    from mwmae.builtin.synth import total_task_seconds

    root = Path(summary["root"])
    state = "reused existing" if summary["reused"] else f"generated in {seconds:.1f} s"
    print(f"data root: {root} ({state}; size={summary['size']}, seed={summary['seed']})")
    sources = summary["sources"]
    print(
        "sources: "
        + ", ".join(
            f"{name} {'used' if info['used'] else 'available' if info['available'] else 'absent'}"
            + (f" ({info['version']})" if info.get("version") else "")
            for name, info in sources.items()
        )
    )
    corpus = summary["corpus"]
    print(
        f"corpus: {corpus['num_clips']} clips, {corpus['total_seconds'] / 60:.1f} min "
        f"-> {root / corpus['dir']}"
    )
    print(f"tasks ({total_task_seconds(summary) / 60:.1f} min of audio) -> {root / 'tasks'}")
    header = f"  {'task':<26} {'type':<21} {'labels':>6} {'clip s':>6}  clips per split"
    print(header)
    for name, task in summary["tasks"].items():
        kind = f"{task['embedding_type']}/{task['prediction_type']}"
        splits = " ".join(f"{s}={n}" for s, n in task["clips_per_split"].items())
        print(
            f"  {name:<26} {kind:<21} {task['num_labels']:>6} {task['clip_seconds']:>6.1f}  "
            f"{splits}"
        )
    print(f"manifest: {root / 'manifest.json'}")


def _print_probe(results: list[dict]) -> None:
    print("log-mel + logistic regression (test split; k-fold: mean over folds):")
    for r in results:
        chance = "" if r["chance"] is None else f"  (chance {r['chance']:.3f})"
        print(f"  {r['task']:<26} {r['metric']:<15} {r['test']:.3f}{chance}")


def _cmd_make_data(args: argparse.Namespace) -> int:
    from mwmae.builtin.synth import generate

    t0 = time.perf_counter()
    summary = generate(
        args.out,
        size=args.size,
        seed=args.seed,
        progress=not args.no_progress,
        external=not args.numpy_only,
        force=args.force,
    )
    seconds = time.perf_counter() - t0
    root = Path(summary["root"])
    result = {"data": summary, "generate_seconds": round(seconds, 2)}
    if args.probe:
        from mwmae.builtin.logmel_probe import probe_tasks

        result["probe"] = probe_tasks(root / "tasks", progress=not args.no_progress)
        (root / "probe.json").write_text(json.dumps(result["probe"], indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    _print_summary(summary, seconds)
    if args.probe:
        _print_probe(result["probe"])
        print(f"probe results: {root / 'probe.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "make-data", _cmd_make_data, HELP, DESCRIPTION)
    parser.add_argument("out", metavar="OUT", help="output folder (new, empty or earlier data)")
    parser.add_argument(
        "--size",
        choices=("tiny", "small", "medium"),
        default="small",
        help="tiny: tests (seconds); small: CPU demo (default); medium: several times small",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--numpy-only",
        action="store_true",
        help="do not use espeak-ng/fluidsynth even if installed",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also score a log-mel + logistic-regression baseline on every task "
        "(written to OUT/probe.json)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
