"""The pretraining dataset: clips -> normalised, randomly cropped log-mel spectrograms.

Deterministic under a seed and independent of the number of DataLoader workers or ranks: the
random crop of a clip comes from a generator seeded by (seed, epoch, index). A bad clip
(undecodable, empty, NaN/Inf, too short for one STFT frame) is replaced by the next index
(i + 1, i + 2, ...), and its name travels with the batch so that the training loop can count and
log it. The dataset also counts, per process, the distinct bad files (`bad_files`) apart from
the substitutions made for them (`substitutions`): a bad file drawn ten times is one bad file.

Built once, in its final state: the log-mel cache (`build_mel_cache`) and the dataset
statistics (`compute_dataset_stats`) are made from the source first and passed in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mwmae import features
from mwmae.data.clips import CLIP_ERRORS, ClipSource
from mwmae.data.crops import CropReader, batch_tensor, crop_offset, crops_to_spec
from mwmae.data.melcache import MelCache
from mwmae.errors import ConfigError, InputError

log = logging.getLogger(__name__)

PRETRAIN_NORMALIZE = ("instance", "dataset", "none")
FEATURE_PLACES = ("worker", "device")  # where the log-mel of a crop is computed


class PretrainDataset(torch.utils.data.Dataset):
    """Clips -> normalised, randomly cropped (1, num_frames, 80) spectrograms.

    Items are addressed by (epoch, index) (a plain int means epoch 0). Normalisation is over
    the whole clip before the crop, as the reference: "instance" = one scalar mean/std per clip
    (population std), "dataset" = the given `mean`/`std`, "none" = raw log-mel. With a
    `mel_cache` (`build_mel_cache` of the same source) the log-mels come from memory.
    A bad clip is replaced by the next good index; the item's "bad" field names the clips that
    were skipped for it.

    A source that reads crops alone (`mwmae.data.crops.CropSource`: prepared shards, audio
    shards with stored statistics) is read crop by crop, normalised with each clip's stored
    statistics, and a whole micro-batch at once (`__getitems__`, which the DataLoader calls).
    `features_on="device"` leaves the log-mel of audio crops and the normalisation to the
    training process (`batch_spec`, on its device): batches then carry raw crops.
    """

    def __init__(
        self,
        source: ClipSource,
        num_frames: int,
        seed: int = 0,
        normalize: str = "instance",
        mean: float | None = None,
        std: float | None = None,
        max_substitutes: int = 16,
        mel_cache: MelCache | None = None,
        features_on: str = "worker",
    ) -> None:
        _check_options(source, num_frames, normalize, mean, std, max_substitutes, mel_cache)
        if features_on not in FEATURE_PLACES:
            raise ConfigError(f"features_on must be worker or device, got {features_on!r}")
        self.source = source
        self.num_frames = num_frames
        self.seed = seed
        self.normalize = normalize
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.max_substitutes = max_substitutes
        self.mel_cache = mel_cache
        self.features_on = features_on
        self.crops = None if mel_cache is not None else CropReader.of(source, num_frames, seed)
        self._bad: set[int] = set()  # per process; only saves decoding bad clips again
        self.bad_files: set[str] = set()  # distinct files with a bad clip (this process)
        self.substitutions = 0  # bad clips replaced by a later index (this process)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of audio-named entries the listing found unusable (never items)."""
        return list(self.source.skipped)

    def __len__(self) -> int:
        return len(self.source)

    def logmel(self, index: int) -> torch.Tensor:
        """Unnormalised log-mel (T, 80) of one clip (from the cache if any); raises for a bad
        clip."""
        if self.mel_cache is not None:
            return self.mel_cache.get(index)
        return self.source.logmel(index)

    def clip_spec(self, index: int) -> torch.Tensor:
        """Normalised full-clip spectrogram (T, 80) (with the stored statistics, if any)."""
        spec = self.logmel(index)
        if self.crops is not None and self.normalize == "instance":
            spec = features.normalize_with_stats(spec, *self.crops.stats(index))
        else:
            spec = features.normalize_clip(spec, self.normalize, self.mean, self.std)
        if not bool(torch.isfinite(spec).all()):
            raise features.AudioError(
                f"{self.source.name(index)}: non-finite spectrogram (constant or silent clip?)"
            )
        return spec

    def crop(self, spec: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        pad_value = float(spec.mean()) if self.normalize == "none" else 0.0
        offset = crop_offset(spec.shape[0], self.num_frames, self.seed, epoch, index)
        return features.pretrain_crop(spec, self.num_frames, offset=offset, pad_value=pad_value)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = _epoch_index(item)
        n = len(self.source)
        bad: list[str] = []
        for attempt in range(self.max_substitutes + 1):
            i = (index + attempt) % n
            if i not in self._bad:
                try:
                    spec = self._spec(epoch, i)
                except CLIP_ERRORS as exc:
                    self._bad.add(i)
                    self.bad_files.add(self.source.file(i))
                    log.warning("skipping bad clip: %s", exc)
                else:
                    return {"spec": spec[None], "index": i, "bad": bad}
            bad.append(self.source.name(i))
            self.substitutions += 1
        raise RuntimeError(
            f"{self.max_substitutes + 1} bad clips in a row from index {index} "
            f"(last: {bad[-1]}); check the data"
        )

    def _spec(self, epoch: int, index: int) -> torch.Tensor:
        """The (num_frames, 80) normalised crop of clip `index`; raises for a bad clip."""
        if self.crops is None:
            return self.crop(self.clip_spec(index), epoch, index)
        return self._checked(self.batch_spec(self.crops.read([epoch], [index])), [index])[0, 0]

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """The items of a micro-batch, read together where the source allows (one read per
        crop, one log-mel and normalisation for all); `collate_clips` takes the gathered batch
        as it is. A bad clip among them sends the micro-batch through `__getitem__`, which
        substitutes it."""
        if self.crops is None:
            return [self[item] for item in items]
        epochs, indices = zip(*map(_epoch_index, items), strict=True)
        if self._bad.intersection(indices):
            return [self[item] for item in items]
        try:
            device = self.features_on == "device"
            batch: dict[str, Any] = self.crops.read(epochs, indices, shared=device)
            if device:  # raw crops: a non-finite one is found here, where it can be replaced
                self._checked(batch[self.crops.source.crop_kind], indices)
            else:
                shape = (len(indices), self.num_frames, features.N_MELS)
                out = batch_tensor(shape, torch.float32, shared=True)
                spec = crops_to_spec(
                    batch, self.num_frames, self.normalize, self.mean, self.std, out
                )
                batch = {"spec": self._checked(spec, indices)}
        except CLIP_ERRORS:
            return [self[item] for item in items]
        batch.update(index=torch.tensor(indices, dtype=torch.long), bad=[])
        return GatheredBatch(batch)

    def batch_spec(self, batch: dict[str, Any], device: torch.device | None = None) -> torch.Tensor:
        """(B, 1, n, 80) normalised input of a collated batch on `device`: its "spec", or the
        features of its raw crops (`features_on="device"`) computed there."""
        if "spec" in batch:
            spec = batch["spec"]
            return spec if device is None else spec.to(device, non_blocking=True)
        raw = {
            key: value if device is None or key == "clip" else value.to(device, non_blocking=True)
            for key, value in batch.items()
            if key in ("audio", "logmel", "clip")
        }
        return crops_to_spec(raw, self.num_frames, self.normalize, self.mean, self.std)

    def _checked(self, spec: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """`spec` (or raw crops), unless a crop holds NaN or Inf (found through its sum: one
        cheap pass)."""
        sums = torch.sum(spec, dim=tuple(range(1, spec.ndim)), dtype=torch.float32)
        finite = torch.isfinite(sums)  # float32 sums: float16 crops' sums would overflow
        if not bool(finite.all()):
            index = indices[int(torch.nonzero(~finite)[0, 0])]
            raise features.AudioError(
                f"{self.source.name(index)}: non-finite spectrogram (constant or silent clip?)"
            )
        return spec


class GatheredBatch(Sequence[dict[str, Any]]):
    """The items of a micro-batch read together (`PretrainDataset.__getitems__`): `batch`, the
    collated dict `collate_clips` passes on as it is, and, for any other collate function, a
    sequence of per-item dicts (views of the batch, made only when asked for)."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["index"])

    def __getitem__(self, row: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        item = {
            key: value[row] if isinstance(value, torch.Tensor) else []
            for key, value in self.batch.items()
        }
        item["index"] = int(self.batch["index"][row])
        return item


def _epoch_index(item: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(item, (int, np.integer)):
        return 0, int(item)
    epoch, index = item
    return int(epoch), int(index)


def _check_options(
    source: ClipSource,
    num_frames: int,
    normalize: str,
    mean: float | None,
    std: float | None,
    max_substitutes: int,
    mel_cache: MelCache | None,
) -> None:
    if normalize not in PRETRAIN_NORMALIZE:
        raise ConfigError(f"normalize must be instance, dataset or none, got {normalize!r}")
    if normalize == "dataset" and (mean is None or std is None):
        raise ConfigError("normalize='dataset' needs mean and std (see compute_dataset_stats)")
    if num_frames < 1 or max_substitutes < 0:
        raise ConfigError(
            f"num_frames must be >= 1 and max_substitutes >= 0, "
            f"got {num_frames} and {max_substitutes}"
        )
    if mel_cache is not None and len(mel_cache) != len(source):
        raise ConfigError(
            f"the log-mel cache holds {len(mel_cache)} clips, the source {len(source)}"
        )


def collate_clips(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack specs to (B, 1, T, F); keep indices and the names of skipped bad clips. A batch
    gathered by `PretrainDataset.__getitems__` is already collated and passes as it is."""
    if isinstance(items, GatheredBatch):
        return items.batch
    return {
        "spec": torch.stack([it["spec"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "bad": [name for it in items for name in it["bad"]],
    }


def compute_dataset_stats(
    source: ClipSource, max_clips: int = 256, mel_cache: MelCache | None = None
) -> tuple[float, float]:
    """Mean and population std of all log-mel values of the first `max_clips` good clips of
    `source` (read from `mel_cache` when given; from the stored per-clip statistics of a
    source that has them, without reading a clip)."""
    n = min(max_clips, len(source))
    crops = CropReader.of(source, 1, 0) if mel_cache is None else None
    if crops is not None:
        clips = crops.clips(np.arange(n))
        counts = crops.source.frames[clips].astype(np.float64) * features.N_MELS
        means, stds = crops.source.clip_mean[clips], crops.source.clip_std[clips]
        total, total_sq = float(counts @ means), float(counts @ (stds**2 + means**2))
        return _mean_std(total, total_sq, float(counts.sum()))
    logmel = mel_cache.get if mel_cache is not None else source.logmel
    total = total_sq = 0.0
    count = 0
    for i in range(n):
        try:
            spec = logmel(i).double()
        except (features.AudioError, ValueError, OSError):
            continue
        if not bool(torch.isfinite(spec).all()):
            continue
        total += float(spec.sum())
        total_sq += float(spec.square().sum())
        count += spec.numel()
    return _mean_std(total, total_sq, count)


def _mean_std(total: float, total_sq: float, count: float) -> tuple[float, float]:
    if count == 0:
        raise InputError("no good clips to compute dataset statistics from")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))
