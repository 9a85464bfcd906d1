"""Errors that the command line reports in one line (`mwmae <command>: error: ...`, exit 2).

Library code raises these for problems of the user's input: a bad argument or config value, a
missing or damaged file, a task folder laid out wrongly. Anything else is a bug and keeps its
traceback. Each class also derives from the built-in exception a caller would expect, so
`except ValueError` / `except FileNotFoundError` keep working.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class MwmaeError(Exception):
    """Base class: a problem with what the user gave us, explained in the message."""


class ConfigError(MwmaeError, ValueError):
    """A configuration key, type or value is wrong; the message names the key."""


class InputError(MwmaeError, ValueError):
    """Bad input data or argument (audio, labels, shapes); the message names what and where."""


class MissingFileError(MwmaeError, FileNotFoundError):
    """A file or folder that must exist does not; the message names it."""


class IntegrityError(MwmaeError, ValueError):
    """A file's content does not match what was recorded for it (digest, metadata, format)."""


class TaskLayoutError(MwmaeError, ValueError):
    """A HEAR-layout task folder or manifest is not laid out as expected."""


class NonFiniteError(MwmaeError, FloatingPointError):
    """Numbers that must be finite are NaN or Inf: a diverged training run, non-finite
    weights in a file, embeddings of a model that overflows. The message names where."""


class OutputError(MwmaeError, OSError):
    """A file or folder could not be written: a read-only folder, a full disk, no permission.
    The message names it and the reason; `errno` is the operating system's, when known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(*((code, message) if code is not None else (message,)))
        self.message = message

    def __str__(self) -> str:
        return self.message


# What the operating system says when the machine, not mwmae, stops a write: reported in one
# line naming the path (by `mwmae._io` and by `mwmae.cli.main`), never as a traceback.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "EMFILE", "ENAMETOOLONG")
    if hasattr(errno, name)
)


class RunLockedError(MwmaeError, RuntimeError):
    """Another live process writes to the same run folder; the message names it."""


@contextlib.contextmanager
def reraise_as_input_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise the built-in exceptions that code reports bad input with as `MwmaeError`s with
    the same message, so the CLI prints them in one line: FileNotFoundError becomes
    `MissingFileError`, the other `kinds` (default: ValueError) `InputError`. `MwmaeError`s
    pass unchanged; anything else is a bug and keeps its traceback."""
    expected = kinds or (ValueError,)
    try:
        yield
    except MwmaeError:
        raise
    except FileNotFoundError as exc:
        raise MissingFileError(str(exc)) from exc
    except expected as exc:
        raise InputError(str(exc)) from exc


@contextlib.contextmanager
def reraise_as_output_errors(path: str | Path) -> Iterator[None]:
    """Re-raise an `OSError` of writing under `path` (a read-only folder, a full disk, no
    permission) as `OutputError` naming it, so the CLI prints one line. Wrap only writes: a
    failed read is not an output problem. `MwmaeError`s pass unchanged."""
    try:
        yield
    except MwmaeError:
        raise
    except OSError as exc:
        what = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise OutputError(f"{path}: cannot write{what}: {exc.strerror or exc}", exc.errno) from exc
