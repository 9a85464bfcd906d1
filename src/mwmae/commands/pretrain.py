"""`mwmae pretrain` and `mwmae prepare-shards`."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from mwmae.errors import ConfigError, MissingFileError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a (MW-)MAE on audio (YAML config + key=value overrides)",
        description="Pretrain a masked autoencoder. Single process: `mwmae pretrain --config "
        "C.yaml data.source=DIR`; several GPUs or nodes: `torchrun --nproc_per_node N -m mwmae "
        "pretrain ...`. KEY=VALUE overrides may come anywhere on the line. A run folder with "
        "checkpoints is resumed automatically from its newest checkpoint that verifies. "
        "Ctrl-C stops after the current step, writes a checkpoint and prints the command that "
        "resumes (exit 130). See docs/pretraining.md.",
    )
    p.add_argument(
        "--config",
        help="YAML config file or shipped preset name "
        "(e.g. mwmae_tiny_cpu); optional with --resume=RUN_DIR",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optim.base_lr=1e-4 data.fraction=0.1",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        action="store_const",
        const=True,
        default="auto",
        help="require a resume: the configured run folder's newest checkpoint that verifies. "
        "--resume=PATH (or --resume PATH, PATH without '='): from PATH (a run folder, whose "
        "config.yaml is used when --config is not given, or a checkpoint folder). "
        "Default: resume if a checkpoint exists",
    )
    group.add_argument("--resume-from", dest="resume", help=argparse.SUPPRESS)
    group.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from scratch; refuse a run folder that has checkpoints",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML) and exit"
    )
    p.add_argument("--list-configs", action="store_true", help="list shipped presets and exit")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run_pretrain, take_extra_args=functools.partial(_take_overrides, p))
    _register_shards(subparsers)


def _register_shards(subparsers: argparse._SubParsersAction) -> None:
    s = subparsers.add_parser(
        "prepare-shards",
        help="write audio (or log-mel) as WebDataset tar shards for pretraining",
        description="Convert a folder of audio files or a CSV/JSONL manifest into WebDataset "
        "tar shards of 16 kHz float32 audio (.audio.npy) or, with --logmel, unnormalised "
        "log-mel (.logmel.npy); bad files are skipped and listed in OUT/shards.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("src", help="folder of audio files (recursive) or .csv/.jsonl manifest")
    s.add_argument("out", help="output folder for shard-*.tar and shards.json")
    s.add_argument("--logmel", action="store_true", help="store log-mel instead of audio")
    s.add_argument("--samples-per-shard", type=int, default=1000)
    s.add_argument(
        "--clip-seconds",
        type=float,
        default=60.0,
        help="store longer files as several clips of at most this (0: never cut; default 60)",
    )
    s.add_argument("--workers", type=int, default=0, help="decoding processes (0: in-process)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=run_prepare_shards)


def rewrite_argv(argv: list[str]) -> list[str]:
    """`--resume=PATH` and `--resume PATH` become `--resume-from PATH`; a bare `--resume` stays
    a flag, so a following override (a word with "=") is never taken as its path."""
    if not argv or argv[0] != "pretrain":
        return argv
    out: list[str] = []
    words = iter(argv)
    for arg in words:
        if arg.startswith("--resume="):
            out += ["--resume-from", arg.partition("=")[2]]
        elif arg == "--resume":
            following = next(words, None)
            if following is None:
                out.append(arg)
            elif following.startswith("-") or "=" in following:
                out += [arg, following]
            else:
                out += ["--resume-from", following]
        else:
            out.append(arg)
    return out


def _take_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, extra) -> None:
    """KEY=VALUE words after an option join the overrides; an unknown --option is an error."""
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
        if "WORLD_SIZE" in os.environ
        else "%(levelname)s %(name)s: %(message)s",
    )


def _config_for(args: argparse.Namespace) -> str | Path:
    if args.config is not None:
        return args.config
    if isinstance(args.resume, str) and args.resume != "auto":
        config = Path(args.resume) / "config.yaml"
        if not config.is_file():
            raise MissingFileError(f"{config} not found; pass --config")
        return config
    raise ConfigError("--config is required (or --resume=RUN_DIR)")


def _resume_command(run_dir: Path) -> str:
    command = f"mwmae pretrain --resume={shlex.quote(str(run_dir))}"
    if "WORLD_SIZE" in os.environ:
        nproc = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        command = command.replace("mwmae", f"torchrun --nproc_per_node {nproc} -m mwmae", 1)
    return command


def run_pretrain(args: argparse.Namespace) -> int:
    from mwmae.pretraining import (
        TrainingInterrupted,
        dump_yaml,
        list_pretrain_presets,
        pretrain,
        resolve_config,
    )

    if args.list_configs:
        for name in list_pretrain_presets():
            print(name)
        return 0
    config = _config_for(args)
    _setup_logging(args.verbose)
    if args.print_config:
        print(dump_yaml(resolve_config(config, args.overrides)), end="")
        return 0
    try:
        run_dir = pretrain(
            config, args.overrides, progress=not args.no_progress, resume=args.resume
        )
    except TrainingInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(
                f"mwmae pretrain: interrupted at step {stop.step}; checkpoint {stop.checkpoint}\n"
                f"resume with: {_resume_command(stop.run_dir)}",
                file=sys.stderr,
            )
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    summary = json.loads((run_dir / "summary.json").read_text())
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    else:
        loss = summary.get("loss")
        print(f"run folder:   {run_dir}")
        print(
            f"steps:        {summary['step']} of {summary['total_steps']}"
            f" (world size {summary['world_size']})"
        )
        print(f"final loss:   {loss:.5f}" if loss is not None else "final loss:   n/a")
        bad = f"{summary.get('bad_files', 0)} bad files ({summary['skipped_total']} substitutions)"
        print(f"bad data:     {bad}")
        if summary.get("replica_max_abs_diff") is not None:
            print(f"replicas:     max |w - w_rank0| = {summary['replica_max_abs_diff']:.3g}")
        print(f"final model:  {summary['final']}  (mwmae.from_pretrained)")
        print(f"logs:         {run_dir / 'log.jsonl'}, TensorBoard: {run_dir / 'tb'}")
    return 0


def run_prepare_shards(args: argparse.Namespace) -> int:
    from mwmae.data import detect_kind, scan_sources, write_shards

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        kind = detect_kind(args.src)
        listing = scan_sources(args.src, kind)
        root = Path(args.src) if kind == "folder" else None
        summary = write_shards(
            listing.paths,
            args.out,
            logmel=args.logmel,
            samples_per_shard=args.samples_per_shard,
            num_workers=args.workers,
            root=root,
            progress=not args.no_progress,
            unusable=listing.skipped,
            clip_seconds=args.clip_seconds or None,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {summary['num_clips']} clips ({summary['content']}) in "
            f"{len(summary['shards'])} shard(s) to {args.out}"
        )
        if summary["skipped"]:
            print(
                f"skipped {len(summary['skipped'])} bad clip(s) of {summary['bad_files']} file(s):"
            )
            for item in summary["skipped"]:
                print(f"  {item['error']}")
        for item in summary["unreadable"]:
            print(f"not a readable audio file: {item['path']} ({item['error']})")
    return 0
