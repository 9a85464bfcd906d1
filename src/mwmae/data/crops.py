"""Reading a pretraining crop without the rest of its clip.

A `CropSource` knows every clip's number of log-mel frames and the mean and population std of
its whole log-mel (computed in float64 when the clip was prepared), so a crop is read and
normalised alone, exactly as the reference normalises the whole clip before cropping:

- prepared shards (`crop_kind` "logmel") read the crop's frames of a stored float16 log-mel;
- audio shards with stored statistics (`crop_kind` "audio") read the samples of a window
  around the crop, whose log-mel (`crop_logmel`) is those frames of the whole clip's log-mel.

`CropReader` turns (epoch, index) items into a batch of raw crops and `crops_to_spec` turns raw
crops into the model's normalised input, on the CPU (in the loader) or on the training device.
Crop offsets (`crop_offset`) are the draws `PretrainDataset` has always made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mwmae import features
from mwmae._rng import torch_generator
from mwmae.data.clips import ClipSource, SubsetSource

_TAG_CROP = 0x5EED_0002  # keeps the crops' seed stream apart from the others
CONTEXT_FRAMES = 2  # frames computed before a crop and dropped (see `window_start`)


def crop_offset(frames: int, num_frames: int, seed: int, epoch: int, index: int) -> int:
    """The first frame of item `index`'s crop in `epoch`: uniform in [0, T - n) as in the
    reference (its exclusive bound never picks the last offset), drawn from a generator seeded
    by (seed, epoch, index); 0, without a draw, for a clip of at most n frames (padded)."""
    if frames <= num_frames:
        return 0
    gen = torch_generator(seed, _TAG_CROP, epoch, index)
    return int(torch.randint(0, frames - num_frames, (1,), generator=gen).item())


# ---- audio windows --------------------------------------------------------------------------
def window_samples(num_frames: int) -> int:
    """Samples of the audio window of a `num_frames` crop (32,360 for 200 frames)."""
    return (num_frames + CONTEXT_FRAMES - 1) * features.HOP_LENGTH + features.N_FFT // 2


def window_start(offset: int) -> int:
    """First sample of the window of the crop starting at frame `offset`.

    Frame t of a clip's centred STFT spans samples [t * hop - n_fft / 2, t * hop + n_fft / 2),
    the clip reflect-padded at both ends. The window's own centred STFT has its frame j centred
    on the clip's frame offset - 2 + j; from j = 2 on, no frame reaches the window's own
    padding, so frames [2, 2 + n) of the window are the crop's frames of the whole clip."""
    return (offset - CONTEXT_FRAMES) * features.HOP_LENGTH


def window_indices(n_samples: int, start: int, width: int) -> np.ndarray:
    """Clip sample of each window position [start, start + width): the clip's own reflect
    padding at both ends (as the centred STFT), clamped beyond it (positions no kept frame
    reads)."""
    pos = np.arange(start, start + width)
    pos = np.where(pos < 0, -pos, pos)
    pos = np.where(pos >= n_samples, 2 * (n_samples - 1) - pos, pos)
    return np.clip(pos, 0, n_samples - 1)


def crop_logmel(windows: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B, num_frames, 80) unnormalised log-mel of audio windows (B, `window_samples`)."""
    spec = features.clip_logmel(windows, checked=True)
    return spec[:, CONTEXT_FRAMES : CONTEXT_FRAMES + num_frames]


# ---- sources and batches --------------------------------------------------------------------
class CropSource(ClipSource):
    """A clip source that can read a crop alone: `frames`, `clip_mean`, `clip_std` hold every
    clip's log-mel frame count and whole-clip statistics; `read_crops` reads crops.

    `crop_kind` is "logmel" (crops are (n, 80) log-mel rows), "audio" (`window_samples(n)`
    samples around the crop) or "" (this source cannot, e.g. audio shards written before
    statistics were stored: the dataset reads whole clips); `crop_dtype` is what they hold."""

    crop_kind = ""
    crop_dtype = torch.float32
    frames: np.ndarray
    clip_mean: np.ndarray
    clip_std: np.ndarray

    def crop_shape(self, num_frames: int) -> tuple[int, ...]:
        """The shape of one crop."""
        if self.crop_kind == "audio":
            return (window_samples(num_frames),)
        return (num_frames, features.N_MELS)

    def read_crops(
        self, clips: np.ndarray, offsets: np.ndarray, num_frames: int, out: np.ndarray
    ) -> None:
        """Read the crops of `clips` starting at frames `offsets` into `out` (B, *crop_shape);
        raises for a bad clip."""
        raise NotImplementedError


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An empty tensor; with `shared`, inside a DataLoader worker, in shared memory (as the
    default collate allocates), so that the batch reaches the main process without a copy."""
    if not shared or torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    base = torch.empty(0, dtype=dtype)
    storage = base._typed_storage()._new_shared(math.prod(shape))
    return base.new(storage).view(shape)


