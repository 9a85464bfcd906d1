"""`mwmae pretrain` and `mwmae prepare-shards`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a (MW-)MAE on audio (YAML config + key=value overrides)",
        description="Pretrain a masked autoencoder. Single process: `mwmae pretrain --config "
        "C.yaml data.source=DIR`; several GPUs or nodes: `torchrun --nproc_per_node N -m mwmae "
        "pretrain ...`. A run folder with checkpoints is resumed automatically. "
        "See docs/pretraining.md.",
    )
    p.add_argument(
        "--config",
        help="YAML config file or shipped preset name "
        "(e.g. mwmae_tiny_cpu); optional with --resume RUN_DIR",
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
        help="resume (required): from the run folder's latest checkpoint, or "
        "from PATH (a run folder or checkpoint). Default: resume if one exists",
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
    p.set_defaults(func=run_pretrain)

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


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
        if "WORLD_SIZE" in os.environ
        else "%(levelname)s %(name)s: %(message)s",
    )


def run_pretrain(args: argparse.Namespace) -> int:
    from mwmae.pretraining import dump_yaml, list_presets, pretrain, resolve_config

    if args.list_configs:
        for name in list_presets():
            print(name)
        return 0
    config = args.config
    if config is None:
        if isinstance(args.resume, str) and args.resume != "auto":
            config = Path(args.resume) / "config.yaml"
            if not config.is_file():
                print(f"error: {config} not found; pass --config", file=sys.stderr)
                return 2
        else:
            print("error: --config is required (or --resume RUN_DIR)", file=sys.stderr)
            return 2
    _setup_logging(args.verbose)
    try:
        if args.print_config:
            print(dump_yaml(resolve_config(config, args.overrides)), end="")
            return 0
        run_dir = pretrain(
            config, args.overrides, progress=not args.no_progress, resume=args.resume
        )
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
