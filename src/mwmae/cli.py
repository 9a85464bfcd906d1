"""Command-line entry point: a thin shell that dispatches to `mwmae.commands.*` modules.

Each module in `mwmae.commands` exposes `register(subparsers)`, which adds its sub-command(s)
and sets `func` on the parser; `func(args)` returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mwmae import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwmae",
        description="Multi-window masked autoencoders for audio: pretrain, embed, evaluate, "
        "analyse.",
    )
    parser.add_argument("--version", action="version", version=f"mwmae {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import mwmae.commands as commands_pkg

    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mwmae.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
