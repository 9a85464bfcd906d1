"""WebDataset-style tar shards: finding them, their member index, random access.

Audio shards are plain POSIX tar files in the WebDataset layout: members `<key>.<ext>` grouped
by key, here `<key>.audio.npy` (float32 (n,) at 16 kHz) or `<key>.logmel.npy` (float32 (T, 80),
unnormalised) plus `<key>.json`. Reading also accepts `.npy` (1-D: audio, 2-D: log-mel) and
`.wav/.flac/.ogg/.mp3` members of shards written by other tools. No pickle: `.npy` headers are
checked against the bytes present before anything is allocated (`mwmae.data.binary`).

Audio shards written by `mwmae prepare-shards --audio` also store, in their sidecar index, each
clip's sample count and the mean and std of its whole log-mel: the dataset then reads only the
samples of a crop (`mwmae.data.crops`). `ShardSource(shards)` opens shards of the prepared
format (`mwmae.data.prepared`) as a `PreparedSource`. Writing is `mwmae.data.prepare`.

A shard set is complete when its summary `shards.json` exists (written last); a folder with
mwmae's shard files but no summary, or whose summary does not match its files, is refused.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mwmae import features
from mwmae._io import atomic_write_text, read_json
from mwmae.data.binary import ShardFiles, StringTable, decode_npy, tar_members
from mwmae.data.crops import CropSource, window_indices, window_start
from mwmae.data.prepared import META_MEMBER as PREPARED_META
from mwmae.data.prepared import PreparedSource, is_prepared_shard
from mwmae.errors import InputError, MissingFileError

log = logging.getLogger(__name__)

# Preference order when one shard key holds several usable members.
SHARD_EXTENSIONS = ("logmel.npy", "audio.npy", "npy", "flac", "wav", "ogg", "mp3")
SHARD_INDEX_NAME = "shards.json"
INCOMPLETE_MARKER = ".prepare-shards-incomplete"  # exists while prepare-shards writes a set
_AGAIN = "run mwmae prepare-shards again into an empty folder"


def find_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a folder (its `shards.json` or every `*.tar`), a glob, one `.tar`, a
    `shards.json` file, or a list of these. A folder of an unfinished `prepare-shards`, or whose
    summary does not match its files, is an `InputError` naming it."""
    if isinstance(spec, (list, tuple)):
        return [p for item in spec for p in find_shards(item)]
    path = Path(spec)
    if path.is_dir():
        if (path / SHARD_INDEX_NAME).is_file():
            return find_shards(path / SHARD_INDEX_NAME)
        _refuse_unfinished(path)
        found = sorted(path.glob("*.tar"))
        if not found:
            raise MissingFileError(f"{path}: no *.tar shards")
        return found
    if path.name.endswith(".json") and path.is_file():
        return _listed_shards(path)
    if any(ch in str(spec) for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(spec)))
        if not found:
            raise MissingFileError(f"{spec}: no shards match")
        return found
    if path.is_file():
        return [path]
    raise MissingFileError(f"{spec}: no such shard, folder or glob")


def _refuse_unfinished(folder: Path) -> None:
    """A folder holding what prepare-shards writes on its way (its marker, temporary shards,
    sidecar indexes) but no summary is a set whose writing never finished."""
    leftovers = [folder / INCOMPLETE_MARKER, *folder.glob(".shard-*.tmp")]
    leftovers += folder.glob("*.tar.index.json")
    if any(p.exists() for p in leftovers):
        raise InputError(
            f"{folder}: an incomplete shard set (shard files but no {SHARD_INDEX_NAME}: "
            f"mwmae prepare-shards did not finish); {_AGAIN}"
        )


def _listed_shards(summary: Path) -> list[Path]:
    """The shards a summary lists, each checked to exist with the size it records."""
    meta = read_json(summary, InputError)
    folder = summary.parent
    try:
        listed = [(str(s["name"]), s.get("size")) for s in meta["shards"]]
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{summary}: not a shard summary mwmae wrote; {_AGAIN}") from None
    paths = []
    for name, size in listed:
        path = folder / name
        if not path.is_file():
            problem = f"{name}, listed in {SHARD_INDEX_NAME}, is missing"
        elif size is not None and path.stat().st_size != size:
            problem = f"{name} has {path.stat().st_size:,} bytes, {SHARD_INDEX_NAME} says {size:,}"
        else:
            paths.append(path)
            continue
        raise InputError(
            f"{folder}: the shard set does not match its summary ({problem}); {_AGAIN}"
        )
    return paths


