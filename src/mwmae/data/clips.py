"""The clip-source interface every pretraining data source implements."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mwmae import features

# What loading or computing a bad clip raises (the dataset substitutes it, the cache records it).
CLIP_ERRORS = (features.AudioError, ValueError, OSError, RuntimeError)


class ClipSource:
    """A list of clips. `load(i)` returns ("audio", (n,) float32 16 kHz, validated by
    `features.check_waveform`) or ("logmel", (T, 80)) and raises `features.AudioError` (or
    ValueError/OSError) for a bad clip; `logmel(i)` is the clip's log-mel.

    `name(i)` names the clip, `file(i)` the file it comes from (the same for a whole-file clip;
    one file for every clip cut from a long file), so that bad files can be counted once.
    `skipped` lists (path, reason) for files the listing found but could not use.
    """

    skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def file(self, index: int) -> str:
        return self.name(index)

    def load(self, index: int) -> tuple[str, np.ndarray]:
        raise NotImplementedError

    def logmel(self, index: int) -> torch.Tensor:
        """The unnormalised (T, 80) log-mel of clip `index`: a stored log-mel as it is, audio
        (validated by `load`) through `features.clip_logmel`. Raises for a bad clip."""
        kind, array = self.load(index)
        if kind == "logmel":
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return features.clip_logmel(array, name=self.name(index), checked=True)

    def origin(self, index: int) -> tuple[str, str]:
        """(file whose bytes hold the clip, where in that file): what a content-keyed cache
        hashes. The default: `file(i)` and the rest of `name(i)` (a `#t=` fragment or "")."""
        file, name = self.file(index), self.name(index)
        return file, name[len(file) :] if name.startswith(file) else name

    def subset(self, indices: Sequence[int] | np.ndarray) -> ClipSource:
        return SubsetSource(self, indices)


class SubsetSource(ClipSource):
    """Clips `indices` of `parent`, held as one int64 array (no per-clip Python objects)."""

    def __init__(self, parent: ClipSource, indices: Sequence[int] | np.ndarray) -> None:
        self.parent, self.indices = parent, np.asarray(indices, dtype=np.int64).reshape(-1)
        self.skipped = parent.skipped

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.parent.name(int(self.indices[index]))

    def file(self, index: int) -> str:
        return self.parent.file(int(self.indices[index]))

    def load(self, index: int) -> tuple[str, np.ndarray]:
        return self.parent.load(int(self.indices[index]))

    def origin(self, index: int) -> tuple[str, str]:
        return self.parent.origin(int(self.indices[index]))
