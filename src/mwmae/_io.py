"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a
partial one. Every module that writes results, configs, embeddings or weights goes through here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` only when the block ends without
    an error (a hidden temporary file in the same folder, then `os.replace`). With `fsync` the
    data and the rename are flushed to disk first (checkpoints that must survive a crash)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    with atomic_writer(path, fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync)
