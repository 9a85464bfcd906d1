"""The file index of a folder or manifest at corpus scale: arrays, not per-file objects, built
once and cached beside the data.

Two million files held as Python lists cost hundreds of MB in every process, and forked
DataLoader workers copy each page whose reference counts they touch. Here every per-file field
is a numpy array and the paths are one bytes buffer with offsets (`PathTable`), so a worker
touches nothing but the few array objects.

A `FileIndex` lists each file's size, modification time, frame count and sample rate. Reading
the frame counts (`soundfile.info`, about 0.3 ms a file) is what makes a start-up slow, so the
index is saved as `.mwmae-index.npz` beside the data (or under `$XDG_CACHE_HOME/mwmae/index/`
when the data's folder cannot be written) and reused while its listing (paths relative to the
data, sizes, modification times) is unchanged; only new or changed files are read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mwmae._io import atomic_writer
from mwmae._progress import progress_bar

log = logging.getLogger(__name__)

NOT_READ = -2  # `FileIndex.frames` of a file whose header was not read (yet)
UNREADABLE = -1  # ... of a file whose header could not be read: loading it reports why
INDEX_NAME = ".mwmae-index.npz"  # a folder's index, inside it
INDEX_FORMAT = {"format": "mwmae-file-index", "version": 1}
_ARRAYS = ("paths", "offsets", "size", "mtime_ns", "frames", "rate")
# Paths as the OS gives them (undecodable bytes kept as surrogates), as os.fsencode does.
_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class PathTable:
    """Path strings as one bytes buffer with int64 offsets, each item `prefix` + its part.

    The prefix (a folder's path, a manifest's folder) is held once; the parts are what the
    listing key compares, so a moved folder keeps its index."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, prefix: str = "") -> None:
        self.data, self.offsets, self.prefix = data, offsets, prefix

    @classmethod
    def from_strings(cls, strings: Iterable[str], prefix: str = "") -> PathTable:
        """The table of `strings`: relative to `prefix` when all start with it, else whole."""
        strings = list(strings)
        if prefix and not all(s.startswith(prefix) for s in strings):
            prefix = ""
        cut = len(prefix)
        encoded = [s[cut:].encode(_ENCODING, _ERRORS) for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets, prefix)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"path {index} of {n}")
        index %= n
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.prefix + self.data[lo:hi].tobytes().decode(_ENCODING, _ERRORS)

    def __iter__(self) -> Iterator[str]:
        return (self.prefix + part.decode(_ENCODING, _ERRORS) for part in self.parts())

    def parts(self) -> list[bytes]:
        """The encoded parts after the prefix (what the listing key compares)."""
        buf, bounds = self.data.tobytes(), self.offsets.tolist()
        return [buf[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def same_parts(self, other: PathTable) -> bool:
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.data, other.data)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes + len(self.prefix)


def _int64(values: Iterable[int] | np.ndarray | None, n: int, fill: int) -> np.ndarray:
    if values is None:
        return np.full(n, fill, dtype=np.int64)
    out = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.int64)
    if out.shape != (n,):
        raise ValueError(f"expected {n} values, got shape {out.shape}")
    return out


@dataclass(eq=False)
class FileIndex:
    """The audio files of a folder or manifest, one row per file, every field an int64 array.

    `size`/`mtime_ns` are the listing key (-1: not known); `frames` is the file's frame count,
    `NOT_READ` or `UNREADABLE`; `rate` its sample rate (0: not known). `skipped` lists the
    (path, reason) of audio-named entries that are not usable files; `saved_at` is where the
    index was saved or read from (None: nowhere)."""

    paths: PathTable
    size: np.ndarray
    mtime_ns: np.ndarray
    frames: np.ndarray
    rate: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    saved_at: Path | None = None

    @classmethod
    def from_paths(
        cls,
        paths: Iterable[str],
        prefix: str = "",
        size: Iterable[int] | None = None,
        mtime_ns: Iterable[int] | None = None,
        frames: Iterable[int] | None = None,
        rate: Iterable[int] | None = None,
        skipped: Iterable[tuple[str, str]] = (),
    ) -> FileIndex:
        table = PathTable.from_strings(paths, prefix)
        n = len(table)
        return cls(
            table,
            _int64(size, n, -1),
            _int64(mtime_ns, n, -1),
            _int64(frames, n, NOT_READ),
            _int64(rate, n, 0),
            list(skipped),
        )

    def __len__(self) -> int:
        return len(self.paths)

    def same_listing(self, other: FileIndex) -> bool:
        """Same files (paths after the prefix, sizes, modification times), same skipped."""
        return (
            self.paths.same_parts(other.paths)
            and np.array_equal(self.size, other.size)
            and np.array_equal(self.mtime_ns, other.mtime_ns)
            and self.skipped == other.skipped
        )

    def reuse(self, old: FileIndex) -> int:
        """Take the frame counts and rates of the files `old` lists with the same path, size
        and modification time; returns how many."""
        if not len(old):
            return 0
        if self.paths.same_parts(old.paths):
            where = np.arange(len(old))
        else:
            rows = {part: i for i, part in enumerate(old.paths.parts())}
            where = np.asarray([rows.get(p, -1) for p in self.paths.parts()], dtype=np.int64)
        found = where >= 0
        at = np.where(found, where, 0)
        same = found & (old.size[at] == self.size) & (old.mtime_ns[at] == self.mtime_ns)
        same &= old.frames[at] != NOT_READ
        self.frames[same], self.rate[same] = old.frames[at[same]], old.rate[at[same]]
        return int(same.sum())

    def read_headers(self, progress: bool = False) -> int:
        """Read the frame count and sample rate of every file not read yet; returns how many.
        A header that cannot be read leaves `UNREADABLE`: the load reports the file as bad."""
        import soundfile as sf

        todo = np.flatnonzero(self.frames == NOT_READ)
        for i in progress_bar(
            todo.tolist(), desc="audio headers", disable=not progress, leave=False
        ):
            try:
                info = sf.info(self.paths[i])
                self.frames[i], self.rate[i] = int(info.frames), int(info.samplerate)
            except Exception:  # soundfile raises several types; the load reports it
                self.frames[i], self.rate[i] = UNREADABLE, 0
        return len(todo)


