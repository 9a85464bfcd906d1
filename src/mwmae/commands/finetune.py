"""`mwmae finetune`: fine-tune a pretrained (or randomly initialised) encoder on a task."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys

from mwmae.commands.pretrain import _setup_logging, _take_overrides
from mwmae.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder on a labelled task (MAE-AST / AudioMAE protocol)",
        description="Fine-tune: `mwmae finetune --config finetune_tiny_cpu model=RUN/final "
        "task=TASK`. model: a save_pretrained folder, an official run, or a preset name "
        "(random init). task: a HEAR scene task folder or a .csv/.jsonl manifest of "
        "path,label[s][,split]. KEY=VALUE overrides may come anywhere. Unfinished folds "
        "resume from their newest checkpoint; Ctrl-C stops with a checkpoint (exit 130). "
        "Writes results.json for `mwmae compare`. See docs/finetuning.md.",
    )
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
    p.set_defaults(func=run_finetune, take_extra_args=functools.partial(_take_overrides, p))


def run_finetune(args: argparse.Namespace) -> int:
    from mwmae.finetuning import finetune, list_finetune_presets, load_finetune_config
    from mwmae.training import TrainingInterrupted, dump_yaml

    if args.list_configs:
        print("\n".join(list_finetune_presets()))
        return 0
    if args.config is None:
        raise ConfigError("--config is required (e.g. --config finetune_tiny_cpu)")
    _setup_logging(args.verbose)
    if args.print_config:
        print(dump_yaml(load_finetune_config(args.config, args.overrides)), end="")
        return 0
    try:
        run_dir = finetune(
            args.config, args.overrides, progress=not args.no_progress, resume=args.resume
        )
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            again = shlex.join(["mwmae", *sys.argv[1:]]) if sys.argv[1:] else "the same command"
            print(
                f"mwmae finetune: interrupted at step {stop.step} ({stop.run_dir}); "
                f"resume with: {again}",
                file=sys.stderr,
            )
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    run = json.loads((run_dir / "results.json").read_text())
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **run}, indent=2))
        return 0
    print((run_dir / "results.md").read_text(), end="")
    print(f"run folder: {run_dir}")
    return 0
