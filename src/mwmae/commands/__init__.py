"""Sub-commands of the `mwmae` CLI: one module per stage, each exposing `register(subparsers)`.

Each command parses its arguments, calls one library function and prints; errors of the user's
input are `mwmae.errors.MwmaeError`s, which `mwmae.cli.main` reports in one line. This module
holds what the commands share: their parser class, `add_command`, logging and the training
commands' ending.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

THREADS_HELP = (
    "torch intra-op threads (default: torch's choice, one per core; on 2 cores 2 threads were "
    "fastest, benchmarks/RESULTS.md)"
)


class CommandParser(argparse.ArgumentParser):
    """The parser of every sub-command (`parser_class` of the CLI's sub-parsers).

    Positionals may come between options (argparse's intermixed parsing), so KEY=VALUE
    overrides can stand anywhere on the line. Every command takes `--threads` (applied by
    `mwmae.cli`); `threads=False` leaves it to the command (the demo has it in its settings).
    """

    def __init__(self, *args: Any, threads: bool = True, **kwargs: Any) -> None:
        if threads:
            common = argparse.ArgumentParser(add_help=False)
            common.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
            kwargs["parents"] = [*kwargs.get("parents", ()), common]
        super().__init__(*args, **kwargs)
        self._intermixing = False

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # The sub-parsers action calls this: parse intermixed, and report a word that no
        # argument takes as this command's error (with its usage), so nothing is left over.
        # parse_intermixed_args calls back here (for the optionals, then the positionals):
        # those calls take argparse's plain way.
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_intermixed_args(args, namespace), []
        finally:
            self._intermixing = False


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    help: str,
    description: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Sub-command `name` running `func(args)`: `help` is its line in `mwmae --help`,
    `description` heads its own --help; `kwargs` go to `add_parser` (epilog, ...)."""
    parser = subparsers.add_parser(name, help=help, description=description, **kwargs)
    parser.set_defaults(func=func)
    return parser


def setup_logging(verbose: bool) -> None:
    """INFO on rank 0 (DEBUG with -v), warnings elsewhere; ranks named under torchrun."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
        if "WORLD_SIZE" in os.environ
        else "%(levelname)s %(name)s: %(message)s",
    )


def run_training(
    train: Callable[[], Path],
    interrupted: Callable[[Any], str],
    summary_file: str,
    as_json: bool,
) -> int | tuple[Path, dict[str, Any]]:
    """The ending `mwmae pretrain` and `mwmae finetune` share. Runs `train()` (it returns the
    run folder); on Ctrl-C prints `interrupted(stop)` and gives exit status 130; on ranks
    other than 0 gives 0; with `as_json` prints the run folder and its summary file and gives
    0. Otherwise returns (run folder, summary) for the command to print."""
    from mwmae.training import TrainingInterrupted

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        run_dir = train()
    except TrainingInterrupted as stop:
        if rank0:
            print(interrupted(stop), file=sys.stderr)
        return 130
    if not rank0:
        return 0
    summary = json.loads((run_dir / summary_file).read_text())
    if as_json:
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
        return 0
    return run_dir, summary
