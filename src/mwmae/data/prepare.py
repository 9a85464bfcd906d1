"""Writing shard sets (`mwmae prepare-shards`).

Three contents: "prepared" (the command's default: float16 log-mel with each clip's statistics,
`mwmae.data.prepared`), "audio" (`<key>.audio.npy`, float32 16 kHz mono, with each clip's
sample count and log-mel statistics in the sidecar index, so that a crop is read alone) and
"logmel" (`<key>.logmel.npy`, float32 (T, 80), unnormalised). Every clip is read once (a long
file as several clips, each by seeking: `mwmae.data.files.plan_clips`), so no whole long file is
ever held; bad clips are skipped and listed.

Each shard is written under a temporary name and renamed when full. The set's summary
`shards.json` is written last, after every shard and index: until then the folder carries a
marker and readers refuse it (`mwmae.data.shards.find_shards`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mwmae import features
from mwmae._io import atomic_write_text
from mwmae._progress import progress_bar
from mwmae.data.binary import StringTable
from mwmae.data.files import DEFAULT_CLIP_SECONDS, plan_clips
from mwmae.data.prepared import DTYPE, LOGMEL_MEMBER, META_MEMBER, prepared_meta
from mwmae.data.shards import INCOMPLETE_MARKER, SHARD_INDEX_NAME, write_shard_index
from mwmae.errors import ConfigError

log = logging.getLogger(__name__)

CONTENTS = ("prepared", "audio", "logmel")
_LOGMEL_HEADER = 128  # bytes reserved for logmel.npy's header, written once the shape is known

_Clip = tuple[str, int, int, int]  # (path, start, stop, sample rate), see files.plan_clips
_Converted = tuple[np.ndarray, float, float]  # what to store, the clip's log-mel mean and std


def clip_stats(logmel: np.ndarray, name: str) -> tuple[float, float]:
    """Mean and population std of a clip's whole float32 log-mel, computed in float64 (the
    reference's per-clip normalisation); `AudioError` when they are not finite."""
    mean, std = float(logmel.mean(dtype=np.float64)), float(logmel.std(dtype=np.float64))
    if not (np.isfinite(mean) and np.isfinite(std)):
        raise features.AudioError(f"{name}: non-finite log-mel (audio too loud?)")
    return mean, std


def _convert_clip(args: tuple[_Clip, str]) -> tuple[_Clip, _Converted | None, str | None]:
    clip, content = args
    path, start, stop, _ = clip
    name = features.clip_name(*clip)
    try:
        wave = features.load_audio(path, start=start, stop=stop)
        # audio too short for one log-mel frame is skipped here, not at every training step
        features.check_waveform(wave, name, min_samples=features.MIN_SAMPLES, finite=False)
        logmel = features.clip_logmel(wave, checked=True).numpy()
        mean, std = clip_stats(logmel, name)
    except (features.AudioError, ValueError, OSError) as exc:
        return clip, None, str(exc)
    stored = {"audio": wave, "logmel": logmel, "prepared": logmel.astype(DTYPE)}[content]
    return clip, (stored, mean, std), None


def _clip_meta(clip: _Clip, root: str | Path | None) -> dict[str, Any]:
    path, start, stop, sr = clip
    meta: dict[str, Any] = {
        "source": str(Path(path).relative_to(root)) if root is not None else path
    }
    if stop != features.WHOLE:  # one clip of a long file: where it lies in the source
        meta.update(start_s=start / sr, end_s=stop / sr)
    return meta


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _add_member(tf: tarfile.TarFile, name: str, data: bytes | BinaryIO, size: int = -1) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if isinstance(data, bytes) else size
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: same input, same bytes
    tf.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else data)


class _Writer:
    """Appends clips to `shard-000000.tar`, ...; each shard is written under a temporary name
    (`.shard-000000.tar.tmp`) and renamed when full. Subclasses store the clips."""

    def __init__(self, out_dir: Path, samples_per_shard: int) -> None:
        self.out_dir, self.samples_per_shard = out_dir, samples_per_shard
        self.shards: list[dict[str, Any]] = []
        self.count = 0

    def temporary(self, kind: str = "tar") -> Path:
        return self.out_dir / f".shard-{len(self.shards):06d}.{kind}.tmp"

    def add(self, converted: _Converted, meta: dict[str, Any], name: str) -> None:
        self.store(converted, meta, name)
        self.count += 1
        if self.count >= self.samples_per_shard:
            self.close()

    def close(self) -> None:
        if self.count == 0:
            return
        extra = self.finish_tar(self.temporary())
        final = self.out_dir / f"shard-{len(self.shards):06d}.tar"
        os.replace(self.temporary(), final)
        self.after_rename(final)
        entry = {"name": final.name, "count": self.count, "size": final.stat().st_size}
        self.shards.append({**entry, **extra})
        self.count = 0

    def store(self, converted: _Converted, meta: dict[str, Any], name: str) -> None:
        raise NotImplementedError

    def finish_tar(self, tmp: Path) -> dict[str, Any]:
        raise NotImplementedError

    def after_rename(self, final: Path) -> None:
        pass


