"""WebDataset-style tar shards: finding them, their member index, random access, writing.

Shards are plain POSIX tar files in the WebDataset layout: members `<key>.<ext>` grouped by key,
here `<key>.audio.npy` (float32 (n,) at 16 kHz) or `<key>.logmel.npy` (float32 (T, 80),
unnormalised) plus `<key>.json`. Reading also accepts `.npy` (1-D: audio, 2-D: log-mel) and
`.wav/.flac/.ogg/.mp3` members of shards written by other tools. No pickle: arrays are read with
`np.load(..., allow_pickle=False)`. A long input file is written as several clips (see
`mwmae.data.files`), each read by seeking, so `write_shards` never holds a whole long file.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mwmae import features
from mwmae._io import atomic_write_text
from mwmae.data.clips import ClipSource
from mwmae.data.files import DEFAULT_CLIP_SECONDS, plan_clips
from mwmae.errors import MissingFileError

log = logging.getLogger(__name__)

# Preference order when one shard key holds several usable members.
SHARD_EXTENSIONS = ("logmel.npy", "audio.npy", "npy", "flac", "wav", "ogg", "mp3")
SHARD_INDEX_NAME = "shards.json"


def find_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Shard paths from a folder (its `shards.json` or every `*.tar`), a glob, one `.tar`, a
    `shards.json` file, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [p for item in spec for p in find_shards(item)]
    path = Path(spec)
    if path.is_dir():
        if (path / SHARD_INDEX_NAME).is_file():
            return find_shards(path / SHARD_INDEX_NAME)
        found = sorted(path.glob("*.tar"))
        if not found:
            raise MissingFileError(f"{path}: no *.tar shards")
        return found
    if path.name.endswith(".json") and path.is_file():
        meta = json.loads(path.read_text())
        return [path.parent / s["name"] for s in meta["shards"]]
    if any(ch in str(spec) for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(spec)))
        if not found:
            raise MissingFileError(f"{spec}: no shards match")
        return found
    if path.is_file():
        return [path]
    raise MissingFileError(f"{spec}: no such shard, folder or glob")


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
    with tarfile.open(path, mode="r:") as tf:  # uncompressed: members are seekable in place
        for member in tf:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            if ext not in SHARD_EXTENSIONS:
                continue
            if key not in chosen:
                order.append(key)
            elif SHARD_EXTENSIONS.index(ext) >= SHARD_EXTENSIONS.index(chosen[key][0]):
                continue
            chosen[key] = (ext, member.offset_data, member.size)
    return [(key, *chosen[key]) for key in order]


def index_shard(path: str | Path) -> list[tuple[str, str, int, int]]:
    """`scan_shard`, from the sidecar index when it matches the shard's size (no header scan:
    matters for millions of clips read by every rank)."""
    sidecar = shard_index_path(path)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("tar_size") == os.path.getsize(path):
                return [(str(k), str(e), int(o), int(n)) for k, e, o, n in meta["members"]]
        except (ValueError, KeyError, TypeError):
            pass  # a broken sidecar: fall back to scanning
    return scan_shard(path)


def write_shard_index(path: str | Path) -> None:
    members = scan_shard(path)
    sidecar = shard_index_path(path)
    atomic_write_text(sidecar, json.dumps({"tar_size": os.path.getsize(path), "members": members}))


class ShardSource(ClipSource):
    """Random access into WebDataset-style tar shards (index built once, kept in numpy arrays).

    Each process (DataLoader worker) opens its own file handles lazily.
    """

    def __init__(self, shards: Sequence[str | Path]) -> None:
        self.shards = [str(s) for s in shards]
        shard_ids: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        exts: list[int] = []
        keys: list[str] = []
        for i, shard in enumerate(self.shards):
            for key, ext, offset, size in index_shard(shard):
                shard_ids.append(i)
                offsets.append(offset)
                sizes.append(size)
                exts.append(SHARD_EXTENSIONS.index(ext))
                keys.append(key)
        self.shard_id = np.asarray(shard_ids, dtype=np.int32)
        self.offset = np.asarray(offsets, dtype=np.int64)
        self.size = np.asarray(sizes, dtype=np.int64)
        self.ext = np.asarray(exts, dtype=np.int8)
        self.keys = np.asarray([k.encode("utf-8") for k in keys], dtype=np.bytes_)
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.offset)

    def name(self, index: int) -> str:
        ext = SHARD_EXTENSIONS[int(self.ext[index])]
        key = self.keys[index].decode("utf-8")
        return f"{self.shards[int(self.shard_id[index])]}:{key}.{ext}"

    def origin(self, index: int) -> tuple[str, str]:
        shard = str(self.shards[int(self.shard_id[index])])
        return shard, f"{self.keys[index].decode('utf-8')}@{int(self.offset[index])}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # file objects do not cross process boundaries
        return state

    def _read(self, index: int) -> bytes:
        if os.getpid() != self._pid:  # forked worker: never share the parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        shard = int(self.shard_id[index])
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.shards[shard], "rb")  # noqa: SIM115
        size = int(self.size[index])
        handle.seek(int(self.offset[index]))
        data = handle.read(size)
        if len(data) != size:
            raise OSError(
                f"{self.name(index)}: truncated shard member ({len(data)} of {size} bytes)"
            )
        return data

    def load(self, index: int) -> tuple[str, np.ndarray]:
        ext = SHARD_EXTENSIONS[int(self.ext[index])]
        name = self.name(index)
        data = self._read(index)
        if ext.endswith("npy"):
            return _decode_npy(data, ext, name)
        return "audio", features.load_audio(io.BytesIO(data), name=name)


def _decode_npy(data: bytes, ext: str, name: str) -> tuple[str, np.ndarray]:
    """("logmel", (T, F)) or ("audio", (n,)) from a `.npy` member; AudioError when bad."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise features.AudioError(f"{name}: not a valid .npy array ({exc})") from exc
    array = np.asarray(array, dtype=np.float32)
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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: same input, same bytes
    tf.addfile(info, io.BytesIO(data))


