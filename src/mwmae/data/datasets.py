"""Pretraining data: audio folders, CSV/JSONL manifests and WebDataset-style tar shards.

Everything here is deterministic under a seed and independent of the number of DataLoader
workers or ranks:

- the sample stream is the concatenation of per-epoch permutations, the permutation of epoch
  `e` drawn from (seed, e); global step `s` takes stream positions [s * G, (s + 1) * G) for a
  global batch G, split into contiguous per-rank and per-micro-batch slices
  (`EpochBatchSampler`);
- the random 200-frame crop of a clip comes from a generator seeded by (seed, epoch, index);
- a bad clip (undecodable, empty, NaN/Inf, too short for one STFT frame) is replaced by the
  next index (i + 1, i + 2, ...), and its name travels with the batch so that the training loop
  can count and log it.

Shards are plain POSIX tar files in the WebDataset layout: members `<key>.<ext>` grouped by key,
here `<key>.audio.npy` (float32 (n,) at 16 kHz) or `<key>.logmel.npy` (float32 (T, 80),
unnormalised) plus `<key>.json`. Reading also accepts `.npy` (1-D: audio, 2-D: log-mel) and
`.wav/.flac/.ogg/.mp3` members of shards written by other tools. No pickle: arrays are read with
`np.load(..., allow_pickle=False)`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwmae import features
from mwmae._io import atomic_write_text
from mwmae._rng import derive_seed, torch_generator  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Preference order when one shard key holds several usable members.
SHARD_EXTENSIONS = ("logmel.npy", "audio.npy", "npy", "flac", "wav", "ogg", "mp3")
SHARD_INDEX_NAME = "shards.json"

# Tags that keep the seed streams of different uses apart.
_TAG_PERMUTATION = 0x5EED_0001
_TAG_CROP = 0x5EED_0002
_TAG_FRACTION = 0x5EED_0003


# --------------------------------------------------------------------------------------------
# Listing sources
# --------------------------------------------------------------------------------------------
def find_audio_files(
    folder: str | Path, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> list[Path]:
    """All audio files below `folder` (recursive), sorted for a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


def read_manifest(path: str | Path, column: str = "path") -> list[Path]:
    """Paths listed in a CSV (header with a `path` column) or JSONL (`{"path": ...}` lines).

    Relative paths are resolved against the manifest's folder. Order is kept.
    """
    path = Path(path)
    base = path.parent
    entries: list[str] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
                if not isinstance(row, dict) or column not in row:
                    raise ValueError(f"{path}:{lineno}: no {column!r} field")
                entries.append(str(row[column]))
    elif path.suffix.lower() in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise ValueError(f"{path}: no {column!r} column (columns: {reader.fieldnames})")
            entries = [row[column] for row in reader if row[column]]
    else:
        raise ValueError(f"{path}: a manifest must be .csv, .tsv or .jsonl")
    return [p if p.is_absolute() else base / p for p in map(Path, entries)]


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
            raise FileNotFoundError(f"{path}: no *.tar shards")
        return found
    if path.name.endswith(".json") and path.is_file():
        meta = json.loads(path.read_text())
        return [path.parent / s["name"] for s in meta["shards"]]
    if any(ch in str(spec) for ch in "*?["):
        found = sorted(Path(p) for p in _glob(str(spec)))
        if not found:
            raise FileNotFoundError(f"{spec}: no shards match")
        return found
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{spec}: no such shard, folder or glob")


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern)


# --------------------------------------------------------------------------------------------
# Sources: index -> (kind, array)
# --------------------------------------------------------------------------------------------
class ClipSource:
    """A list of clips. `load(i)` returns ("audio", (n,) float32 16 kHz) or ("logmel", (T, 80))
    and raises `features.AudioError` (or ValueError/OSError) for a bad clip."""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def load(self, index: int) -> tuple[str, np.ndarray]:
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> ClipSource:
        return SubsetSource(self, list(indices))


class SubsetSource(ClipSource):
    def __init__(self, parent: ClipSource, indices: list[int]) -> None:
        self.parent, self.indices = parent, indices

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.parent.name(self.indices[index])

    def load(self, index: int) -> tuple[str, np.ndarray]:
        return self.parent.load(self.indices[index])


