"""The pretraining dataset: clips -> normalised, randomly cropped log-mel spectrograms.

Deterministic under a seed and independent of the number of DataLoader workers or ranks: the
random 200-frame crop of a clip comes from a generator seeded by (seed, epoch, index). A bad clip
(undecodable, empty, NaN/Inf, too short for one STFT frame) is replaced by the next index
(i + 1, i + 2, ...), and its name travels with the batch so that the training loop can count and
log it. The dataset also counts, per process, the distinct bad files (`bad_files`) apart from
the substitutions made for them (`substitutions`): a bad file drawn ten times is one bad file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwmae import features
from mwmae._rng import torch_generator
from mwmae.data.clips import ClipSource
from mwmae.data.melcache import FileDigests, MelCache, clip_key
from mwmae.errors import ConfigError, InputError

log = logging.getLogger(__name__)

_TAG_CROP = 0x5EED_0002  # keeps the crops' seed stream apart from the others
_CLIP_ERRORS = (features.AudioError, ValueError, OSError, RuntimeError)


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
            raise ConfigError(f"normalize must be instance, dataset or none, got {normalize!r}")
        if normalize == "dataset" and (mean is None or std is None):
            raise ConfigError("normalize='dataset' needs mean and std (see compute_dataset_stats)")
        self.source = source
        self.num_frames = num_frames
        self.seed = seed
        self.normalize = normalize
        self.mean, self.std = mean, std
        self.max_substitutes = max_substitutes
        self.mel_cache: MelCache | None = None  # see `attach_mel_cache`
        self._bad: set[int] = set()  # per process; only saves decoding bad clips again
        self.bad_files: set[str] = set()  # distinct files with a bad clip (this process)
        self.substitutions = 0  # bad clips replaced by a later index (this process)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of audio-named entries the listing found unusable (never items)."""
        return list(self.source.skipped)

    def __len__(self) -> int:
        return len(self.source)

    def clip_logmel(self, index: int) -> torch.Tensor:
        """Unnormalised log-mel (T, 80) of one clip; raises for a bad clip."""
        if self.mel_cache is not None:
            return self.mel_cache.get(index)
        return self.compute_logmel(index)

    def compute_logmel(self, index: int) -> torch.Tensor:
        """`clip_logmel` without the cache: decode the clip and compute its log-mel."""
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
            if i not in self._bad:
                try:
                    spec = self.clip_spec(i)
                except _CLIP_ERRORS as exc:
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


def attach_mel_cache(
    dataset: PretrainDataset,
    directory: str | Path | None = None,
    max_gb: float | None = None,
    progress: bool = False,
) -> MelCache:
    """Compute every clip's log-mel once (or read it from `directory`) and serve it from memory
    from now on; returns the cache (its `hits`/`misses` say how much was read back)."""
    from tqdm.auto import tqdm

    source, digests = dataset.source, FileDigests()

    def key(index: int) -> str | None:
        path, position = source.origin(index)
        digest = digests(path)
        return clip_key(digest, position) if digest is not None else None

    with tqdm(
        total=len(source), desc="log-mel cache", unit="clip", disable=not progress, leave=False
    ) as bar:
        cache = MelCache(
            len(source),
            dataset.compute_logmel,
            _CLIP_ERRORS,
            key=key,
            directory=directory,
            max_bytes=int(max_gb * 2**30) if max_gb else None,
            progress=bar.update,
        )
    # Bad clips raise from the cache when drawn, so they are counted as without it.
    dataset.mel_cache = cache
    return cache


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
        raise InputError("no good clips to compute dataset statistics from")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))
