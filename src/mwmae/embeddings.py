"""Raw audio of any length -> timestamp and scene embeddings, by the reference runtime's rules.

1. log-mel of the whole clip, normalised with ONE mean/std over the whole clip (unbiased std);
2. pad the frame axis at the end with pad = num_frames - (T % num_frames) frames (always >= 1),
   NumPy-style reflection (repeating for long pads);
3. encode each num_frames unit independently (`model.embed`), concatenate along time;
4. drop the last int(grid_t * pad / num_frames) steps: T' = ceil(T * grid_t / num_frames)
   (ceil(T / 4) for 4-frame patches);
5. timestamps i * duration_ms / T' from 0; the scene embedding is the mean over time.
"""

from __future__ import annotations

import numpy as np
import torch

from mwmae import features
from mwmae.models import MaskedAutoencoder


def _as_batch(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(n_sounds, n_samples) tensor from a 1-D or 2-D tensor/array, validated."""
    features.check_waveform(audio, "audio", ndim=(1, 2), min_samples=features.MIN_SAMPLES)
    audio = torch.from_numpy(audio) if isinstance(audio, np.ndarray) else audio
    return audio[None] if audio.ndim == 1 else audio


@torch.no_grad()
def timestamp_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    max_units_per_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (n, T', grid_f * D) and timestamps (n, T') in ms for 16 kHz audio (n, samples).

    Memory stays bounded for long audio: at most `max_units_per_batch` units of
    `model.config.num_frames` frames go through the encoder at once.
    """
    audio = _as_batch(audio)
    if sample_rate != features.SAMPLE_RATE:
        audio = torch.from_numpy(
            features.resample(audio.cpu().numpy().T, sample_rate, features.SAMPLE_RATE).T.copy()
        )
    device = next(model.parameters()).device
    audio = audio.to(device=device, dtype=torch.float32)
    n, n_samples = audio.shape
    unit = model.config.num_frames
    grid_t = model.grid_size[0]

    spec = features.log_mel_spectrogram(audio)  # (n, T, F)
    spec = features.normalize_per_instance(spec, unbiased=True)
    T = spec.shape[1]
    pad = unit - T % unit
    spec = features.reflect_pad_time(spec, pad)  # (n, T + pad, F)
    n_units = spec.shape[1] // unit
    units = spec.reshape(n * n_units, 1, unit, spec.shape[-1])

    outputs = []
    for start in range(0, units.shape[0], max_units_per_batch):
        batch = units[start : start + max_units_per_batch]
        if autocast_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                outputs.append(model.embed(batch).float())
        else:
            outputs.append(model.embed(batch))
    emb = torch.cat(outputs).reshape(n, n_units * grid_t, -1)
    drop = int(grid_t * pad / unit)
    if drop:
        emb = emb[:, :-drop]
    steps = emb.shape[1]
    duration_ms = n_samples / features.SAMPLE_RATE * 1000.0
    # float64 steps so long clips keep sub-millisecond regular spacing before the cast
    timestamps = torch.arange(steps, dtype=torch.float64) * (duration_ms / steps)
    return emb, timestamps.to(device=device, dtype=torch.float32).expand(n, -1).contiguous()


@torch.no_grad()
def scene_embeddings(
    model: MaskedAutoencoder,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int = features.SAMPLE_RATE,
    **kwargs,
) -> torch.Tensor:
    """(n, grid_f * D): the mean over time of `timestamp_embeddings`."""
    emb, _ = timestamp_embeddings(model, audio, sample_rate, **kwargs)
    return emb.mean(dim=1)
