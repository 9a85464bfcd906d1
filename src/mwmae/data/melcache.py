"""Decode and compute every clip's log-mel once, then crop and mask from memory.

Pretraining a small model on a corpus that fits in memory spends most of its time decoding,
resampling and computing log-mels, again for every clip at every step. `build_mel_cache`
computes the unnormalised (T, 80) log-mel of every clip of a source once (`MelCache`), keeps
them in one contiguous float32 array (cheap to share with forked DataLoader workers), and
`PretrainDataset(..., mel_cache=...)` serves them from there. The values are those of
`ClipSource.logmel`, so a run gives the same batches with or without the cache.

With a `directory`, each clip's log-mel is also stored there as `<key>.npy` and read back by
later runs (another model, another seed, a resumed run). The key is the SHA-256 of the clip's
file content, the clip's position in that file and the front-end settings, never the path: an
edited file or a changed front end is computed again, a moved corpus is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mwmae import features
from mwmae._io import atomic_save_npy, sha256_file
from mwmae._progress import progress_bar
from mwmae.data.clips import CLIP_ERRORS, ClipSource
from mwmae.errors import ConfigError

log = logging.getLogger(__name__)

# Everything the cached values depend on besides the clip's samples. Bump `version` when
# log_mel_spectrogram changes in a way these numbers do not show.
FRONT_END = {
    "version": 1,
    "sample_rate": features.SAMPLE_RATE,
    "n_fft": features.N_FFT,
    "win_length": features.WIN_LENGTH,
    "hop_length": features.HOP_LENGTH,
    "n_mels": features.N_MELS,
    "f_min": features.F_MIN,
    "f_max": features.F_MAX,
    "log_eps": features.LOG_EPS,
}


def clip_key(file_sha256: str, clip_suffix: str) -> str:
    """Cache key of one clip: its file's content digest, where in the file, the front end."""
    text = json.dumps({"file": file_sha256, "clip": clip_suffix, "front_end": FRONT_END})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_mel_cache(
    source: ClipSource,
    directory: str | Path | None = None,
    max_gb: float | None = None,
    progress: bool = False,
) -> MelCache:
    """Every clip's log-mel (`source.logmel`), computed once or read back from `directory`
    (keyed by file content, see `clip_key`), at most `max_gb` GiB; its `hits`/`misses` say how
    much was read back. Bad clips are recorded and raise from `get`, as they would without it."""

    digests = FileDigests()

    def key(index: int) -> str | None:
        path, position = source.origin(index)
        digest = digests(path)
        return clip_key(digest, position) if digest is not None else None

    with progress_bar(
        total=len(source), desc="log-mel cache", unit="clip", disable=not progress, leave=False
    ) as bar:
        return MelCache(
            len(source),
            source.logmel,
            CLIP_ERRORS,
            key=key,
            directory=directory,
            max_bytes=int(max_gb * 2**30) if max_gb else None,
            progress=bar.update,
        )


class MelCache:
    """Log-mels of clips 0..n-1, computed once by `compute(i)` (or read from `directory`).

    A clip whose computation raises one of `errors` is remembered as bad with its message;
    `get(i)` raises `features.AudioError` for it, so the dataset substitutes it as it would
    without the cache. `max_bytes` bounds the memory: going past it is a `ConfigError` that
    says how much was needed.
    """

    def __init__(
        self,
        size: int,
        compute: Callable[[int], torch.Tensor],
        errors: tuple[type[BaseException], ...],
        key: Callable[[int], str | None] | None = None,
        directory: str | Path | None = None,
        max_bytes: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None and key is None:
            raise ValueError("a cache directory needs a key function")
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0
        self.bad: dict[int, str] = {}
        arrays: list[np.ndarray] = []
        total = 0
        for i in range(size):
            array = self._load_or_compute(i, compute, errors, key)
            arrays.append(array)
            total += array.nbytes
            if max_bytes is not None and total > max_bytes:
                raise ConfigError(
                    f"data.cache=memory: the log-mels of the first {i + 1} of {size} clips "
                    f"already take {total / 2**30:.2f} GiB, more than data.cache_max_gb "
                    f"({max_bytes / 2**30:.2f} GiB); raise it or set data.cache=none"
                )
            if progress is not None:
                progress(1)
        lengths = np.asarray([a.shape[0] for a in arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        # One array, not a list of tensors: forked workers share it without touching
        # per-item reference counts (which would copy the pages).
        self.values = np.concatenate(arrays) if arrays else np.zeros((0, features.N_MELS))
        self.values = np.ascontiguousarray(self.values, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, index: int) -> torch.Tensor:
        """The (T, 80) log-mel of clip `index` (a view: do not modify it in place)."""
        if index in self.bad:
            raise features.AudioError(self.bad[index])
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return torch.from_numpy(self.values[start:stop])

    def _load_or_compute(
        self,
        index: int,
        compute: Callable[[int], torch.Tensor],
        errors: tuple[type[BaseException], ...],
        key: Callable[[int], str | None] | None,
    ) -> np.ndarray:
        name = key(index) if self.directory is not None and key is not None else None
        path = self.directory / f"{name}.npy" if self.directory is not None and name else None
        if path is not None and path.is_file():
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:  # a damaged entry is computed again
                log.warning("mel cache: %s is unreadable (%s); computing it again", path, exc)
            else:
                if array.ndim == 2 and array.shape[1] == features.N_MELS:
                    self.hits += 1
                    return np.asarray(array, dtype=np.float32)
                log.warning("mel cache: %s has shape %s; computing it again", path, array.shape)
        self.misses += 1
        try:
            array = compute(index).numpy().astype(np.float32, copy=False)
        except errors as exc:
            self.bad[index] = str(exc)
            return np.zeros((0, features.N_MELS), dtype=np.float32)
        if path is not None:
            atomic_save_npy(path, array)
        return array


class FileDigests:
    """SHA-256 of each distinct file, computed on first use (clips of one file share it);
    None for a file that cannot be read (its clips are not stored; the load reports it)."""

    def __init__(self) -> None:
        self._digests: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self._digests:
            try:
                self._digests[path] = sha256_file(path)
            except OSError:
                self._digests[path] = None
        return self._digests[path]
