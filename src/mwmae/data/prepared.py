"""The prepared shard format: what pretraining reads fastest (`mwmae prepare-shards`' default).

Each shard is an uncompressed tar whose members are, in order:

    prepared.json      format, version, clip and frame counts, the front end's settings
    frames.npy         int64 (n,)    log-mel frames of each clip
    offset.npy         int64 (n,)    each clip's first row in logmel.npy
    mean.npy, std.npy  float64 (n,)  mean and population std of each clip's whole log-mel,
                                     computed in float64 from the float32 log-mel
    names.npy          uint8         the clips' names (source path, `#t=` for a cut clip), UTF-8
    name_offsets.npy   int64 (n+1,)  clip i's name is names[name_offsets[i]:name_offsets[i+1]]
    logmel.npy         float16 (total_frames, 80), every clip's unnormalised log-mel in turn

A crop of 200 frames is one positioned read of 32,000 bytes at a known place, normalised with
the stored statistics: exactly the reference's per-clip normalisation of the whole clip, up to
the float16 rounding of the log-mel values. `PreparedSource` reads it; `mwmae.data.prepare`
writes it.
"""

from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from mwmae import features
from mwmae.data.binary import (
    NPY_HEAD_BYTES,
    ShardFiles,
    StringTable,
    decode_npy,
    npy_layout,
    tar_members,
)
from mwmae.data.crops import CropSource
from mwmae.data.melcache import FRONT_END
from mwmae.errors import InputError

FORMAT = "mwmae-prepared"
VERSION = 1
META_MEMBER = "prepared.json"
LOGMEL_MEMBER = "logmel.npy"
DTYPE = np.dtype("<f2")
# Index members: name -> (dtype kinds accepted, length relative to the clip count).
INDEX_MEMBERS = {
    "frames.npy": ("iu", 0),
    "offset.npy": ("iu", 0),
    "mean.npy": ("f", 0),
    "std.npy": ("f", 0),
    "name_offsets.npy": ("iu", 1),
}
_AGAIN = "write it again with mwmae prepare-shards"
_MAX_META_BYTES = 1 << 20


def is_prepared_shard(path: str | Path) -> bool:
    """Whether a file is a shard of the prepared format (its first member is prepared.json)."""
    try:
        with tarfile.open(path, mode="r:") as tf:
            first = tf.next()
    except (tarfile.TarError, OSError, EOFError):
        return False
    return first is not None and first.name == META_MEMBER


