"""`mwmae convert-official`, `mwmae export-flax`, `mwmae inspect-flax`: official MW-MAE weights."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mwmae.commands import add_command
from mwmae.errors import reraise_as_input_errors

CONVERT_HELP = "convert official MW-MAE (JAX/Flax) weights into a model folder"
CONVERT_DESCRIPTION = (
    "Read an official MW-MAE/MAE checkpoint (a run directory: the latest checkpoint_<step>, or "
    "--step; a checkpoint file; or an Orbax checkpoint directory), infer the architecture from "
    "the parameters and the run's config.json, and write a save_pretrained folder (config.json + "
    "model.safetensors) to OUT."
)

EXPORT_HELP = "write a model as an official-layout Flax msgpack checkpoint"
EXPORT_DESCRIPTION = (
    "Write OUT/checkpoint_<step> (Flax msgpack with the official code's parameter names and "
    "layouts) and OUT/config.json. Default content: the reference model's variables {params, "
    "buffers} (flax.serialization.msgpack_restore + model.apply); --train-state: the reference's "
    "full TrainState layout, which flax.training.checkpoints.restore_checkpoint(OUT, "
    "target=state) accepts."
)

INSPECT_HELP = "list the arrays of a Flax msgpack checkpoint"
INSPECT_DESCRIPTION = (
    "Print path, shape and dtype of every parameter of a Flax checkpoint (run directory, file or "
    "Orbax directory); --all for every collection."
)

# What the converters raise for bad input besides MwmaeErrors (the CLI reports it in one line).
_INPUT_ERRORS = (ValueError, OSError)


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Catch the converter's logged warnings so they are printed once, by the command."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("mwmae.convert")
    handler, propagate = _Keep(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _cmd_convert(args: argparse.Namespace) -> int:
    from mwmae.convert import convert_official
    from mwmae.convert.official import describe

    with reraise_as_input_errors(*_INPUT_ERRORS), _collect_warnings():
        model = convert_official(args.src, out=args.out, step=args.step)
    info: dict[str, Any] = model.config.extra["official"]
    n_params = sum(p.numel() for p in model.parameters())
    summary = {
        "source": info["file"],
        "source_sha256": info.get("source_sha256"),
        "step": info["step"],
        "config_file": info["config_file"],
        "out": str(Path(args.out)),
        "parameters": n_params,
        "architecture": model.config.to_dict(),
        "warnings": info["warnings"],
    }
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return 0
    for w in info["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"read {info['file']} (step {info['step']}, config {info['config_file'] or 'none'})")
    print(f"architecture: {describe(model.config)}; {n_params:,} parameters")
    print(f"written: {args.out} (load with mwmae.from_pretrained or --model {args.out})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mwmae.convert import export_flax
    from mwmae.hub import from_pretrained

    with reraise_as_input_errors(*_INPUT_ERRORS):
        model = from_pretrained(args.model_dir)
        path = export_flax(model, args.out, step=args.step, train_state=args.train_state)
    layout = "TrainState" if args.train_state else "variables {params, buffers}"
    summary = {
        "model_dir": str(args.model_dir),
        "checkpoint": str(path),
        "config": str(Path(args.out) / "config.json"),
        "layout": layout,
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"written: {path} (Flax msgpack, {layout}) and {summary['config']}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from mwmae.convert import read_checkpoint, tree_summary

    with reraise_as_input_errors(*_INPUT_ERRORS):
        tree, loc = read_checkpoint(
            args.src, args.step, keys=None if args.all else {"params", "step"}
        )
    if not args.all and "params" in tree:
        tree = {"params": tree["params"]}
    rows = tree_summary(tree)
    total = sum(r["size"] for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "file": str(loc.file),
                    "kind": loc.kind,
                    "step": loc.step,
                    "leaves": rows,
                    "total_size": total,
                },
                indent=1,
                default=str,
            )
        )
        return 0
    width = max((len(r["path"]) for r in rows), default=0)
    for r in rows:
        what = f"{tuple(r['shape'])} {r['dtype']}" if r["shape"] is not None else r["dtype"]
        print(f"{r['path']:<{width}}  {what}")
    print(f"{len(rows)} leaves, {total:,} array values; {loc.file} ({loc.kind}, step {loc.step})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "convert-official", _cmd_convert, CONVERT_HELP, CONVERT_DESCRIPTION)
    p.add_argument("src", metavar="SRC", help="run directory, checkpoint file or Orbax directory")
    p.add_argument("out", metavar="OUT", help="output model folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = add_command(subparsers, "export-flax", _cmd_export, EXPORT_HELP, EXPORT_DESCRIPTION)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a save_pretrained model folder")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="step in the file name (default: the imported step, else 0)",
    )
    p.add_argument(
        "--train-state",
        action="store_true",
        help="write the reference TrainState layout (zero Adam moments)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = add_command(subparsers, "inspect-flax", _cmd_inspect, INSPECT_HELP, INSPECT_DESCRIPTION)
    p.add_argument("src", metavar="SRC", help="run directory, checkpoint file or Orbax directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--all", action="store_true", help="all collections, not only params")
    p.add_argument("--json", action="store_true", help="print JSON")