def _split_key(member_name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the base name."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def shard_index_path(shard: str | Path) -> Path:
    """Sidecar index of a shard (written by `write_shards`): `<shard>.index.json`."""
    return Path(f"{shard}.index.json")


def scan_shard(path: str | Path) -> list[tuple[str, str, int, int]]:
    """(key, ext, data offset, size) of the usable members of one tar shard, in tar order, by
    reading the tar headers."""
    chosen: dict[str, tuple[str, int, int]] = {}
    order: list[str] = []
    members = tar_members(path)
    if members and members[0][0] == PREPARED_META:  # its index arrays would pass for clips
        raise InputError(
            f"{path}: a prepared shard among audio shards; keep each format in its own folder"
        )
    for name, offset, size in members:
        key, ext = _split_key(name)
        if ext not in SHARD_EXTENSIONS:
            continue
        if key not in chosen:
            order.append(key)
        elif SHARD_EXTENSIONS.index(ext) >= SHARD_EXTENSIONS.index(chosen[key][0]):
            continue
        chosen[key] = (ext, offset, size)
    return [(key, *chosen[key]) for key in order]


def _sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar index of a shard when it matches the shard's size, else None."""
    sidecar = shard_index_path(path)
    if not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text())
        return meta if meta.get("tar_size") == os.path.getsize(path) else None
    except (ValueError, AttributeError, RecursionError):
        return None  # a broken sidecar: fall back to scanning


def index_shard(path: str | Path) -> list[tuple[str, str, int, int]]:
    """`scan_shard`, from the sidecar index when it matches the shard's size (no header scan:
    matters for millions of clips read by every rank)."""
    return _index_and_stats(path)[0]


def _index_and_stats(
    path: str | Path,
) -> tuple[list[tuple[str, str, int, int]], list[list[float]] | None]:
    """The member index and, when the sidecar stores them, each clip's (samples, log-mel
    mean, log-mel std)."""
    meta = _sidecar(path)
    if meta is not None:
        try:
            members = [(str(k), str(e), int(o), int(n)) for k, e, o, n in meta["members"]]
        except (ValueError, KeyError, TypeError):
            return scan_shard(path), None
        stats = meta.get("stats")
        ok = isinstance(stats, list) and len(stats) == len(members)
        return members, stats if ok else None
    return scan_shard(path), None


def write_shard_index(path: str | Path, stats: Sequence[Sequence[float]] | None = None) -> None:
    """Write `<shard>.index.json`: the member index and, for audio clips, each clip's
    (samples, log-mel mean, log-mel std)."""
    meta: dict[str, Any] = {"tar_size": os.path.getsize(path), "members": scan_shard(path)}
    if stats is not None:
        meta["stats"] = [list(s) for s in stats]
    atomic_write_text(shard_index_path(path), json.dumps(meta))


