"""Raw audio of any length -> timestamp and scene embeddings, by the reference runtime's rules.

1. log-mel of the whole clip, normalised with ONE mean/std over the whole clip (unbiased std);
2. pad the frame axis at the end with pad = num_frames - (T % num_frames) frames (always >= 1),
   NumPy-style reflection (repeating for long pads);
3. encode each num_frames unit independently (`model.embed`), concatenate along time;
4. drop the last int(grid_t * pad / num_frames) steps: T' = ceil(T * grid_t / num_frames)
   (ceil(T / 4) for 4-frame patches);
5. timestamps i * duration_ms / T' from 0; the scene embedding is the mean over time.

Long audio is processed in bounded memory, `chunk_seconds` at a time (a whole number of units):
a first pass gathers the clip's mean/std chunk by chunk, a second computes each chunk's log-mel
from its slice of the audio (with the two hops of context the centred STFT frames need) and
encodes it. The result equals the whole-clip computation up to float rounding in the
statistics; clips no longer than one chunk take the whole-clip path unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mwmae import features
from mwmae.models import MaskedAutoencoder


def _as_batch(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(n_sounds, n_samples) tensor from a 1-D or 2-D tensor/array, validated."""
    features.check_waveform(audio, "audio", ndim=(1, 2), min_samples=features.MIN_SAMPLES)
    audio = torch.from_numpy(audio) if isinstance(audio, np.ndarray) else audio
    return audio[None] if audio.ndim == 1 else audio


DEFAULT_CHUNK_SECONDS = 120.0  # log-mel and encode two minutes of audio at a time


