"""Raw audio of any length -> timestamp and scene embeddings, by the reference runtime's rules.

1. log-mel of the whole clip, normalised with ONE mean/std over the whole clip (unbiased std);
2. pad the frame axis at the end with pad = num_frames - (T % num_frames) frames (always >= 1),
   NumPy-style reflection (repeating for long pads), and cut it into num_frames units
   (`features.inference_units`);
3. encode each unit independently (`model.embed`), concatenate along time;
4. drop the last int(grid_t * pad / num_frames) steps: T' = ceil(T * grid_t / num_frames)
   (ceil(T / 4) for 4-frame patches);
5. timestamps i * duration_ms / T' from 0; the scene embedding is the mean over time.

The samples are validated once, on the way in; every log-mel below is computed by the front end
(`features.clip_logmel`) from those checked samples. Long audio is processed in bounded memory,
`chunk_seconds` at a time (a whole number of units), by the front end's long-clip path: a first
pass gathers the clip's mean/std chunk by chunk (`features.clip_stats`), a second computes each
chunk's log-mel from its slice of the audio (`features.logmel_frames`) and encodes it. The
result equals the whole-clip computation up to float rounding in the statistics; clips no longer
than one chunk take the whole-clip path unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from mwmae import features
from mwmae.models import MaskedAutoencoder

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEFAULT_CHUNK_SECONDS = features.CHUNK_SECONDS  # log-mel and encode 2 minutes at a time


class EmbeddingOptions(TypedDict, total=False):
    """How the embeddings are computed (every key optional; the defaults are `_iter_embeddings`'s):
    units per encoder batch, autocast dtype (None = float32), seconds of audio per chunk."""

    max_units_per_batch: int
    autocast_dtype: torch.dtype | None
    chunk_seconds: float


def _chunk_frames(model: MaskedAutoencoder, chunk_seconds: float) -> int:
    """Frames per chunk: a whole number (>= 1) of model units."""
    unit = model.config.num_frames
    frames = chunk_seconds * features.SAMPLE_RATE / features.HOP_LENGTH
    return unit * max(1, int(frames // unit))


def _encode_units(
    model: MaskedAutoencoder,
    units: torch.Tensor,
    max_units_per_batch: int,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """(n, k, unit, F) -> (n, k * grid_t, D): each unit encoded independently."""
    n, k, unit, F = units.shape
    flat = units.reshape(n * k, 1, unit, F)
    device = flat.device
    outputs = []
    for start in range(0, flat.shape[0], max_units_per_batch):
        batch = flat[start : start + max_units_per_batch]
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                outputs.append(model.embed(batch).float())
        else:
            outputs.append(model.embed(batch))
    return torch.cat(outputs).reshape(n, k * model.grid_size[0], -1)


def _iter_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor,
    max_units_per_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> Iterator[torch.Tensor]:
    """Consecutive pieces (n, steps, D) of the timestamp embeddings of validated 16 kHz audio
    (n, samples) on the model's device; their concatenation along time is the whole result."""
    unit, grid_t = model.config.num_frames, model.grid_size[0]
    T = features.num_frames_for(audio.shape[-1])
    drop = int(grid_t * (unit - T % unit) / unit)  # the steps of the end padding
    chunk = _chunk_frames(model, chunk_seconds)
    options = (max_units_per_batch, autocast_dtype)
    if T <= chunk:  # one chunk: the whole-clip computation
        spec = features.clip_logmel(audio, "instance_unbiased", checked=True)
        emb = _encode_units(model, features.inference_units(spec, unit), *options)
        yield emb[:, : emb.shape[1] - drop]
        return
    mean, std = features.clip_stats(audio, chunk)
    for f0 in range(0, T, chunk):
        if f0 + chunk < T:
            frames = features.logmel_frames(audio, f0, f0 + chunk)
            spec = features.normalize_with_stats(frames, mean, std)
            yield _encode_units(model, spec.unflatten(1, (-1, unit)), *options)
            continue
        # The last chunk: its end padding reflects the clip's last frames, so give it one unit
        # of context before it (a whole unit: the units stay aligned), encoded and dropped.
        frames = features.logmel_frames(audio, f0 - unit, T)
        spec = features.normalize_with_stats(frames, mean, std)
        emb = _encode_units(model, features.inference_units(spec, unit)[:, 1:], *options)
        yield emb[:, : emb.shape[1] - drop]


def _embedding_pieces(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    options: EmbeddingOptions,
) -> tuple[torch.Tensor, Iterator[torch.Tensor]]:
    """Audio (n, samples) or (samples,) validated, resampled to 16 kHz and moved to the model's
    device, and the pieces of its timestamp embeddings."""
    features.check_waveform(audio, "audio", ndim=(1, 2), min_samples=features.MIN_SAMPLES)
    audio = torch.from_numpy(audio) if isinstance(audio, np.ndarray) else audio
    audio = audio[None] if audio.ndim == 1 else audio
    if sample_rate != features.SAMPLE_RATE:
        audio = torch.from_numpy(
            features.resample(audio.cpu().numpy().T, sample_rate, features.SAMPLE_RATE).T.copy()
        )
    audio = audio.to(device=next(model.parameters()).device, dtype=torch.float32)
    return audio, _iter_embeddings(model, audio, **options)


@torch.no_grad()
def timestamp_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    **options: Unpack[EmbeddingOptions],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (n, T', grid_f * D) and timestamps (n, T') in ms for audio (n, samples).

    Memory stays bounded for long audio: the log-mel is computed `chunk_seconds` at a time and
    at most `max_units_per_batch` units of `model.config.num_frames` frames go through the
    encoder at once (the result itself grows with the duration); see `EmbeddingOptions`.
    """
    audio, pieces = _embedding_pieces(model, audio, sample_rate, options)
    emb = torch.cat(list(pieces), dim=1)
    steps = emb.shape[1]
    duration_ms = audio.shape[-1] / features.SAMPLE_RATE * 1000.0
    # float64 steps so long clips keep sub-millisecond regular spacing before the cast
    timestamps = torch.arange(steps, dtype=torch.float64) * (duration_ms / steps)
    n = audio.shape[0]
    return emb, timestamps.to(device=audio.device, dtype=torch.float32).expand(n, -1).contiguous()


@torch.no_grad()
def scene_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    **options: Unpack[EmbeddingOptions],
) -> torch.Tensor:
    """(n, grid_f * D): the mean over time of `timestamp_embeddings`, accumulated chunk by
    chunk so that the timestamp embeddings of a long clip are never held at once."""
    _, pieces = _embedding_pieces(model, audio, sample_rate, options)
    first = next(pieces)
    second = next(pieces, None)
    if second is None:
        return first.mean(dim=1)  # one chunk: exactly the whole-clip mean
    total, steps = torch.zeros((), dtype=torch.float64, device=first.device), 0
    for piece in itertools.chain((first, second), pieces):  # several chunks: float64 sums
        total = total + piece.double().sum(dim=1)
        steps += piece.shape[1]
    return (total / steps).float()