class FileSource(ClipSource):
    """Audio files decoded with soundfile (resampled to 16 kHz, mono)."""

    def __init__(self, paths: Sequence[str | Path], sample_rate: int = features.SAMPLE_RATE):
        self.paths = [str(p) for p in paths]
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int) -> tuple[str, np.ndarray]:
        return "audio", features.load_audio(self.paths[index], self.sample_rate)


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
            try:
                array = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as exc:
                raise features.AudioError(f"{name}: not a valid .npy array ({exc})") from exc
            array = np.asarray(array, dtype=np.float32)
            if ext == "logmel.npy" or (ext == "npy" and array.ndim == 2):
                if array.ndim != 2 or array.shape[0] == 0:
                    raise features.AudioError(f"{name}: log-mel must be (T, F), got {array.shape}")
                if not np.isfinite(array).all():
                    raise features.AudioError(f"{name}: log-mel contains NaN or Inf values")
                return "logmel", array
            if array.ndim != 1:
                raise features.AudioError(f"{name}: audio must be 1-D, got {array.shape}")
            features.check_waveform(array, name)
            return "audio", array
        import soundfile as sf

        try:
            wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as exc:  # soundfile raises several types for undecodable input
            raise features.AudioError(f"{name}: could not decode audio ({exc})") from exc
        wave = features.to_mono(wave)
        features.check_waveform(wave, name)
        wave = features.resample(wave, int(sr), features.SAMPLE_RATE)
        return "audio", np.ascontiguousarray(wave, dtype=np.float32)


def detect_kind(source: str | Path | Sequence[str | Path]) -> str:
    """'folder', 'manifest' or 'shards' for a data source specification."""
    if isinstance(source, (list, tuple)):
        return "shards"
    path = Path(source)
    if path.is_dir():
        if (path / SHARD_INDEX_NAME).is_file() or (
            any(path.glob("*.tar"))
            and not any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.iterdir())
        ):
            return "shards"
        return "folder"
    name = path.name.lower()
    if name.endswith((".csv", ".tsv", ".jsonl", ".ndjson")):
        return "manifest"
    if name.endswith((".tar", ".json")) or any(ch in str(source) for ch in "*?["):
        return "shards"
    raise ValueError(
        f"{source}: cannot tell the data source kind (folder of audio, .csv/.jsonl "
        f"manifest, or .tar shards); set data.kind"
    )