def _chunk_frames(model: MaskedAutoencoder, chunk_seconds: float) -> int:
    """Frames per chunk: a whole number (>= 1) of model units."""
    unit = model.config.num_frames
    frames = chunk_seconds * features.SAMPLE_RATE / features.HOP_LENGTH
    return unit * max(1, int(frames // unit))


def _logmel_frames(audio: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
    """Frames [f0, f1) of the whole clip's log-mel, (n, f1 - f0, F), from a slice of the audio.

    Frame t is centred on sample t * hop and spans n_fft // 2 samples either side; a slice from
    (f0 - 2) * hop keeps every needed frame clear of the slice's own reflect padding, except at
    the clip's ends, where the slice's padding is the clip's."""
    hop, half = features.HOP_LENGTH, features.N_FFT // 2
    start = max(0, f0 - 2) * hop
    stop = min(audio.shape[-1], f1 * hop + half)
    spec = features.log_mel_spectrogram(audio[:, start:stop])
    offset = start // hop
    return spec[:, f0 - offset : f1 - offset]


def _clip_stats(audio: torch.Tensor, T: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip log-mel mean and unbiased std, (n, 1, 1) each, merged chunk by chunk in float64
    (Chan et al.'s pairwise update, no cancellation from sums of squares)."""
    count, mean, m2 = 0, None, None
    for f0 in range(0, T, chunk):
        x = _logmel_frames(audio, f0, min(T, f0 + chunk)).double()
        k = x.shape[1] * x.shape[2]
        mean_b = x.mean(dim=(1, 2))
        m2_b = (x - mean_b[:, None, None]).square().sum(dim=(1, 2))
        if mean is None:
            count, mean, m2 = k, mean_b, m2_b
            continue
        delta = mean_b - mean
        total = count + k
        mean = mean + delta * (k / total)
        m2 = m2 + m2_b + delta.square() * (count * k / total)
        count = total
    std = (m2 / (count - 1)).sqrt()
    return mean.float()[:, None, None], std.float()[:, None, None]


def _encode_units(
    model: MaskedAutoencoder,
    spec: torch.Tensor,
    max_units_per_batch: int,
    autocast_dtype: torch.dtype | None,
) -> torch.Tensor:
    """(n, k * unit, F) -> (n, k * grid_t, D): each unit encoded independently."""
    n, frames, F = spec.shape
    unit = model.config.num_frames
    units = spec.reshape(n * (frames // unit), 1, unit, F)
    device = units.device
    outputs = []
    for start in range(0, units.shape[0], max_units_per_batch):
        batch = units[start : start + max_units_per_batch]
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                outputs.append(model.embed(batch).float())
        else:
            outputs.append(model.embed(batch))
    return torch.cat(outputs).reshape(n, (frames // unit) * model.grid_size[0], -1)


def iter_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor,
    max_units_per_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> Iterator[torch.Tensor]:
    """Consecutive pieces (n, steps, D) of the timestamp embeddings of 16 kHz audio (n, samples)
    on the model's device; their concatenation along time is the whole result."""
    unit, grid_t = model.config.num_frames, model.grid_size[0]
    T = features.num_frames_for(audio.shape[-1])
    pad = unit - T % unit
    drop = int(grid_t * pad / unit)
    chunk = _chunk_frames(model, chunk_seconds)
    if T <= chunk:  # one chunk: the whole-clip computation
        spec = features.normalize_per_instance(features.log_mel_spectrogram(audio), unbiased=True)
        emb = _encode_units(
            model, features.reflect_pad_time(spec, pad), max_units_per_batch, autocast_dtype
        )
        yield emb[:, : emb.shape[1] - drop]
        return
    mean, std = _clip_stats(audio, T, chunk)
    for f0 in range(0, T, chunk):
        f1 = min(T, f0 + chunk)
        # The end padding reflects the last pad + 1 frames: give the last chunk that context.
        context = min(f0, unit + 1) if f1 == T else 0
        spec = (_logmel_frames(audio, f0 - context, f1) - mean) / (std + features.NORM_EPS)
        if f1 == T:
            spec = features.reflect_pad_time(spec, pad)[:, context:]
        emb = _encode_units(model, spec, max_units_per_batch, autocast_dtype)
        yield emb[:, : emb.shape[1] - drop] if f1 == T else emb


def _prepared(model: MaskedAutoencoder, audio: torch.Tensor | np.ndarray, sample_rate: int):
    audio = _as_batch(audio)
    if sample_rate != features.SAMPLE_RATE:
        audio = torch.from_numpy(
            features.resample(audio.cpu().numpy().T, sample_rate, features.SAMPLE_RATE).T.copy()
        )
    device = next(model.parameters()).device
    return audio.to(device=device, dtype=torch.float32), device


@torch.no_grad()
def timestamp_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    max_units_per_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (n, T', grid_f * D) and timestamps (n, T') in ms for 16 kHz audio (n, samples).

    Memory stays bounded for long audio: the log-mel is computed `chunk_seconds` at a time and
    at most `max_units_per_batch` units of `model.config.num_frames` frames go through the
    encoder at once (the result itself grows with the duration).
    """
    audio, device = _prepared(model, audio, sample_rate)
    pieces = iter_embeddings(model, audio, max_units_per_batch, autocast_dtype, chunk_seconds)
    emb = torch.cat(list(pieces), dim=1)
    steps = emb.shape[1]
    duration_ms = audio.shape[-1] / features.SAMPLE_RATE * 1000.0
    # float64 steps so long clips keep sub-millisecond regular spacing before the cast
    timestamps = torch.arange(steps, dtype=torch.float64) * (duration_ms / steps)
    n = audio.shape[0]
    return emb, timestamps.to(device=device, dtype=torch.float32).expand(n, -1).contiguous()


@torch.no_grad()
def scene_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    max_units_per_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> torch.Tensor:
    """(n, grid_f * D): the mean over time of `timestamp_embeddings`, accumulated chunk by
    chunk so that the timestamp embeddings of a long clip are never held at once."""
    audio, _ = _prepared(model, audio, sample_rate)
    pieces = iter_embeddings(model, audio, max_units_per_batch, autocast_dtype, chunk_seconds)
    if features.num_frames_for(audio.shape[-1]) <= _chunk_frames(model, chunk_seconds):
        return next(pieces).mean(dim=1)  # one chunk: exactly the whole-clip mean
    total, steps = None, 0
    for piece in pieces:
        part = piece.double().sum(dim=1)
        total = part if total is None else total + part
        steps += piece.shape[1]
    return (total / steps).float()