class CropReader:
    """The raw crops of (epoch, index) items of a `CropSource` (or of a subset of one)."""

    def __init__(self, source: CropSource, num_frames: int, seed: int) -> None:
        self.source, self.num_frames, self.seed = source, num_frames, seed
        self.index_map: np.ndarray | None = None

    @classmethod
    def of(cls, source: ClipSource, num_frames: int, seed: int) -> CropReader | None:
        """A reader for `source` (a subset's indices mapped to its parent's), or None when
        the source cannot read crops alone."""
        parent = source.parent if isinstance(source, SubsetSource) else source
        if not isinstance(parent, CropSource) or not parent.crop_kind:
            return None
        reader = cls(parent, num_frames, seed)
        if parent is not source:
            reader.index_map = np.asarray(source.indices, dtype=np.int64)  # type: ignore[attr-defined]
        return reader

    def clips(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        return indices if self.index_map is None else self.index_map[indices]

    def stats(self, index: int) -> tuple[float, float]:
        """The stored mean and population std of item `index`'s whole clip."""
        clip = int(self.clips([index])[0])
        return float(self.source.clip_mean[clip]), float(self.source.clip_std[clip])

    def read(
        self, epochs: Sequence[int], indices: Sequence[int], shared: bool = False
    ) -> dict[str, torch.Tensor]:
        """Raw crops of the items: the source's crops under its `crop_kind`, and "clip" (B, 3)
        float64: each clip's valid frames in its crop (the rest is padding) and the mean and
        std of its whole log-mel. `shared`: the crops are the batch (`batch_tensor`)."""
        clips = self.clips(indices)
        frames = self.source.frames[clips]
        n = self.num_frames
        offsets = np.asarray(
            [
                crop_offset(int(t), n, self.seed, int(e), int(i))
                for t, e, i in zip(frames, epochs, indices, strict=True)
            ],
            dtype=np.int64,
        )
        shape = (len(clips), *self.source.crop_shape(n))
        crops = batch_tensor(shape, self.source.crop_dtype, shared)
        self.source.read_crops(clips, offsets, n, crops.numpy())
        clip = np.stack(
            [np.minimum(frames, n), self.source.clip_mean[clips], self.source.clip_std[clips]],
            axis=1,
        )
        return {self.source.crop_kind: crops, "clip": torch.from_numpy(clip.astype(np.float64))}


def crops_to_spec(
    crops: dict[str, torch.Tensor],
    num_frames: int,
    normalize: str,
    mean: float | None = None,
    std: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 1, n, 80) model input from raw crops (`CropReader.read`, on any device): the
    log-mel (computed here for audio windows), normalised as `features.normalize_clip` would
    normalise the whole clip ((x - mean) / (std + eps): each clip's statistics for "instance",
    `mean`/`std` for "dataset"), and the frames past a short clip's end set to what
    `features.pretrain_crop` pads with (0, or the clip's mean for "none"). `out`, (B, n, 80)
    float32, receives the result."""
    if "audio" in crops:
        spec = crop_logmel(crops["audio"], num_frames)
        spec = spec if out is None else out.copy_(spec)
    else:
        logmel = crops["logmel"]
        spec = logmel.to(torch.float32, copy=True) if out is None else out.copy_(logmel)
    clip = crops["clip"]  # kept on the CPU: reading the valid frames never waits for a device
    stats = clip.to(device=spec.device, dtype=spec.dtype, non_blocking=True)
    clip_mean = stats[:, 1, None, None]
    # in place on the batch's own tensor: the same arithmetic, no temporaries
    if normalize == "instance":
        spec.sub_(clip_mean).div_(stats[:, 2, None, None] + features.NORM_EPS)
    elif normalize == "dataset":
        spec.sub_(mean).div_(std + features.NORM_EPS)  # type: ignore[operator]
    valid = clip[:, 0].to(torch.int64).tolist()
    for row in (k for k, v in enumerate(valid) if v < num_frames):  # short clips: pad
        spec[row, valid[row] :] = clip_mean[row] if normalize == "none" else 0.0
    return spec[:, None]