def build_source(
    source: str | Path | Sequence[str | Path],
    kind: str = "auto",
    fraction: float = 1.0,
    seed: int = 0,
) -> ClipSource:
    """A `ClipSource` for a folder, manifest or shards, optionally a seeded random `fraction`
    of its clips (kept in their original order)."""
    if kind == "auto":
        kind = detect_kind(source)
    if kind == "folder":
        src: ClipSource = FileSource(find_audio_files(source))
    elif kind == "manifest":
        src = FileSource(read_manifest(source))
    elif kind == "shards":
        src = ShardSource(find_shards(source))
    else:
        raise ValueError(f"unknown data kind {kind!r}: use auto, folder, manifest or shards")
    if len(src) == 0:
        raise ValueError(f"{source}: no clips found ({kind})")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        n = len(src)
        keep = max(1, int(round(n * fraction)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_FRACTION]))
        src = src.subset(sorted(rng.permutation(n)[:keep].tolist()))
    return src


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
class PretrainDataset(torch.utils.data.Dataset):
    """Clips -> normalised, randomly cropped (1, num_frames, 80) spectrograms.

    Items are addressed by (epoch, index) (a plain int means epoch 0). Normalisation is over
    the whole clip before the crop, as the reference: "instance" = one scalar mean/std per clip
    (population std), "dataset" = the given `mean`/`std`, "none" = raw log-mel.
    A bad clip is replaced by the next good index; the item's "bad" field names the clips that
    were skipped for it.
    """

    def __init__(
        self,
        source: ClipSource,
        num_frames: int = features.NUM_FRAMES,
        seed: int = 0,
        normalize: str = "instance",
        mean: float | None = None,
        std: float | None = None,
        max_substitutes: int = 16,
    ) -> None:
        if normalize not in ("instance", "dataset", "none"):
            raise ValueError(f"normalize must be instance, dataset or none, got {normalize!r}")
        if normalize == "dataset" and (mean is None or std is None):
            raise ValueError("normalize='dataset' needs mean and std (see compute_dataset_stats)")
        self.source = source
        self.num_frames = num_frames
        self.seed = seed
        self.normalize = normalize
        self.mean, self.std = mean, std
        self.max_substitutes = max_substitutes
        self._bad: set[int] = set()  # per process; only saves decoding bad clips again

    def __len__(self) -> int:
        return len(self.source)

    def clip_logmel(self, index: int) -> torch.Tensor:
        """Unnormalised log-mel (T, 80) of one clip; raises for a bad clip."""
        kind, array = self.source.load(index)
        if kind == "logmel":
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if array.shape[0] <= features.N_FFT // 2:
            raise features.AudioError(
                f"{self.source.name(index)}: too short ({array.shape[0]} samples)"
            )
        return features.log_mel_spectrogram(torch.from_numpy(array))

    def clip_spec(self, index: int) -> torch.Tensor:
        """Normalised full-clip spectrogram (T, 80)."""
        spec = self.clip_logmel(index)
        if self.normalize == "instance":
            spec = features.normalize_per_instance(spec, unbiased=False)
        elif self.normalize == "dataset":
            spec = features.normalize_with_stats(spec, float(self.mean), float(self.std))
        if not bool(torch.isfinite(spec).all()):
            raise features.AudioError(
                f"{self.source.name(index)}: non-finite spectrogram (constant or silent clip?)"
            )
        return spec

    def crop(self, spec: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        pad_value = float(spec.mean()) if self.normalize == "none" else 0.0
        gen = torch_generator(self.seed, _TAG_CROP, epoch, index)
        return features.crop_or_pad(spec, self.num_frames, generator=gen, pad_value=pad_value)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, int(item)) if isinstance(item, (int, np.integer)) else map(int, item)
        n = len(self.source)
        bad: list[str] = []
        for attempt in range(self.max_substitutes + 1):
            i = (index + attempt) % n
            if i in self._bad:
                bad.append(self.source.name(i))
                continue
            try:
                spec = self.clip_spec(i)
            except (features.AudioError, ValueError, OSError, RuntimeError) as exc:
                self._bad.add(i)
                bad.append(self.source.name(i))
                log.warning("skipping bad clip: %s", exc)
                continue
            return {"spec": self.crop(spec, epoch, i)[None], "index": i, "bad": bad}
        raise RuntimeError(
            f"{self.max_substitutes + 1} bad clips in a row from index {index} "
            f"(last: {bad[-1]}); check the data"
        )


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack specs to (B, 1, T, F); keep indices and the names of skipped bad clips."""
    return {
        "spec": torch.stack([it["spec"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "bad": [name for it in items for name in it["bad"]],
    }


def compute_dataset_stats(dataset: PretrainDataset, max_clips: int = 256) -> tuple[float, float]:
    """Mean and population std of all log-mel values of the first `max_clips` good clips."""
    total = total_sq = 0.0
    count = 0
    for i in range(min(max_clips, len(dataset))):
        try:
            spec = dataset.clip_logmel(i).double()
        except (features.AudioError, ValueError, OSError):
            continue
        if not bool(torch.isfinite(spec).all()):
            continue
        total += float(spec.sum())
        total_sq += float(spec.square().sum())
        count += spec.numel()
    if count == 0:
        raise ValueError("no good clips to compute dataset statistics from")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


# --------------------------------------------------------------------------------------------
# Sampling: the global stream of (epoch, index) positions
# --------------------------------------------------------------------------------------------
class EpochBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of (epoch, index) for steps [start_step, total_steps).

    Global step s covers stream positions [s * G, (s + 1) * G); rank r takes the r-th of
    `world_size` contiguous slices and splits it into `accum_steps` micro-batches. Stream
    position p is index perm_e[p % N] of epoch e = p // N, perm_e a permutation seeded by
    (seed, e). The result depends only on (seed, G, N), never on workers or ranks.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        accum_steps: int = 1,
        start_step: int = 0,
        total_steps: int = 1,
    ) -> None:
        if num_items <= 0:
            raise ValueError("the dataset is empty")
        if global_batch % (world_size * accum_steps):
            raise ValueError(
                f"global batch {global_batch} must be divisible by world size {world_size} x "
                f"accumulation steps {accum_steps}"
            )
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.start_step, self.total_steps = start_step, total_steps
        self.micro_batch = global_batch // (world_size * accum_steps)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, _TAG_PERMUTATION, epoch])
            )
            perm = rng.permutation(self.num_items)
            self._perms = {epoch: perm}  # keep one: the stream only moves forward
        return perm

    def positions(self, step: int, micro: int) -> list[tuple[int, int]]:
        start = (
            step * self.global_batch
            + self.rank * (self.global_batch // self.world_size)
            + micro * self.micro_batch
        )
        out = []
        for p in range(start, start + self.micro_batch):
            epoch, offset = divmod(p, self.num_items)
            out.append((epoch, int(self.permutation(epoch)[offset])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.accum_steps):
                yield self.positions(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum_steps


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers do small STFTs; one thread each avoids oversubscription


def make_loader(
    dataset: PretrainDataset,
    sampler: EpochBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader that returns micro-batches in sampler order (`collate_clips` dicts).

    `generator` seeds the workers' base seed; passing one leaves the global torch RNG alone.
    """
    kwargs: dict[str, Any] = {"generator": generator}
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=prefetch_factor, worker_init_fn=_worker_init, persistent_workers=False
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Writing shards
# --------------------------------------------------------------------------------------------
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


