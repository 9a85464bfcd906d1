"""Audio front end: loading, resampling, log-mel spectrograms, per-clip normalisation, crops.

Matches the MW-MAE reference (torchaudio ``MelSpectrogram`` defaults with n_fft=400, hop=160,
80 HTK mel bins over 50-8000 Hz, power 2, then ``log(x + float32 eps)``), computed in plain torch
so it runs batched on CPU or GPU without torchaudio.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mwmae.errors import InputError

SAMPLE_RATE = 16000
N_FFT = 400
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 80
F_MIN = 50.0
F_MAX = 8000.0
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, as the reference
NUM_FRAMES = 200  # 2 s model input
NORM_EPS = 1e-8
MIN_SAMPLES = N_FFT // 2 + 1  # the centred STFT reflect-pads by N_FFT // 2


class AudioError(InputError):
    """Audio that cannot be used: unreadable, empty or non-finite. The message names the file
    or the argument."""


class AudioTypeError(AudioError, TypeError):
    """Audio of the wrong type or dtype (also a TypeError, as callers have long caught)."""


# --------------------------------------------------------------------------------------------
# Loading and resampling
# --------------------------------------------------------------------------------------------
def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono (n,) or multi-channel (n, c) float array with soxr (high quality)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(wave, dtype=np.float32), orig_sr, target_sr).astype(np.float32)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: (n,) stays, (n, channels) -> (n,)."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"audio must be (n,) or (n, channels), got shape {wave.shape}")
    return wave.mean(axis=1)


def check_waveform(
    wave: Any,
    name: str = "audio",
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | np.dtype | None = None,
    min_samples: int = 1,
    tensor_only: bool = False,
) -> None:
    """THE audio validator of every entry point (files, datasets, embeddings, HEAR).

    Raises `AudioError` (an `mwmae.errors.InputError`) naming `name` and the problem: not an
    array (or not a torch.Tensor with `tensor_only`), a non-float dtype (or not `dtype`), a
    number of dimensions not in `ndim`, fewer than `min_samples` samples or no sounds, NaN/Inf.
    """
    kinds = (torch.Tensor,) if tensor_only else (torch.Tensor, np.ndarray)
    if not isinstance(wave, kinds):
        expected = "a torch.Tensor" if tensor_only else "a torch.Tensor or numpy array"
        raise AudioTypeError(f"{name}: expected {expected}, got {type(wave).__name__}")
    is_tensor = isinstance(wave, torch.Tensor)
    floating = (
        torch.is_floating_point(wave) if is_tensor else np.issubdtype(wave.dtype, np.floating)
    )
    if dtype is not None and wave.dtype != dtype:
        raise AudioTypeError(f"{name}: expected dtype {dtype}, got {wave.dtype}")
    if not floating:
        raise AudioTypeError(
            f"{name}: expected floating-point samples in [-1, 1], got {wave.dtype}"
        )
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and wave.ndim not in allowed:
        layout = "(n_sounds, n_samples)" if 2 in allowed else "(n_samples,)"
        raise AudioError(
            f"{name}: expected {' or '.join(f'{d}-D' for d in allowed)} audio {layout}, "
            f"got shape {tuple(wave.shape)}"
        )
    n = int(wave.shape[-1]) if wave.ndim else 0
    if n == 0 or 0 in tuple(wave.shape):
        raise AudioError(f"{name}: audio is empty (shape {tuple(wave.shape)})")
    if n < min_samples:
        raise AudioError(
            f"{name}: audio too short: {n} samples; need at least {min_samples} "
            f"({1000 * min_samples / SAMPLE_RATE:.1f} ms at {SAMPLE_RATE} Hz)"
        )
    if not _all_finite(wave):
        raise AudioError(f"{name}: audio contains NaN or Inf values")


_FINITE_BLOCK = 1 << 18  # samples per block: the check's temporaries stay ~MBs for hours of audio


def _all_finite(wave: torch.Tensor | np.ndarray) -> bool:
    """isfinite over views of the last axis, block by block (bounded extra memory)."""
    isfinite = torch.isfinite if isinstance(wave, torch.Tensor) else np.isfinite
    n = int(wave.shape[-1])
    return all(
        bool(isfinite(wave[..., i : i + _FINITE_BLOCK]).all()) for i in range(0, n, _FINITE_BLOCK)
    )


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at `sample_rate` (resampled if needed).

    Integer PCM is scaled to [-1, 1] by soundfile; stereo is averaged. Raises `AudioError`
    naming the file if it is missing, cannot be decoded, is empty or holds NaN/Inf.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        wave, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for undecodable input
        raise AudioError(f"{path}: could not decode audio ({exc})") from exc
    wave = to_mono(wave)
    check_waveform(wave, str(path))
    wave = resample(wave, int(file_sr), sample_rate)
    check_waveform(wave, str(path))
    return np.ascontiguousarray(wave, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Log-mel
# --------------------------------------------------------------------------------------------
def hz_to_mel_htk(freq: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def _mel_filterbank_np(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> np.ndarray:
    # Triangular filters between consecutive HTK-mel-spaced corner frequencies, evaluated on the
    # linear FFT-bin frequencies, no area normalisation (torchaudio norm=None).
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    corners = mel_to_hz_htk(np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2))
    widths = np.diff(corners)
    offsets = corners[None, :] - fft_freqs[:, None]  # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling))  # (n_freqs, n_mels)


def mel_filterbank(
    n_freqs: int = N_FFT // 2 + 1,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """HTK mel filterbank, (n_freqs, n_mels) float32, as torchaudio's `melscale_fbanks`."""
    fb = _mel_filterbank_np(n_freqs, float(f_min), float(f_max), n_mels, sample_rate)
    return torch.from_numpy(fb.astype(np.float32))


