"""Command-line entry point: a thin shell that dispatches to `mwmae.commands.*` modules.

Each module in `mwmae.commands` exposes `register(subparsers)`, which adds its sub-command(s)
(parsers of class `mwmae.commands.CommandParser`: every command takes --threads, and
positionals may come anywhere on the line) with `func` set; `func(args)` returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mwmae import __version__
from mwmae.errors import ENVIRONMENT_ERRNOS, ConfigError, MwmaeError


def build_parser() -> argparse.ArgumentParser:
    import mwmae.commands as commands_pkg

    parser = argparse.ArgumentParser(
        prog="mwmae",
        description="Multi-window masked autoencoders for audio: pretrain, embed, evaluate, "
        "analyse.",
    )
    parser.add_argument("--version", action="version", version=f"mwmae {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=commands_pkg.CommandParser
    )
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mwmae.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def _set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise ConfigError(f"--threads: expected a positive number, not {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A `MwmaeError` (bad config, missing or damaged file, ...) is printed as
    one line `mwmae <command>: error: <message>` with exit status 2, and so is an OSError the
    machine raises (read-only folder, full disk, no permission: it names the path); Ctrl-C
    exits with 130; anything else is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        _set_threads(args)
        return int(args.func(args) or 0)
    except MwmaeError as exc:
        print(f"mwmae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk: the machine's, not a bug
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = exc.filename if exc.filename is not None else "a file"
        print(f"mwmae {args.command}: error: {where}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mwmae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