_Clip = tuple[str, int, int, int]  # (path, start, stop, sample rate), see files.plan_clips


def _convert_clip(args: tuple[_Clip, bool]) -> tuple[_Clip, np.ndarray | None, str | None]:
    clip, logmel = args
    path, start, stop, _ = clip
    try:
        if logmel:
            return clip, features.clip_logmel(path, start=start, stop=stop).numpy(), None
        wave = features.load_audio(path, start=start, stop=stop)
        # audio too short for one log-mel frame is skipped here, not at every training step
        features.check_waveform(
            wave, features.clip_name(*clip), min_samples=features.MIN_SAMPLES, finite=False
        )
        return clip, wave, None
    except (features.AudioError, ValueError, OSError) as exc:
        return clip, None, str(exc)


def _clip_meta(clip: _Clip, root: str | Path | None) -> dict[str, Any]:
    path, start, stop, sr = clip
    meta: dict[str, Any] = {
        "source": str(Path(path).relative_to(root)) if root is not None else path
    }
    if stop != features.WHOLE:  # one clip of a long file: where it lies in the source
        meta.update(start_s=start / sr, end_s=stop / sr)
    return meta


class _ShardWriter:
    """Appends clips to `shard-000000.tar`, ... (each written under a temporary name and
    renamed when full, with its sidecar index)."""

    def __init__(self, out_dir: Path, member_ext: str, samples_per_shard: int) -> None:
        self.out_dir, self.member_ext = out_dir, member_ext
        self.samples_per_shard = samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self.tf: tarfile.TarFile | None = None
        self.tmp: Path | None = None
        self.count = self.key = 0

    def add(self, array: np.ndarray, meta: dict[str, Any]) -> None:
        if self.tf is None:
            self.tmp = self.out_dir / f".shard-{len(self.shards):06d}.tar.tmp"
            self.tf = tarfile.open(self.tmp, mode="w", format=tarfile.PAX_FORMAT)
        key = f"{self.key:09d}"
        self.key += 1
        _add_member(self.tf, f"{key}.{self.member_ext}", _npy_bytes(array.astype(np.float32)))
        _add_member(self.tf, f"{key}.json", json.dumps(meta).encode())
        self.count += 1
        if self.count >= self.samples_per_shard:
            self.close()

    def close(self) -> None:
        if self.tf is None:
            return
        self.tf.close()
        final = self.out_dir / f"shard-{len(self.shards):06d}.tar"
        os.replace(str(self.tmp), final)
        write_shard_index(final)  # readers skip the header scan
        self.shards.append({"name": final.name, "count": self.count})
        self.tf, self.tmp, self.count = None, None, 0


def _converted(
    clips: list[_Clip], logmel: bool, num_workers: int
) -> Iterable[tuple[_Clip, np.ndarray | None, str | None]]:
    jobs = [(clip, logmel) for clip in clips]
    if num_workers > 0:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(num_workers) as pool:
            yield from pool.imap(_convert_clip, jobs, chunksize=8)
    else:
        yield from map(_convert_clip, jobs)


def write_shards(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    logmel: bool = False,
    samples_per_shard: int = 1000,
    num_workers: int = 0,
    root: str | Path | None = None,
    progress: bool = False,
    on_bad: Callable[[str], None] | None = None,
    clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
    unusable: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Write clips as WebDataset tar shards `shard-000000.tar`, ... plus `shards.json`.

    Each clip becomes `<key>.audio.npy` (float32 16 kHz mono) or, with `logmel`,
    `<key>.logmel.npy` (float32 (T, 80), not normalised), and `<key>.json` with its source path
    (relative to `root` when given; for a clip of a long file also `start_s`/`end_s`). Files
    longer than `clip_seconds` are written as several clips, each read by seeking. Bad clips are
    skipped and listed in the summary (`skipped`, with `bad_files` distinct files); `unusable`
    (path, reason) entries from the listing are recorded as `unreadable`. Shards are written to
    a temporary name and renamed, so a partial shard never appears.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, "logmel.npy" if logmel else "audio.npy", samples_per_shard)
    skipped: list[dict[str, str]] = []
    clips = list(plan_clips(paths, clip_seconds))
    results = _converted(clips, logmel, num_workers)
    for clip, array, error in tqdm(results, total=len(clips), disable=not progress, unit="clip"):
        if array is None:
            skipped.append({"path": clip[0], "error": str(error)})
            log.warning("skipping bad clip: %s", error)
            if on_bad is not None:
                on_bad(str(error))
            continue
        writer.add(array, _clip_meta(clip, root))
    writer.close()
    summary = {
        "format": "mwmae-shards",
        "version": 1,
        "content": "logmel" if logmel else "audio",
        "sample_rate": features.SAMPLE_RATE,
        "num_clips": sum(s["count"] for s in writer.shards),
        "shards": writer.shards,
        "skipped": skipped,
        "bad_files": len({item["path"] for item in skipped}),
        "unreadable": [{"path": p, "error": why} for p, why in unusable],
    }
    atomic_write_text(out_dir / SHARD_INDEX_NAME, json.dumps(summary, indent=2))
    return summary
