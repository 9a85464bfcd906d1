"""`mwmae finetune`: fine-tune a pretrained (or randomly initialised) encoder on a task."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from mwmae.commands import add_command, run_training, setup_logging
from mwmae.errors import ConfigError

HELP = "fine-tune an encoder on a labelled task (MAE-AST / AudioMAE protocol)"
DESCRIPTION = (
    "Fine-tune: `mwmae finetune --config finetune_tiny_cpu model=RUN/final task=TASK`. model: a "
    "save_pretrained folder, an official run, or a preset name (random init). task: a HEAR scene "
    "task folder or a .csv/.jsonl manifest of path,label[s][,split]. KEY=VALUE overrides may come "
    "anywhere. Unfinished folds resume from their newest checkpoint; Ctrl-C stops with a "
    "checkpoint (exit 130). Writes results.json for `mwmae compare`. See docs/finetuning.md."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "finetune", run_finetune, HELP, DESCRIPTION)
    p.add_argument("--config", help="YAML config or shipped preset (see --list-configs)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. model=DIR task=DIR")
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        default="auto",
        help="refuse a run folder that already holds a run",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config")
    p.add_argument("--list-configs", action="store_true", help="list shipped presets and exit")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _interrupted(stop: Any) -> str:
    again = shlex.join(["mwmae", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
    return f"mwmae finetune: interrupted at step {stop.step} ({stop.run_dir}); resume with: {again}"


def run_finetune(args: argparse.Namespace) -> int:
    from mwmae.finetuning import finetune, list_finetune_presets, load_finetune_config
    from mwmae.training import dump_yaml

    if args.list_configs:
        print("\n".join(list_finetune_presets()))
        return 0
    if args.config is None:
        raise ConfigError("--config is required (e.g. --config finetune_tiny_cpu)")
    setup_logging(args.verbose)
    if args.print_config:
        print(dump_yaml(load_finetune_config(args.config, args.overrides)), end="")
        return 0
    outcome = run_training(
        lambda: finetune(
            args.config, args.overrides, progress=not args.no_progress, resume=args.resume
        ),
        _interrupted,
        "results.json",
        args.json,
    )
    if isinstance(outcome, int):
        return outcome
    run_dir, _ = outcome
    print((run_dir / "results.md").read_text(), end="")
    print(f"run folder: {run_dir}")
    return 0