class ShardSource(CropSource):
    """Random access into WebDataset-style tar shards (index built once, kept in numpy arrays).

    Each process (DataLoader worker) opens its own file handles lazily. Shards of the prepared
    format open as a `PreparedSource` instead (`ShardSource(shards)` returns one).
    """

    def __new__(cls, shards: Sequence[str | Path] = ()) -> Any:
        if cls is ShardSource and shards and is_prepared_shard(shards[0]):
            return PreparedSource(shards)
        return super().__new__(cls)

    def __init__(self, shards: Sequence[str | Path]) -> None:
        self.shards = [str(s) for s in shards]
        self.files = ShardFiles(self.shards)
        parts = [_index_and_stats(shard) for shard in self.shards]
        members = [m for part, _ in parts for m in part]
        self.shard_id = np.repeat(
            np.arange(len(parts), dtype=np.int32), [len(part) for part, _ in parts]
        )
        self.offset = np.asarray([m[2] for m in members], dtype=np.int64)
        self.size = np.asarray([m[3] for m in members], dtype=np.int64)
        self.ext = np.asarray([SHARD_EXTENSIONS.index(m[1]) for m in members], dtype=np.int8)
        self.keys = StringTable.from_strings([m[0] for m in members])
        self._use_stats([stats for _, stats in parts])

    def _use_stats(self, stats: list[list[list[float]] | None]) -> None:
        """Crops are read alone when every clip is a float32 audio member with statistics."""
        audio = SHARD_EXTENSIONS.index("audio.npy")
        if not stats or any(s is None for s in stats) or np.any(self.ext != audio):
            return
        table = np.asarray([row for s in stats for row in s], dtype=np.float64).reshape(-1, 3)
        samples = table[:, 0].astype(np.int64)
        fits = (samples >= features.MIN_SAMPLES) & (self.size - 4 * samples >= 10)
        if not (np.isfinite(table).all() and fits.all()):
            log.warning("shard statistics do not match their members; reading whole clips")
            return
        self.samples, self.clip_mean, self.clip_std = samples, table[:, 1], table[:, 2]
        self.frames = samples // features.HOP_LENGTH + 1
        self.crop_kind = "audio"

    def __len__(self) -> int:
        return len(self.offset)

    def name(self, index: int) -> str:
        ext = SHARD_EXTENSIONS[int(self.ext[index])]
        return f"{self.shards[int(self.shard_id[index])]}:{self.keys[index]}.{ext}"

    def origin(self, index: int) -> tuple[str, str]:
        shard = str(self.shards[int(self.shard_id[index])])
        return shard, f"{self.keys[index]}@{int(self.offset[index])}"

    def load(self, index: int) -> tuple[str, np.ndarray]:
        ext = SHARD_EXTENSIONS[int(self.ext[index])]
        name = self.name(index)
        shard, offset, size = int(self.shard_id[index]), int(self.offset[index]), self.size[index]
        data = self.files.read(shard, offset, int(size), name)
        if ext.endswith("npy"):
            return _decode_npy(data, ext, name)
        return "audio", features.load_audio(io.BytesIO(data), name=name)

    def read_crops(
        self, clips: np.ndarray, offsets: np.ndarray, num_frames: int, out: np.ndarray
    ) -> None:
        """The samples around each crop (`mwmae.data.crops.window_start`) into `out`."""
        for row, (clip, offset) in enumerate(zip(clips.tolist(), offsets.tolist(), strict=True)):
            self._read_window(clip, window_start(offset), out[row])

    def _read_window(self, clip: int, start: int, out: np.ndarray) -> None:
        n, width = int(self.samples[clip]), len(out)
        shard, name = int(self.shard_id[clip]), functools.partial(self.name, clip)
        data = int(self.offset[clip] + self.size[clip]) - 4 * n  # float32 samples end the member
        lo, hi = max(start, 0), min(start + width, n)
        if (lo, hi) == (start, start + width):  # inside the clip: straight into the batch
            self.files.read_into(shard, data + 4 * lo, out, name)
            return
        part = np.empty(hi - lo, dtype=np.float32)
        self.files.read_into(shard, data + 4 * lo, part, name)
        out[:] = part[window_indices(n, start, width) - lo]


def _decode_npy(data: bytearray, ext: str, name: str) -> tuple[str, np.ndarray]:
    """("logmel", (T, F)) or ("audio", (n,)) from a `.npy` member; AudioError when bad."""
    array = np.asarray(decode_npy(data, name), dtype=np.float32)
    if ext == "logmel.npy" or (ext == "npy" and array.ndim == 2):
        if array.ndim != 2 or array.shape[0] == 0:
            raise features.AudioError(f"{name}: log-mel must be (T, F), got {array.shape}")
        if not np.isfinite(array).all():  # not a waveform: check_waveform's message would mislead
            raise features.AudioError(f"{name}: log-mel contains NaN or Inf values")
        return "logmel", array
    if array.ndim != 1:
        raise features.AudioError(f"{name}: audio must be 1-D, got {array.shape}")
    features.check_waveform(array, name)
    return "audio", array
