"""Checked reads of shard bytes, for audio and prepared shards alike.

`npy_layout` reads a `.npy` header and checks it against the bytes actually present before
anything is allocated: a header that declares more (or fewer) bytes than its member holds, or a
complex, object or structured array, is an `AudioError` naming the member (a bad clip, never a
crash or a huge allocation). `ShardFiles` reads byte ranges of shard files by position (pread)
through descriptors opened on first use in each process, and never past a file's end;
`tar_members` lists a tar's members from its headers; `StringTable` keeps many names in arrays.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mwmae.errors import InputError
from mwmae.features import AudioError

MAX_NPY_HEADER = 10_000  # numpy's own default limit on a .npy header
NPY_HEAD_BYTES = 12 + MAX_NPY_HEADER  # enough leading bytes to parse any accepted header
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class NpyLayout(NamedTuple):
    """What a checked `.npy` header declares, and where its data starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    header: int  # bytes before the data


def npy_layout(head: bytes | bytearray | memoryview, size: int, name: str) -> NpyLayout:
    """The layout of a `size`-byte `.npy` from its leading bytes `head` (at least its header).

    Raises `AudioError` naming `name` when the header is malformed, the array is not of real
    numbers (complex, object and structured arrays are refused by name), or the declared
    shape does not fill exactly the bytes after the header."""
    buf = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(buf)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        shape, fortran, dtype = reader(buf, max_header_size=MAX_NPY_HEADER)
    except (ValueError, SyntaxError, TypeError, EOFError) as exc:
        raise AudioError(f"{name}: not a valid .npy array ({exc})") from exc
    _check_dtype(dtype, name)
    if any(d < 0 for d in shape):
        raise AudioError(f"{name}: the .npy header declares a negative shape {shape}")
    header = buf.tell()
    declared = math.prod(shape) * dtype.itemsize
    if declared != size - header:
        raise AudioError(
            f"{name}: the .npy header declares {shape} {dtype} ({declared:,} bytes) but the "
            f"member holds {size - header:,} bytes of data"
        )
    return NpyLayout(dtype, tuple(shape), fortran, header)


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.names is not None or dtype.subdtype is not None:
        what = "a structured"
    elif dtype.kind == "c":
        what = "a complex"
    elif dtype.kind == "O":
        what = "an object"
    elif dtype.kind not in "fiu":
        what = f"a non-numeric ({dtype.kind!r})"
    else:
        return
    raise AudioError(f"{name}: {what} array ({dtype}) is refused; shards hold real numbers")


def decode_npy(data: bytes | bytearray, name: str) -> np.ndarray:
    """The array of a whole `.npy` held in `data`, checked by `npy_layout`; a view of `data`
    (writable when `data` is a bytearray), no copy."""
    layout = npy_layout(memoryview(data)[:NPY_HEAD_BYTES], len(data), name)
    count = math.prod(layout.shape)
    array = np.frombuffer(data, dtype=layout.dtype, count=count, offset=layout.header)
    return array.reshape(layout.shape, order="F" if layout.fortran else "C")


def _default_max_open() -> int:
    """Descriptors one process keeps open: a quarter of its soft limit (AudioSet-2M is about
    2,000 shards, read at random: a small cache would reopen a file for most reads), at least
    64 and at most 1,024."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    return 1024 if soft == resource.RLIM_INFINITY else max(64, min(1024, soft // 4))


Name = str | Callable[[], str]  # a member's name for errors, or what builds it


def _text(name: Name) -> str:
    return name() if callable(name) else name


class ShardFiles:
    """Positioned reads of shard files through read-only descriptors opened on first use in
    each process (a forked DataLoader worker opens its own), at most `max_open` at a time.

    A read that would pass the end of its file is an `AudioError` naming the member, raised
    before any buffer is allocated."""

    def __init__(self, paths: Sequence[str], max_open: int | None = None) -> None:
        self.paths = list(paths)
        self.max_open = max_open or _default_max_open()
        self._open: dict[int, tuple[int, int]] = {}  # shard -> (descriptor, file size), LRU
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # descriptors do not cross process boundaries

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        for fd, _ in getattr(self, "_open", {}).values():
            os.close(fd)
        self._open = {}

    def _entry(self, shard: int) -> tuple[int, int]:
        if os.getpid() != self._pid:  # forked: close the parent's copies, open our own
            self.close()
            self._pid = os.getpid()
        entry = self._open.pop(shard, None)
        if entry is None:
            if len(self._open) >= self.max_open:
                oldest = next(iter(self._open))
                os.close(self._open.pop(oldest)[0])
            fd = os.open(self.paths[shard], os.O_RDONLY)
            entry = (fd, os.fstat(fd).st_size)
        self._open[shard] = entry  # most recently used last
        return entry

    def size(self, shard: int) -> int:
        return self._entry(shard)[1]

    def read_into(self, shard: int, offset: int, out: np.ndarray, name: Name) -> None:
        """Fill the contiguous array `out` with the bytes of shard `shard` from `offset`.
        `name` (for errors) may be a function: per-crop reads then build it only on failure."""
        fd, size = self._entry(shard)
        self._check_range(offset, out.nbytes, size, name)
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):  # one pread returns at most ~2 GB
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise AudioError(f"{_text(name)}: truncated shard member (the shard shrank)")
            done += got

    def read(self, shard: int, offset: int, nbytes: int, name: Name) -> bytearray:
        """`nbytes` bytes of shard `shard` from `offset` (checked before allocating)."""
        self._check_range(offset, nbytes, self.size(shard), name)
        data = bytearray(nbytes)
        self.read_into(shard, offset, np.frombuffer(data, dtype=np.uint8), name)
        return data

    @staticmethod
    def _check_range(offset: int, nbytes: int, size: int, name: Name) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > size:
            raise AudioError(
                f"{_text(name)}: truncated shard member (bytes {offset:,} to {offset + nbytes:,} "
                f"of a {size:,}-byte shard)"
            )


def tar_members(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular-file members of an uncompressed tar, in order,
    from its headers alone. A truncated or damaged tar is one `InputError` naming it."""
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(path, mode="r:") as tf:  # uncompressed: members are seekable in place
            for member in tf:
                if member.isfile():
                    members.append((member.name, member.offset_data, member.size))
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(
            f"{path}: not a readable tar shard ({exc}); the file is truncated or damaged: "
            f"write it again (mwmae prepare-shards)"
        ) from None
    return members


class StringTable:
    """Strings kept as one UTF-8 buffer and their offsets: millions of names without a Python
    object each (forked workers share the pages instead of copying them on access)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = np.asarray(data, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (n + 1,), string i: [o_i, o_i+1)

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> StringTable:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    @classmethod
    def concat(cls, tables: Sequence[StringTable]) -> StringTable:
        if not tables:
            return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64))
        starts = np.cumsum([0] + [len(t.data) for t in tables[:-1]])
        offsets = [tables[0].offsets[:1]] + [
            t.offsets[1:] + s for t, s in zip(tables, starts, strict=True)
        ]
        return cls(np.concatenate([t.data for t in tables]), np.concatenate(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.data[start:stop].tobytes().decode("utf-8")