class _MemberWriter(_Writer):
    """Audio (`<key>.audio.npy`, statistics in the sidecar) or float32 log-mel members, each
    with `<key>.json`; keys count up across the set."""

    def __init__(self, out_dir: Path, member_ext: str, samples_per_shard: int) -> None:
        super().__init__(out_dir, samples_per_shard)
        self.member_ext = member_ext
        self.tf: tarfile.TarFile | None = None
        self.key = 0
        self.stats: list[list[float]] = []

    def store(self, converted: _Converted, meta: dict[str, Any], name: str) -> None:
        array, mean, std = converted
        if self.tf is None:
            self.tf = tarfile.open(self.temporary(), mode="w", format=tarfile.PAX_FORMAT)
        key = f"{self.key:09d}"
        self.key += 1
        _add_member(self.tf, f"{key}.{self.member_ext}", _npy_bytes(array.astype(np.float32)))
        _add_member(self.tf, f"{key}.json", json.dumps(meta).encode())
        self.stats.append([len(array), mean, std])

    def finish_tar(self, tmp: Path) -> dict[str, Any]:
        assert self.tf is not None
        self.tf.close()
        self.tf = None
        return {}

    def after_rename(self, final: Path) -> None:
        audio = self.member_ext == "audio.npy"
        write_shard_index(final, self.stats if audio else None)  # readers skip the header scan
        self.stats = []


class _PreparedWriter(_Writer):
    """Prepared shards: log-mel rows go to a temporary file as clips come (bounded memory),
    the index arrays and the rows become the shard's members when it is full."""

    def __init__(self, out_dir: Path, samples_per_shard: int) -> None:
        super().__init__(out_dir, samples_per_shard)
        self.rows: BinaryIO | None = None
        self.frames: list[int] = []
        self.means: list[float] = []
        self.stds: list[float] = []
        self.names: list[str] = []

    def store(self, converted: _Converted, meta: dict[str, Any], name: str) -> None:
        logmel, mean, std = converted
        if self.rows is None:
            self.rows = open(self.temporary("logmel"), "w+b")  # noqa: SIM115
            self.rows.write(bytes(_LOGMEL_HEADER))
        self.rows.write(np.ascontiguousarray(logmel, dtype=DTYPE).tobytes())
        self.frames.append(len(logmel))
        self.means.append(mean)
        self.stds.append(std)
        self.names.append(name)

    def finish_tar(self, tmp: Path) -> dict[str, Any]:
        assert self.rows is not None
        frames = np.asarray(self.frames, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)
        rows, self.rows = self.rows, None
        with rows:
            write_prepared_tar(tmp, frames, offsets, self.means, self.stds, self.names, rows)
        os.remove(self.temporary("logmel"))
        self.frames, self.means, self.stds, self.names = [], [], [], []
        return {"frames": int(frames.sum())}


def logmel_rows(logmel: np.ndarray) -> BinaryIO:
    """An in-memory rows file for `write_prepared_tar`: (total, 80) float16 log-mel rows after
    the space reserved for their header."""
    rows = io.BytesIO(bytes(_LOGMEL_HEADER))
    rows.seek(0, os.SEEK_END)
    rows.write(np.ascontiguousarray(logmel, dtype=DTYPE).tobytes())
    return rows


def write_prepared_tar(
    path: Path,
    frames: np.ndarray,
    offsets: np.ndarray,
    means: Sequence[float] | np.ndarray,
    stds: Sequence[float] | np.ndarray,
    names: Sequence[str],
    rows: BinaryIO,
) -> None:
    """Write one prepared shard (`mwmae.data.prepared`): the clips' index arrays, then the
    log-mel rows of `rows` (a file whose first bytes are left for the `.npy` header, as
    `logmel_rows` makes), streamed without holding them."""
    total = (rows.seek(0, os.SEEK_END) - _LOGMEL_HEADER) // (DTYPE.itemsize * features.N_MELS)
    table = StringTable.from_strings(names)  # the layout `PreparedSource` reads back
    members = {
        META_MEMBER: json.dumps(prepared_meta(len(frames), total)).encode(),
        "frames.npy": _npy_bytes(np.asarray(frames, dtype=np.int64)),
        "offset.npy": _npy_bytes(np.asarray(offsets, dtype=np.int64)),
        "mean.npy": _npy_bytes(np.asarray(means, dtype=np.float64)),
        "std.npy": _npy_bytes(np.asarray(stds, dtype=np.float64)),
        "names.npy": _npy_bytes(table.data),
        "name_offsets.npy": _npy_bytes(table.offsets),
    }
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            _add_member(tf, name, data)
        size = _write_logmel_header(rows, total)
        _add_member(tf, LOGMEL_MEMBER, rows, size)


