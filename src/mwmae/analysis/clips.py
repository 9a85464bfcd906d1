"""Audio clips for analysis: pick files (`mwmae.data.find_audio_files` finds them in a folder or
HEAR task) and turn them into model input as pretraining sees it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mwmae import features
from mwmae.data.files import find_audio_files

logger = logging.getLogger(__name__)

__all__ = ["SpecClips", "find_audio_files", "load_spec_clips", "select_evenly"]


def select_evenly(files: list[Path], num: int) -> list[Path]:
    """At most `num` files spread evenly over the sorted list (so every split and class folder
    of a task is likely represented), deterministic."""
    if num < 1:
        raise ValueError(f"number of clips must be >= 1, got {num}")
    if len(files) <= num:
        return list(files)
    idx = np.unique(np.linspace(0, len(files) - 1, num).round().astype(int))
    return [files[i] for i in idx]


@dataclass(frozen=True)
class SpecClips:
    """A batch of model input made from audio files.

    spec: (n, 1, num_frames, 80) normalised log-mel. paths: the n files loaded, in order.
    skipped: [(path, reason)] of files that could not be used. valid_frames: per clip, the
    frames of real audio; the rest, up to num_frames, is padding (clips shorter than
    num_frames).
    """

    spec: torch.Tensor
    paths: list[Path]
    skipped: list[tuple[Path, str]]
    valid_frames: list[int]


def load_spec_clips(
    paths: list[Path],
    num_frames: int,
    seed: int = 0,
    on_clip: Callable[[], None] | None = None,
) -> SpecClips:
    """Normalised log-mel crops as pretraining sees them: per-clip normalisation over the whole
    clip, then a random crop (seeded) or padding at the end (counted in `valid_frames`).

    Files that cannot be used (undecodable, empty, NaN/Inf, too short for one log-mel frame)
    are skipped, as pretraining skips them: each logged and listed in `skipped` with the reason,
    which names the file. `on_clip` is called after each file (for progress bars). Raises
    ValueError when no file could be loaded.
    """
    generator = torch.Generator().manual_seed(seed)
    specs, loaded, skipped, valid = [], [], [], []
    for p in paths:
        try:
            spec = features.clip_logmel(p, "instance")
        except features.AudioError as exc:
            logger.info("skipping %s: %s", p, exc)
            skipped.append((p, str(exc)))
        else:
            specs.append(features.pretrain_crop(spec, num_frames, generator=generator))
            valid.append(min(int(spec.shape[0]), num_frames))
            loaded.append(p)
        if on_clip is not None:
            on_clip()
    if not specs:
        raise ValueError(f"none of the {len(paths)} audio files could be loaded")
    return SpecClips(torch.stack(specs)[:, None], loaded, skipped, valid)
