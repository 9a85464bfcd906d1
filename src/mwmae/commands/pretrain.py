"""`mwmae pretrain` and `mwmae prepare-shards`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Any

from mwmae.commands import add_command, run_training, setup_logging
from mwmae.errors import ConfigError, MissingFileError, reraise_as_input_errors

PRETRAIN_HELP = "pretrain a (MW-)MAE on audio (YAML config + key=value overrides)"
PRETRAIN_DESCRIPTION = (
    "Pretrain a masked autoencoder. Single process: `mwmae pretrain --config C.yaml "
    "data.source=DIR`; several GPUs or nodes: `torchrun --nproc_per_node N -m mwmae pretrain "
    "...`. KEY=VALUE overrides may come anywhere on the line. A run folder with checkpoints is "
    "resumed automatically from its newest checkpoint that verifies. Ctrl-C stops after the "
    "current step, writes a checkpoint and prints the command that resumes (exit 130). See "
    "docs/pretraining.md."
)

SHARDS_HELP = "prepare audio as tar shards that pretraining reads at GPU rate"
SHARDS_DESCRIPTION = (
    "Convert a folder of audio or a CSV/JSONL manifest into tar shards for pretraining: by default "
    "float16 log-mel with per-clip statistics (a crop is read alone), --audio 16 kHz audio, "
    "--logmel float32 log-mel. Bad files are skipped and listed in OUT/shards.json, written last."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "pretrain", run_pretrain, PRETRAIN_HELP, PRETRAIN_DESCRIPTION)
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
        nargs="?",
        const=True,
        default="auto",
        metavar="PATH",
        help="require a resume: the configured run folder's newest checkpoint that verifies. "
        "--resume=PATH (or --resume PATH, PATH without '='): from PATH (a run folder, whose "
        "config.yaml is used when --config is not given, or a checkpoint folder). "
        "Default: resume if a checkpoint exists",
    )
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
    _register_shards(subparsers)


def _register_shards(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    s = add_command(
        subparsers,
        "prepare-shards",
        run_prepare_shards,
        SHARDS_HELP,
        SHARDS_DESCRIPTION,
        formatter_class=formatter,
    )
    s.add_argument("src", help="folder of audio files (recursive) or .csv/.jsonl manifest")
    s.add_argument("out", help="output folder for shard-*.tar and shards.json")
    content = s.add_mutually_exclusive_group()
    content.add_argument(
        "--audio",
        dest="content",
        action="store_const",
        const="audio",
        help="store 16 kHz audio (WebDataset .audio.npy members) instead of the prepared format",
    )
    content.add_argument(
        "--logmel",
        dest="content",
        action="store_const",
        const="logmel",
        help="store float32 log-mel members (.logmel.npy; the older format)",
    )
    s.set_defaults(content="prepared")
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


def _bare_resume(args: argparse.Namespace) -> None:
    """A bare `--resume` never takes an override as its path: argparse hands the word after
    it to --resume, and a word with "=" goes back to the overrides (in front, where a bare
    --resume usually stands; only the order of two overrides of one key could tell)."""
    if isinstance(args.resume, str) and args.resume != "auto" and "=" in args.resume:
        args.overrides = [args.resume, *args.overrides]
        args.resume = True


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


def _interrupted(stop: Any) -> str:
    return (
        f"mwmae pretrain: interrupted at step {stop.step}; checkpoint {stop.checkpoint}\n"
        f"resume with: {_resume_command(stop.run_dir)}"
    )


def run_pretrain(args: argparse.Namespace) -> int:
    from mwmae.pretraining import dump_yaml, list_pretrain_presets, pretrain, resolve_config

    if args.list_configs:
        for name in list_pretrain_presets():
            print(name)
        return 0
    _bare_resume(args)
    config = _config_for(args)
    setup_logging(args.verbose)
    if args.print_config:
        print(dump_yaml(resolve_config(config, args.overrides)), end="")
        return 0
    outcome = run_training(
        lambda: pretrain(config, args.overrides, progress=not args.no_progress, resume=args.resume),
        _interrupted,
        "summary.json",
        args.json,
    )
    if isinstance(outcome, int):
        return outcome
    run_dir, summary = outcome
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
    with reraise_as_input_errors():
        kind = detect_kind(args.src)
        listing = scan_sources(args.src, kind)
        summary = write_shards(
            listing.paths,
            args.out,
            content=args.content,
            samples_per_shard=args.samples_per_shard,
            num_workers=args.workers,
            root=Path(args.src) if kind == "folder" else None,
            progress=not args.no_progress,
            unusable=listing.skipped,
            clip_seconds=args.clip_seconds or None,
        )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"wrote {summary['num_clips']} clips ({summary['content']}) in "
        f"{len(summary['shards'])} shard(s) to {args.out}"
    )
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} bad clip(s) of {summary['bad_files']} file(s):")
        for item in summary["skipped"]:
            print(f"  {item['error']}")
    for item in summary["unreadable"]:
        print(f"not a readable audio file: {item['path']} ({item['error']})")
    return 0