def _write_logmel_header(rows: BinaryIO, total: int) -> int:
    """Write the `.npy` header of (total, 80) float16 rows into the space reserved at the
    start of `rows`; rewind it; return the member's size."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": DTYPE.str, "fortran_order": False, "shape": (total, features.N_MELS)}
    )
    if len(header.getvalue()) != _LOGMEL_HEADER:
        raise RuntimeError(f"unexpected .npy header size {len(header.getvalue())}")
    rows.seek(0)
    rows.write(header.getvalue())
    rows.flush()
    size = rows.seek(0, os.SEEK_END)
    rows.seek(0)
    return size


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _converted(
    clips: list[_Clip], content: str, num_workers: int
) -> Iterable[tuple[_Clip, _Converted | None, str | None]]:
    jobs = [(clip, content) for clip in clips]
    if num_workers > 0:
        import multiprocessing as mp

        # one torch thread per process: more oversubscribe the cores the processes share
        with mp.get_context("spawn").Pool(num_workers, initializer=_one_thread) as pool:
            yield from pool.imap(_convert_clip, jobs, chunksize=8)
    else:
        yield from map(_convert_clip, jobs)


def _begin_set(out_dir: Path) -> None:
    """Mark the folder as being written: a stale summary goes, the marker comes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARD_INDEX_NAME).unlink(missing_ok=True)
    (out_dir / INCOMPLETE_MARKER).write_text("mwmae prepare-shards is writing this folder\n")


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
    content: str | None = None,
) -> dict[str, Any]:
    """Write clips as tar shards `shard-000000.tar`, ... plus `shards.json` (written last).

    `content` is "audio" (the default here; `<key>.audio.npy`, float32 16 kHz mono, with each
    clip's statistics in the sidecar index), "logmel" (also `logmel=True`: `<key>.logmel.npy`,
    float32 (T, 80), not normalised) or "prepared" (`mwmae.data.prepared`, what `mwmae
    prepare-shards` writes by default). Member shards also hold `<key>.json` with the source
    path (relative to `root` when given; for a clip of a long file also `start_s`/`end_s`).
    Files longer than `clip_seconds` are written as several clips, each read by seeking. Bad
    clips are skipped and listed in the summary (`skipped`, with `bad_files` distinct files);
    `unusable` (path, reason) entries from the listing are recorded as `unreadable`.
    """

    content = content or ("logmel" if logmel else "audio")
    if content not in CONTENTS:
        raise ConfigError(f"content must be one of {', '.join(CONTENTS)}, got {content!r}")
    out_dir = Path(out_dir)
    _begin_set(out_dir)
    writer: _Writer
    if content == "prepared":
        writer = _PreparedWriter(out_dir, samples_per_shard)
    else:
        writer = _MemberWriter(out_dir, f"{content}.npy", samples_per_shard)
    skipped: list[dict[str, str]] = []
    clips = list(plan_clips(paths, clip_seconds))
    results = _converted(clips, content, num_workers)
    for clip, converted, error in progress_bar(
        results, total=len(clips), disable=not progress, unit="clip"
    ):
        if converted is None:
            skipped.append({"path": clip[0], "error": str(error)})
            log.warning("skipping bad clip: %s", error)
            if on_bad is not None:
                on_bad(str(error))
            continue
        meta = _clip_meta(clip, root)
        writer.add(converted, meta, features.clip_name(meta["source"], *clip[1:]))
    writer.close()
    summary = {
        "format": "mwmae-shards",
        "version": 1,
        "content": content,
        "sample_rate": features.SAMPLE_RATE,
        "num_clips": sum(s["count"] for s in writer.shards),
        "shards": writer.shards,
        "skipped": skipped,
        "bad_files": len({item["path"] for item in skipped}),
        "unreadable": [{"path": p, "error": why} for p, why in unusable],
    }
    atomic_write_text(out_dir / SHARD_INDEX_NAME, json.dumps(summary, indent=2), fsync=True)
    (out_dir / INCOMPLETE_MARKER).unlink()
    return summary
