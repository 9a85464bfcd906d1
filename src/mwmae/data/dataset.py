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
from mwmae._rng import torch_generator
from mwmae.data.clips import CLIP_ERRORS, ClipSource
from mwmae.data.melcache import MelCache
from mwmae.errors import ConfigError, InputError

log = logging.getLogger(__name__)

_TAG_CROP = 0x5EED_0002  # keeps the crops' seed stream apart from the others
PRETRAIN_NORMALIZE = ("instance", "dataset", "none")


class PretrainDataset(torch.utils.data.Dataset):
    """Clips -> normalised, randomly cropped (1, num_frames, 80) spectrograms.

    Items are addressed by (epoch, index) (a plain int means epoch 0). Normalisation is over
    the whole clip before the crop, as the reference: "instance" = one scalar mean/std per clip
    (population std), "dataset" = the given `mean`/`std`, "none" = raw log-mel. With a
    `mel_cache` (`build_mel_cache` of the same source) the log-mels come from memory.
    A bad clip is replaced by the next good index; the item's "bad" field names the clips that
    were skipped for it.
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
        self.source = source
        self.num_frames = num_frames
        self.seed = seed
        self.normalize = normalize
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.max_substitutes = max_substitutes
        self.mel_cache = mel_cache
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
        """Normalised full-clip spectrogram (T, 80)."""
        spec = features.normalize_clip(self.logmel(index), self.normalize, self.mean, self.std)
        if not bool(torch.isfinite(spec).all()):
            raise features.AudioError(
                f"{self.source.name(index)}: non-finite spectrogram (constant or silent clip?)"
            )
        return spec

    def crop(self, spec: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        pad_value = float(spec.mean()) if self.normalize == "none" else 0.0
        gen = torch_generator(self.seed, _TAG_CROP, epoch, index)
        return features.pretrain_crop(spec, self.num_frames, generator=gen, pad_value=pad_value)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, int(item)) if isinstance(item, (int, np.integer)) else map(int, item)
        n = len(self.source)
        bad: list[str] = []
        for attempt in range(self.max_substitutes + 1):
            i = (index + attempt) % n
            if i not in self._bad:
                try:
                    spec = self.clip_spec(i)
                except CLIP_ERRORS as exc:
                    self._bad.add(i)
                    self.bad_files.add(self.source.file(i))
                    log.warning("skipping bad clip: %s", exc)
                else:
                    return {"spec": self.crop(spec, epoch, i)[None], "index": i, "bad": bad}
            bad.append(self.source.name(i))
            self.substitutions += 1
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


def compute_dataset_stats(
    source: ClipSource, max_clips: int = 256, mel_cache: MelCache | None = None
) -> tuple[float, float]:
    """Mean and population std of all log-mel values of the first `max_clips` good clips of
    `source` (read from `mel_cache` when given)."""
    logmel = mel_cache.get if mel_cache is not None else source.logmel
    total = total_sq = 0.0
    count = 0
    for i in range(min(max_clips, len(source))):
        try:
            spec = logmel(i).double()
        except (features.AudioError, ValueError, OSError):
            continue
        if not bool(torch.isfinite(spec).all()):
            continue
        total += float(spec.sum())
        total_sq += float(spec.square().sum())
        count += spec.numel()
    if count == 0:
        raise InputError("no good clips to compute dataset statistics from")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))
