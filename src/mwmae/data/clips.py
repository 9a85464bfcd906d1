"""The clip-source interface every pretraining data source implements."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ClipSource:
    """A list of clips. `load(i)` returns ("audio", (n,) float32 16 kHz) or ("logmel", (T, 80))
    and raises `features.AudioError` (or ValueError/OSError) for a bad clip.

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

    def origin(self, index: int) -> tuple[str, str]:
        """(file whose bytes hold the clip, where in that file): what a content-keyed cache
        hashes. The default: `file(i)` and the rest of `name(i)` (a `#t=` fragment or "")."""
        file, name = self.file(index), self.name(index)
        return file, name[len(file) :] if name.startswith(file) else name

    def subset(self, indices: Sequence[int]) -> ClipSource:
        return SubsetSource(self, list(indices))


class SubsetSource(ClipSource):
    def __init__(self, parent: ClipSource, indices: list[int]) -> None:
        self.parent, self.indices = parent, indices
        self.skipped = parent.skipped

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return self.parent.name(self.indices[index])

    def file(self, index: int) -> str:
        return self.parent.file(self.indices[index])

    def load(self, index: int) -> tuple[str, np.ndarray]:
        return self.parent.load(self.indices[index])

    def origin(self, index: int) -> tuple[str, str]:
        return self.parent.origin(self.indices[index])