def _convert_clip(args: tuple[str, bool]) -> tuple[str, np.ndarray | None, str | None]:
    path, logmel = args
    try:
        wave = features.load_audio(path)
        if wave.shape[0] <= features.N_FFT // 2:
            raise features.AudioError(f"{path}: too short ({wave.shape[0]} samples)")
        if logmel:
            return path, features.log_mel_spectrogram(torch.from_numpy(wave)).numpy(), None
        return path, wave, None
    except (features.AudioError, ValueError, OSError) as exc:
        return path, None, str(exc)


def write_shards(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    logmel: bool = False,
    samples_per_shard: int = 1000,
    num_workers: int = 0,
    root: str | Path | None = None,
    progress: bool = False,
    on_bad: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write clips as WebDataset tar shards `shard-000000.tar`, ... plus `shards.json`.

    Each clip becomes `<key>.audio.npy` (float32 16 kHz mono) or, with `logmel`,
    `<key>.logmel.npy` (float32 (T, 80), not normalised), and `<key>.json` with its source path
    (relative to `root` when given). Bad files are skipped and listed in the returned summary.
    Shards are written to a temporary name and renamed, so a partial shard never appears.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    member_ext = "logmel.npy" if logmel else "audio.npy"
    shards: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    state: dict[str, Any] = {"tf": None, "tmp": None, "count": 0, "key": 0}

    def close_shard() -> None:
        if state["tf"] is None:
            return
        state["tf"].close()
        final = out_dir / f"shard-{len(shards):06d}.tar"
        os.replace(state["tmp"], final)
        write_shard_index(final)  # readers skip the header scan
        shards.append({"name": final.name, "count": state["count"]})
        state.update(tf=None, tmp=None, count=0)

    def results() -> Iterable[tuple[str, np.ndarray | None, str | None]]:
        jobs = [(str(p), logmel) for p in paths]
        if num_workers > 0:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(num_workers) as pool:
                yield from pool.imap(_convert_clip, jobs, chunksize=8)
        else:
            yield from map(_convert_clip, jobs)

    from tqdm.auto import tqdm

    for path, array, error in tqdm(results(), total=len(paths), disable=not progress, unit="clip"):
        if array is None:
            skipped.append({"path": path, "error": str(error)})
            log.warning("skipping bad file: %s", error)
            if on_bad is not None:
                on_bad(str(error))
            continue
        if state["tf"] is None:
            state["tmp"] = out_dir / f".shard-{len(shards):06d}.tar.tmp"
            state["tf"] = tarfile.open(state["tmp"], mode="w", format=tarfile.PAX_FORMAT)
        key = f"{state['key']:09d}"
        state["key"] += 1
        source = str(Path(path).relative_to(root)) if root is not None else path
        _add_member(state["tf"], f"{key}.{member_ext}", _npy_bytes(array.astype(np.float32)))
        _add_member(state["tf"], f"{key}.json", json.dumps({"source": source}).encode())
        state["count"] += 1
        if state["count"] >= samples_per_shard:
            close_shard()
    close_shard()
    summary = {
        "format": "mwmae-shards",
        "version": 1,
        "content": "logmel" if logmel else "audio",
        "sample_rate": features.SAMPLE_RATE,
        "num_clips": sum(s["count"] for s in shards),
        "shards": shards,
        "skipped": skipped,
    }
    atomic_write_text(out_dir / SHARD_INDEX_NAME, json.dumps(summary, indent=2))
    return summary


def list_sources(source: str | Path, kind: str = "auto") -> list[Path]:
    """Audio file paths for a folder or manifest (what `write_shards` takes)."""
    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "folder":
        return find_audio_files(source)
    if kind == "manifest":
        return read_manifest(source)
    raise ValueError(f"{source}: expected a folder of audio files or a manifest, got {kind}")