# --------------------------------------------------------------------------------------------
# The saved index
# --------------------------------------------------------------------------------------------
def folder_prefix(folder: str) -> str:
    """What joins a (normalised) folder path and a name below it, as pathlib does."""
    return "" if folder == "." else folder if folder.endswith("/") else folder + "/"


def source_prefix(source: str | Path, kind: str) -> str:
    """The prefix of the paths of a folder (its path) or manifest (its folder's path)."""
    path = Path(source)
    return folder_prefix(str(path if kind == "folder" else path.parent))


def index_locations(source: str | Path, kind: str) -> list[Path]:
    """Where the index of a folder or manifest is saved, in order of preference: beside the
    data, then the user's cache folder (for data in a folder that cannot be written)."""
    path = Path(source)
    beside = path / INDEX_NAME if kind == "folder" else path.parent / f".{path.name}{INDEX_NAME}"
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except (KeyError, RuntimeError):  # no home folder to be found
        return [beside]
    name = f"{kind}\0{os.path.abspath(path)}".encode(_ENCODING, _ERRORS)
    return [beside, cache / "mwmae" / "index" / f"{hashlib.sha256(name).hexdigest()[:32]}.npz"]


def refresh_index(
    listing: FileIndex, source: str | Path, kind: str, headers: bool, progress: bool = False
) -> FileIndex:
    """`listing` (a fresh listing of `source`) with the frame counts and rates of its saved
    index: all of them while the listing is unchanged (nothing is written), else those of the
    unchanged files, the headers of the others read (with `headers`) and the index saved."""
    locations = index_locations(source, kind)
    prefix = source_prefix(source, kind)
    found = None
    for path in locations:
        saved = load_index(path, kind, prefix)
        if saved is None:
            continue
        complete = not headers or not bool((saved.frames == NOT_READ).any())
        same_paths = saved.paths.prefix == listing.paths.prefix
        if complete and same_paths and listing.same_listing(saved):
            listing.frames, listing.rate, listing.saved_at = saved.frames, saved.rate, path
            log.info("clip index of %s: %d files, read from %s", source, len(listing), path)
            return listing
        found = found or saved
    reused = listing.reuse(found) if found is not None else 0
    read = listing.read_headers(progress) if headers else 0
    if len(listing):
        save_index(listing, kind, locations, relative=listing.paths.prefix == prefix)
    log.info(
        "clip index of %s: %d files (%d from the saved index, %d headers read), saved at %s",
        source,
        len(listing),
        reused,
        read,
        listing.saved_at,
    )
    return listing


def save_index(index: FileIndex, kind: str, locations: list[Path], relative: bool) -> Path | None:
    """Save `index` at the first location that can be written; None when none can.
    `relative`: its paths are relative to the source's prefix (`source_prefix`)."""
    meta = {**INDEX_FORMAT, "kind": kind, "relative": relative}
    meta["skipped"] = [list(item) for item in index.skipped]
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        "paths": index.paths.data,
        "offsets": index.paths.offsets,
        **{name: getattr(index, name) for name in _ARRAYS[2:]},
    }
    for path in locations:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as fh:
                np.savez(fh, **arrays)
        except OSError as exc:
            log.info("%s: clip index not saved here (%s)", path, exc)
            continue
        index.saved_at = path
        return path
    log.warning(
        "the clip index could not be saved (tried %s): the next start-up reads the audio "
        "headers again",
        ", ".join(map(str, locations)),
    )
    return None


def load_index(path: str | Path, kind: str, prefix: str) -> FileIndex | None:
    """The index saved at `path` for a `kind` source of prefix `prefix` (`source_prefix`), or
    None when there is none or it is unreadable, of another format or kind (logged)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(saved["meta"].tobytes().decode("utf-8"))
            arrays = {name: np.asarray(saved[name], dtype=np.int64) for name in _ARRAYS[1:]}
            data = np.asarray(saved["paths"], dtype=np.uint8)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable clip index, not used (%s)", path, exc)
        return None
    skipped = _checked(meta, kind, arrays, data.size)
    if skipped is None:
        log.warning("%s: not a clip index of this version, not used", path)
        return None
    table = PathTable(data, arrays.pop("offsets"), prefix if meta.get("relative") else "")
    return FileIndex(table, **arrays, skipped=skipped, saved_at=path)


def _checked(
    meta: object, kind: str, arrays: dict[str, np.ndarray], data_size: int
) -> list[tuple[str, str]] | None:
    """The skipped entries of a saved index whose format, kind and shapes are right, or None."""
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        return None
    if any(meta.get(k) != v for k, v in INDEX_FORMAT.items()):
        return None
    offsets = arrays["offsets"]
    n = len(offsets) - 1
    if n < 0 or offsets[0] != 0 or offsets[-1] != data_size or np.any(np.diff(offsets) < 0):
        return None
    if any(arrays[name].shape != (n,) for name in _ARRAYS[2:]):
        return None
    skipped = meta.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped
    ):
        return None
    return [(p, why) for p, why in skipped]