def prepared_meta(num_clips: int, total_frames: int) -> dict:
    """The content of a shard's prepared.json."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "clips": num_clips,
        "frames": total_frames,
        "n_mels": features.N_MELS,
        "dtype": "float16",
        "front_end": FRONT_END,
    }


class _ShardIndex:
    """One prepared shard's index, checked against its bytes: every member present, every
    `.npy` header matching its member, the arrays consistent with each other and the log-mel."""

    def __init__(self, files: ShardFiles, shard: int) -> None:
        self.files, self.shard, self.path = files, shard, files.paths[shard]
        members = {name: (offset, size) for name, offset, size in tar_members(self.path)}
        missing = [
            m for m in (META_MEMBER, LOGMEL_MEMBER, *INDEX_MEMBERS, "names.npy") if m not in members
        ]
        if missing:
            self.fail(", ".join(missing), "missing from the shard")
        self.members = members
        self.meta = self._meta()
        n = int(self.meta["clips"])
        arrays = {
            name: self._array(name, kinds, n + extra)
            for name, (kinds, extra) in INDEX_MEMBERS.items()
        }
        self.frames, self.offset = arrays["frames.npy"], arrays["offset.npy"]
        self.mean, self.std = arrays["mean.npy"], arrays["std.npy"]
        self.names = StringTable(self._names(), arrays["name_offsets.npy"])
        self.data = self._logmel(int(self.meta["frames"]))
        self._check_consistent(int(self.meta["frames"]))

    def fail(self, member: str, problem: str) -> NoReturn:
        raise InputError(f"{self.path}: {member}: {problem}; {_AGAIN}")

    def _bytes(self, member: str, limit: int | None = None) -> bytearray:
        offset, size = self.members[member]
        return self.files.read(
            self.shard, offset, size if limit is None else min(size, limit), f"{self.path}:{member}"
        )

    def _meta(self) -> dict:
        if self.members[META_MEMBER][1] > _MAX_META_BYTES:
            self.fail(META_MEMBER, "larger than any mwmae writes")
        try:
            meta = json.loads(self._bytes(META_MEMBER))
        except (ValueError, RecursionError) as exc:
            self.fail(META_MEMBER, f"not valid JSON ({exc})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            self.fail(META_MEMBER, "not a prepared shard")
        if meta.get("version") != VERSION:
            self.fail(META_MEMBER, f"version {meta.get('version')} is not {VERSION}")
        if meta.get("n_mels") != features.N_MELS:
            self.fail(META_MEMBER, f"n_mels {meta.get('n_mels')} is not {features.N_MELS}")
        if meta.get("front_end") != FRONT_END:
            self.fail(META_MEMBER, "made with other front-end settings than this mwmae's")
        if not all(isinstance(meta.get(k), int) and meta[k] >= 0 for k in ("clips", "frames")):
            self.fail(META_MEMBER, "clip and frame counts must be integers >= 0")
        return meta

    def _array(self, member: str, kinds: str, length: int) -> np.ndarray:
        array = decode_npy(self._bytes(member), f"{self.path}:{member}")
        if array.ndim != 1 or array.dtype.kind not in kinds or len(array) != length:
            self.fail(member, f"expected {length} values, got {array.dtype} {array.shape}")
        return array.astype(np.float64 if kinds == "f" else np.int64)

    def _names(self) -> np.ndarray:
        names = decode_npy(self._bytes("names.npy"), f"{self.path}:names.npy")
        if names.ndim != 1 or names.dtype != np.uint8:
            self.fail("names.npy", f"expected uint8 bytes, got {names.dtype} {names.shape}")
        return names

    def _logmel(self, total: int) -> int:
        """The byte offset of the log-mel rows, after checking its header."""
        offset, size = self.members[LOGMEL_MEMBER]
        head = self._bytes(LOGMEL_MEMBER, NPY_HEAD_BYTES)
        layout = npy_layout(head, size, f"{self.path}:{LOGMEL_MEMBER}")
        expected = (total, features.N_MELS)
        if layout.dtype != DTYPE or layout.shape != expected or layout.fortran:
            self.fail(
                LOGMEL_MEMBER, f"expected float16 {expected}, got {layout.dtype} {layout.shape}"
            )
        return offset + layout.header

    def _check_consistent(self, total: int) -> None:
        ends = self.offset + self.frames
        if np.any(self.frames < 1) or np.any(self.offset < 0) or np.any(ends > total):
            self.fail("offset.npy", f"clips outside the {total} log-mel frames")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            self.fail("mean.npy", "non-finite statistics")
        if np.any(self.std < 0):
            self.fail("std.npy", "negative standard deviations")
        offsets = self.names.offsets
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(self.names.data):
            self.fail("name_offsets.npy", "offsets do not cover names.npy")


class PreparedSource(CropSource):
    """Clips of prepared shards: per-clip arrays over all shards (no Python object per clip),
    read by positioned reads of just the frames needed."""

    crop_kind = "logmel"
    crop_dtype = torch.float16

    def __init__(self, shards: Sequence[str | Path]) -> None:
        self.shards = [str(s) for s in shards]
        self.files = ShardFiles(self.shards)
        parts = [_ShardIndex(self.files, k) for k in range(len(self.shards))]
        self.shard_id = np.repeat(
            np.arange(len(parts), dtype=np.int32), [len(p.frames) for p in parts]
        )
        self.frames = _concat([p.frames for p in parts], np.int64)
        self.offset = _concat([p.offset for p in parts], np.int64)
        self.clip_mean = _concat([p.mean for p in parts], np.float64)
        self.clip_std = _concat([p.std for p in parts], np.float64)
        self.names = StringTable.concat([p.names for p in parts])
        self.data_offset = np.asarray([p.data for p in parts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.frames)

    def name(self, index: int) -> str:
        return f"{self.shards[int(self.shard_id[index])]}:{self.names[index]}"

    def file(self, index: int) -> str:
        return features.clip_file(self.name(index))

    def origin(self, index: int) -> tuple[str, str]:
        return self.shards[int(self.shard_id[index])], f"@{int(self.offset[index])}"

    def _read_frames(self, clip: int, first: int, out: np.ndarray) -> None:
        """Frames [first, first + len(out)) of clip `clip` into `out` (float16 rows)."""
        shard = int(self.shard_id[clip])
        row = int(self.offset[clip]) + first
        position = int(self.data_offset[shard]) + row * DTYPE.itemsize * features.N_MELS
        self.files.read_into(shard, position, out, functools.partial(self.name, clip))

    def load(self, index: int) -> tuple[str, np.ndarray]:
        spec = np.empty((int(self.frames[index]), features.N_MELS), dtype=DTYPE)
        self._read_frames(index, 0, spec)
        return "logmel", spec.astype(np.float32)

    def read_crops(
        self, clips: np.ndarray, offsets: np.ndarray, num_frames: int, out: np.ndarray
    ) -> None:
        """Each crop's stored frames into `out` (B, n, 80) float16; past a short clip's end,
        zeros."""
        for row, (clip, offset) in enumerate(zip(clips.tolist(), offsets.tolist(), strict=True)):
            valid = min(int(self.frames[clip]), num_frames)
            self._read_frames(clip, offset, out[row, :valid])
            out[row, valid:] = 0


def _concat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
