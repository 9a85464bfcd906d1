"""One writer per run folder: an advisory lock that names its holder.

`run_lock(folder, info)` holds `folder/.lock` with `fcntl.flock` for as long as the job runs,
with the holder's pid, host, start time and command written in it. A second process that tries
the same folder gets one line naming the holder (`RunLockedError`). The operating system drops
the lock when its holder dies, however it dies; a lock file still naming a process that is gone
is taken over with a warning. Under torchrun rank 0 takes the lock for every rank and all ranks
learn whether it succeeded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mwmae.errors import RunLockedError

from .distributed import DistInfo, all_reduce_max

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }


def _read_holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    try:
        holder = json.loads(text) if text else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"


def acquire(folder: Path) -> int:
    """Lock `folder` for this process; returns the open lock file's descriptor (keep it open).
    Raises `RunLockedError` naming the holder when a live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{folder} is in use by {_describe(holder)}: one run folder has one writer; "
                f"wait for it, or pick another output folder or run name"
            ) from None
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the file was replaced while we waited for it: lock the new one
    previous = _read_holder(fd)
    if previous:  # a holder that ends cleanly empties the file: this one is gone
        log.warning("taking over %s from %s, which is gone", path, _describe(previous))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_holder()).encode("utf-8"))
    os.fsync(fd)
    return fd


def release(fd: int) -> None:
    """Empty the lock file (a clean end) and drop the lock."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


@contextlib.contextmanager
def run_lock(folder: str | Path, info: DistInfo | None = None) -> Iterator[None]:
    """Hold the lock of `folder` while the block runs (rank 0 for every rank under torchrun)."""
    info = info or DistInfo()
    fd, error = None, None
    if info.is_main:
        try:
            fd = acquire(Path(folder))
        except RunLockedError as exc:
            error = exc
    failed = torch.tensor([float(error is not None)], device=info.device)
    if bool(all_reduce_max(info, failed).item()):
        raise error or RunLockedError(f"{folder} is in use by another run (see rank 0)")
    try:
        yield
    finally:
        if fd is not None:
            release(fd)