_WINDOWS: dict[tuple[str, torch.dtype], torch.Tensor] = {}
_FILTERBANKS: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def _cached(store: dict, device: torch.device, dtype: torch.dtype, make) -> torch.Tensor:
    key = (str(device), dtype)
    if key not in store:
        store[key] = make().to(device=device, dtype=dtype)
    return store[key]


def log_mel_spectrogram(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Log-mel spectrogram of 16 kHz audio.

    wave: (..., n_samples) float tensor or array (n_samples > 200).
    Returns (..., T, 80) float32 with T = n_samples // 160 + 1 (centred, reflect-padded frames).
    """
    check_waveform(wave, "audio", min_samples=MIN_SAMPLES)
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    n_samples = wave.shape[-1]
    wave = wave.to(torch.float32)
    lead_shape = wave.shape[:-1]
    flat = wave.reshape(-1, n_samples)
    window = _cached(
        _WINDOWS, flat.device, flat.dtype, lambda: torch.hann_window(WIN_LENGTH, periodic=True)
    )
    stft = torch.stft(
        flat,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=WIN_LENGTH,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B, 201, T)
    power = stft.real.square() + stft.imag.square()
    fb = _cached(_FILTERBANKS, flat.device, flat.dtype, mel_filterbank)
    mel = torch.matmul(power.transpose(1, 2), fb)  # (B, T, 80)
    logmel = torch.log(mel + LOG_EPS)
    return logmel.reshape(*lead_shape, logmel.shape[-2], N_MELS)


def num_frames_for(n_samples: int) -> int:
    """Number of log-mel frames for `n_samples` of audio."""
    return n_samples // HOP_LENGTH + 1


# --------------------------------------------------------------------------------------------
# Normalisation, crops, padding
# --------------------------------------------------------------------------------------------
def normalize_per_instance(
    spec: torch.Tensor, unbiased: bool = False, eps: float = NORM_EPS
) -> torch.Tensor:
    """(x - mean) / (std + eps) with one scalar mean/std per clip over its last two axes (T, F).

    The reference uses the population std (ddof=0) at pretraining and torch's unbiased std at
    embedding extraction; `unbiased` picks which.
    """
    if spec.ndim < 2:
        raise ValueError(f"expected (..., T, F) spectrogram, got shape {tuple(spec.shape)}")
    mean = spec.mean(dim=(-2, -1), keepdim=True)
    std = spec.std(dim=(-2, -1), keepdim=True, correction=1 if unbiased else 0)
    return (spec - mean) / (std + eps)


def normalize_with_stats(spec: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalise with dataset-level statistics instead of per-clip ones."""
    return (spec - mean) / (std + NORM_EPS)


def crop_or_pad(
    spec: torch.Tensor,
    num_frames: int = NUM_FRAMES,
    generator: torch.Generator | None = None,
    offset: int | None = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Random `num_frames` crop along time of a (T, F) spectrogram; shorter clips are padded.

    The offset is uniform in [0, T - num_frames) as in the reference (its exclusive upper bound
    never picks the last offset). Short clips, which crash the reference, are padded at the end
    with `pad_value` (0 = the clip mean after per-clip normalisation).
    """
    if spec.ndim != 2:
        raise ValueError(f"crop_or_pad expects (T, F), got shape {tuple(spec.shape)}")
    total = spec.shape[0]
    if total < num_frames:
        pad = spec.new_full((num_frames - total, spec.shape[1]), pad_value)
        return torch.cat([spec, pad], dim=0)
    if total == num_frames:
        return spec
    if offset is None:
        offset = int(torch.randint(0, total - num_frames, (1,), generator=generator).item())
    if not 0 <= offset <= total - num_frames:
        raise ValueError(f"crop offset {offset} out of range for {total} frames")
    return spec[offset : offset + num_frames]


def center_crop_or_pad(spec: torch.Tensor, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """Centre crop (offset T//2 - num_frames//2, as the reference's validation crop) or pad."""
    total = spec.shape[0]
    if total <= num_frames:
        return crop_or_pad(spec, num_frames)
    return crop_or_pad(spec, num_frames, offset=total // 2 - num_frames // 2)


def reflect_indices(length: int, pad: int) -> torch.Tensor:
    """Indices for NumPy-style 'reflect' padding of `pad` items at the end of a `length` axis.

    Unlike torch's reflect pad this repeats the reflection when `pad` exceeds `length - 1`.
    """
    idx = torch.arange(length + pad)
    if length == 1:
        return torch.zeros_like(idx)
    period = 2 * (length - 1)
    idx = idx % period
    return torch.where(idx >= length, period - idx, idx)


def reflect_pad_time(spec: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad (..., T, F) at the end of the time axis with NumPy-style reflection."""
    idx = reflect_indices(spec.shape[-2], pad).to(spec.device)
    return spec.index_select(-2, idx)


def prepare_clip(wave: np.ndarray | torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Waveform (n,) -> normalised log-mel (T, 80): the per-clip preprocessing of pretraining."""
    return normalize_per_instance(log_mel_spectrogram(wave), unbiased=unbiased)
