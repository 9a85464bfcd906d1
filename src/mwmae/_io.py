"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a
partial one. Every module that writes results, configs, embeddings or weights goes through here."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

_UMASK_LOCK = threading.Lock()


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


_UMASK: int | None = None  # read once, on the first write


def _read_umask() -> int:
    # Linux shows it without changing it; elsewhere os.umask must set it to read it (briefly).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        current = os.umask(0o077)
        os.umask(current)
    return current


def file_mode() -> int:
    """The mode a plain `open(path, "w")` gives a new file: 0o666 less the process's umask."""
    global _UMASK
    if _UMASK is None:
        _UMASK = _read_umask()
    return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_writer(path: str | Path, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` only when the block ends without
    an error (a hidden temporary file in the same folder, then `os.replace`). With `fsync` the
    data and the rename are flushed to disk first (checkpoints that must survive a crash). The
    file gets the mode `open()` would give it (0o666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; the user's umask decides, as open()
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _output_error(path, exc) from exc
    if fsync:
        fsync_dir(path.parent)


def _output_error(path: Path, exc: BaseException) -> BaseException:
    """A write the machine refused (read-only, full, no permission) as an `OutputError`
    naming `path`; anything else unchanged."""
    from mwmae.errors import ENVIRONMENT_ERRNOS, OutputError

    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return OutputError(f"{path}: cannot write ({exc.strerror})", exc.errno)
    return exc


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    with atomic_writer(path, fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """`np.save` without pickle, atomically (see `atomic_writer`)."""
    with atomic_writer(path) as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def read_json(path: str | Path, error: type[Exception] | None = None) -> Any:
    """A JSON file's content. Malformed or absurdly nested JSON (which would exhaust the
    parser's recursion) raises `error` (default `IntegrityError`) naming the file, never a
    traceback; a missing file raises `MissingFileError`."""
    from mwmae.errors import IntegrityError, MissingFileError

    path = Path(path)
    error = error or IntegrityError
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be a file mwmae wrote") from None
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def save_weights(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    fsync: bool = False,
) -> str:
    """The one weights writer: a safetensors file (no pickle) written atomically.

    Returns the SHA-256 of the written file, which callers record beside it (config.json,
    checkpoint meta) so that `load_weights` can verify it later.
    """
    from safetensors.torch import save

    from mwmae.errors import NonFiniteError

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = first_non_finite(tensors)
    if bad is not None:  # never write weights that cannot be used (a diverged run)
        raise NonFiniteError(f"{path}: not written: tensor {bad!r} holds NaN or Inf")
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data, fsync=fsync)
    return hashlib.sha256(data).hexdigest()


def load_weights(
    path: str | Path, expected_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file written by `save_weights`, checking its digest first when one is
    given. Returns (tensors, metadata). Raises `IntegrityError` naming the file and both
    digests, or naming the file when it is not readable safetensors."""
    from safetensors import safe_open

    from mwmae.errors import IntegrityError, MissingFileError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such weights file")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise IntegrityError(
                f"{path}: SHA-256 {actual} does not match the recorded {expected_sha256} "
                "(the file was changed or damaged after it was written)"
            )
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # safetensors raises several types for damaged headers/data
        raise IntegrityError(f"{path}: not a readable safetensors file ({exc})") from exc
    bad = first_non_finite(tensors)
    if bad is not None:
        raise IntegrityError(f"{path}: tensor {bad!r} holds NaN or Inf (unusable weights)")
    return tensors, metadata


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
