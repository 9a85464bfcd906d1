"""Audio front end: the one path from a file or a waveform to the normalised log-mel the model
takes, and the crop/pad policies that cut it into model input.

    load_audio(path, start=, stop=)      decode (a frame range by seeking), mono, check, resample
    clip_logmel(path | samples, mode)    load_audio (for a path) -> log-mel -> normalize_clip
    file_logmel(path)                    clip_logmel(path, "instance_unbiased"), bounded memory
    pretrain_crop / finetune_crop / inference_units     model-sized pieces of a clip's log-mel

Long clips go through the same steps a chunk at a time (`logmel_frames`, `ClipStats`; the
samples read by seeking for a file, `FileSamples`), so memory stays bounded for hours of audio.

A clip's samples are validated once on that path: a cheap shape check before resampling and the
full `check_waveform` (NaN/Inf) after it; later steps check only the length. The log-mel matches
the MW-MAE reference (torchaudio ``MelSpectrogram`` defaults with n_fft=400, hop=160, 80 HTK mel
bins over 50-8000 Hz, power 2, then ``log(x + float32 eps)``), computed in plain torch so it runs
batched on CPU or GPU without torchaudio.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

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
NORM_EPS = 1e-8
MIN_SAMPLES = N_FFT // 2 + 1  # the centred STFT reflect-pads by N_FFT // 2
WHOLE = -1  # the `stop` frame of a whole-file read
CLIP_FRAGMENT = "#t="  # `<path>#t=<start>,<end>` (seconds, media-fragment style) names a clip
NORMALIZE_MODES = ("instance", "instance_unbiased", "dataset", "none")


class AudioError(InputError):
    """Audio that cannot be used: unreadable, empty or non-finite. The message names the file
    or the argument."""


class AudioTypeError(AudioError, TypeError):
    """Audio of the wrong type or dtype (also a TypeError, as callers have long caught)."""


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def check_waveform(
    wave: Any,
    name: str = "audio",
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | np.dtype | None = None,
    min_samples: int = 1,
    tensor_only: bool = False,
    finite: bool = True,
) -> None:
    """THE audio validator of every entry point (files, datasets, embeddings, HEAR).

    Raises `AudioError` (an `mwmae.errors.InputError`) naming `name` and the problem: not an
    array (or not a torch.Tensor with `tensor_only`), a non-float dtype (or not `dtype`), a
    number of dimensions not in `ndim`, fewer than `min_samples` samples or no sounds, NaN/Inf.
    `finite=False` leaves out the NaN/Inf scan, the only check that reads every sample: for
    samples already scanned, or about to be scanned once further down their path.
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
    if finite and not _all_finite(wave):
        raise AudioError(f"{name}: audio contains NaN or Inf values")


_FINITE_BLOCK = 1 << 18  # samples per block: the check's temporaries stay ~MBs for hours of audio


def _all_finite(wave: torch.Tensor | np.ndarray) -> bool:
    """isfinite over views of the last axis, block by block (bounded extra memory)."""
    isfinite = torch.isfinite if isinstance(wave, torch.Tensor) else np.isfinite
    n = int(wave.shape[-1])
    return all(
        bool(isfinite(wave[..., i : i + _FINITE_BLOCK]).all()) for i in range(0, n, _FINITE_BLOCK)
    )


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


def clip_name(path: str, start: int, stop: int, sample_rate: int) -> str:
    """The name of frames [start, stop) of a file at `sample_rate`: `<path>#t=<start>,<end>` in
    seconds, or the path itself for a whole file (`stop=WHOLE`)."""
    if stop == WHOLE:
        return path
    return f"{path}{CLIP_FRAGMENT}{start / sample_rate:.3f},{stop / sample_rate:.3f}"


def clip_file(name: str) -> str:
    """The file a clip name (`clip_name`, or a shard member's name) comes from."""
    head, sep, tail = name.rpartition(CLIP_FRAGMENT)
    return head if sep and "/" not in tail else name


def load_audio(
    source: str | Path | BinaryIO,
    sample_rate: int = SAMPLE_RATE,
    *,
    start: int = 0,
    stop: int = WHOLE,
    name: str | None = None,
) -> np.ndarray:
    """Read audio as mono float32 in [-1, 1] at `sample_rate` (resampled if needed).

    `source` is a path or an open binary file (then `name` says what errors call it). With a
    `stop` frame only frames [start, stop) are decoded, after a seek; the default reads the
    whole file. Integer PCM is scaled to [-1, 1] by soundfile; channels are averaged. Raises
    `AudioError` naming the file (or the clip, `clip_name`) when it is missing, cannot be
    decoded, is empty or holds NaN/Inf.
    """
    return _load(source, sample_rate, start, stop, name)[0]


def _load(
    source: str | Path | BinaryIO,
    sample_rate: int,
    start: int,
    stop: int,
    name: str | None,
    keep: slice = slice(None),
) -> tuple[np.ndarray, str]:
    """`load_audio`, and the name its errors use (for the checks further down the path).
    `keep`: the part of the resampled samples to return (`FileSamples` cuts off its context)."""
    wave, file_sr, name = _decode(source, start, stop, name)
    wave = to_mono(wave)
    check_waveform(wave, name, finite=False)  # resampling needs samples; NaN/Inf: scanned below
    wave = resample(wave, file_sr, sample_rate)[keep]
    check_waveform(wave, name)  # the one full check of the clip's samples
    return np.ascontiguousarray(wave, dtype=np.float32), name


def _decode(
    source: str | Path | BinaryIO, start: int, stop: int, name: str | None
) -> tuple[np.ndarray, int, str]:
    """(frames, channels) float32 samples, the file's sample rate and the clip's name."""
    import soundfile as sf

    whole = stop == WHOLE
    if whole and start:
        raise ValueError(f"start frame {start} needs a stop frame")
    if isinstance(source, (str, Path)):
        path = source = str(Path(source)) if whole else str(source)
        if whole and not Path(path).is_file():
            raise AudioError(f"{path}: no such audio file")
    elif name is None:
        raise ValueError("load_audio: an open file needs a name for its errors")
    else:
        path = name
    label = name or (path if whole else f"{path} (frames {start}-{stop})")
    try:
        with sf.SoundFile(source) as fh:
            file_sr = int(fh.samplerate)
            if not whole:
                label = name or clip_name(path, start, stop, file_sr)
                fh.seek(start)
            wave = fh.read(-1 if whole else stop - start, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for undecodable input
        raise AudioError(f"{label}: could not decode audio ({exc})") from exc
    return wave, file_sr, label


def _audio_info(path: str) -> tuple[int, int]:
    """(frames, sample rate) from a file's header; `AudioError` naming it, as `_decode`."""
    import soundfile as sf

    if not Path(path).is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises several types for undecodable input
        raise AudioError(f"{path}: could not decode audio ({exc})") from exc
    return int(info.frames), int(info.samplerate)


def resampled_length(frames: int, orig_sr: int, target_sr: int = SAMPLE_RATE) -> int:
    """The number of samples `resample` makes of `frames` (soxr rounds half up)."""
    if orig_sr == target_sr:
        return frames
    return (2 * frames * target_sr + orig_sr) // (2 * orig_sr)


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
    """Log-mel spectrogram of 16 kHz audio, validated first (`check_waveform`).

    wave: (..., n_samples) float tensor or array (n_samples > 200).
    Returns (..., T, 80) float32 with T = n_samples // 160 + 1 (centred, reflect-padded frames).
    """
    check_waveform(wave, "audio", min_samples=MIN_SAMPLES)
    return _log_mel(wave)


# Above this peak amplitude float32's STFT power could overflow: a frame's |X| is at most
# 200 x the peak (the Hann window sums to 200) and a mel band weighs under 7 bins, so below 2^50
# the mel power stays under 4e35, a thousandth of float32's maximum.
_FLOAT32_SAFE_PEAK = 2.0**50


def _log_mel(wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """`log_mel_spectrogram` of samples already validated: float32 as the reference, except
    the clips loud enough to overflow float32's power, which are computed in float64 (cast back
    after the log), so any finite float32 clip gives a finite log-mel and the others are
    unchanged to the bit."""
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    n_samples = wave.shape[-1]
    wave = wave.to(torch.float32)
    lead_shape = wave.shape[:-1]
    flat = wave.reshape(-1, n_samples)
    low, high = torch.aminmax(flat, dim=-1)  # no |x| copy of a long clip
    loud = torch.maximum(-low, high) > _FLOAT32_SAFE_PEAK
    if bool(loud.any()):
        logmel = flat.new_empty(flat.shape[0], num_frames_for(n_samples), N_MELS)
        if not bool(loud.all()):
            logmel[~loud] = _log_mel_rows(flat[~loud])
        logmel[loud] = _log_mel_rows(flat[loud].double()).float()
    else:
        logmel = _log_mel_rows(flat)
    return logmel.reshape(*lead_shape, logmel.shape[-2], N_MELS)


def _log_mel_rows(flat: torch.Tensor) -> torch.Tensor:
    """(B, n_samples) -> (B, T, 80) log-mel, in the samples' dtype."""
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
    return torch.log(mel + LOG_EPS)


def num_frames_for(n_samples: int) -> int:
    """Number of log-mel frames for `n_samples` of audio."""
    return n_samples // HOP_LENGTH + 1


# --------------------------------------------------------------------------------------------
# Normalisation
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


def normalize_with_stats(
    spec: torch.Tensor, mean: float | torch.Tensor, std: float | torch.Tensor
) -> torch.Tensor:
    """(x - mean) / (std + eps) with given statistics (a dataset's, or a clip's gathered in
    pieces) instead of the clip's own."""
    return (spec - mean) / (std + NORM_EPS)


def normalize_clip(
    spec: torch.Tensor, mode: str, mean: float | None = None, std: float | None = None
) -> torch.Tensor:
    """Normalise a clip's whole (..., T, F) log-mel, before any crop, as the reference does.

    "instance": one mean and population std per clip (pretraining); "instance_unbiased": the
    same with torch's unbiased std (embedding extraction, fine-tuning); "dataset": the given
    dataset `mean` and `std`; "none": unchanged.
    """
    if mode == "instance":
        return normalize_per_instance(spec, unbiased=False)
    if mode == "instance_unbiased":
        return normalize_per_instance(spec, unbiased=True)
    if mode == "dataset":
        if mean is None or std is None:
            raise ValueError("normalize='dataset' needs mean and std")
        return normalize_with_stats(spec, mean, std)
    if mode == "none":
        return spec
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")


# --------------------------------------------------------------------------------------------
# The clip path
# --------------------------------------------------------------------------------------------
def clip_logmel(
    audio: str | Path | np.ndarray | torch.Tensor,
    normalize: str = "none",
    *,
    mean: float | None = None,
    std: float | None = None,
    start: int = 0,
    stop: int = WHOLE,
    name: str | None = None,
    checked: bool = False,
) -> torch.Tensor:
    """A clip's (..., T, 80) log-mel, normalised over the whole clip (`normalize_clip` modes).

    `audio` is a path (read by `load_audio`: the whole file, or frames [start, stop)) or 16 kHz
    samples (..., n_samples) as an array or tensor. Samples are validated here (`check_waveform`,
    errors naming `name`), except that `checked=True` says they already were (by `load_audio`
    or a clip source): then only their length is checked, so no clip is scanned twice.
    """
    if isinstance(audio, (str, Path)):
        audio, name = _load(audio, SAMPLE_RATE, start, stop, name)
        checked = True
    check_waveform(audio, name or "audio", min_samples=MIN_SAMPLES, finite=not checked)
    return normalize_clip(_log_mel(audio), normalize, mean, std)


# --------------------------------------------------------------------------------------------
# Long clips in bounded memory: the clip path chunk by chunk (embeddings, fine-tuning)
# --------------------------------------------------------------------------------------------
CHUNK_SECONDS = 120.0  # audio turned into log-mel at once on the long-clip paths
RESAMPLE_CONTEXT_SECONDS = 0.5  # file audio resampled either side of a piece (soxr's filter)


class FileSamples:
    """A file's mono 16 kHz samples, read a piece at a time (`read`): only the file frames the
    piece needs are decoded (by seeking), with `RESAMPLE_CONTEXT_SECONDS` either side, so that
    the piece equals the same samples of the whole file's resampling up to float rounding.
    `shape` is (1, samples), as a tensor of validated samples (n, samples) has."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = str(path)
        self.name = name or self.path  # what errors call it
        self.frames, self.file_rate = _audio_info(self.path)
        self.shape = (1, resampled_length(self.frames, self.file_rate))
        # Pieces start on file frames that fall on 16 kHz samples: block = step_in frames.
        common = math.gcd(self.file_rate, SAMPLE_RATE)
        self._step_in, self._step_out = self.file_rate // common, SAMPLE_RATE // common
        resampled = self.file_rate != SAMPLE_RATE
        blocks = math.ceil(RESAMPLE_CONTEXT_SECONDS * self.file_rate / self._step_in)
        self._context = blocks * self._step_in if resampled else 0

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Samples [start, stop) as (1, stop - start) float32, validated (`load_audio`'s checks,
        errors naming the file)."""
        first = max(0, start // self._step_out * self._step_in - self._context)
        last = min(self.frames, -(-stop // self._step_out) * self._step_in + self._context)
        offset = first * SAMPLE_RATE // self.file_rate  # exact: first is a whole block
        keep = slice(start - offset, stop - offset)
        wave, _ = _load(self.path, SAMPLE_RATE, first, last, self.name, keep)
        if wave.shape[0] != stop - start:  # a header that overstates the frames
            raise AudioError(f"{self.name}: the audio ends before its stated {self.frames} frames")
        return torch.from_numpy(wave)[None]


def logmel_frames(samples: torch.Tensor | FileSamples, f0: int, f1: int) -> torch.Tensor:
    """Frames [f0, f1) of a whole clip's log-mel, (n, f1 - f0, F), from a slice of its samples:
    validated 16 kHz samples (n, samples) or a file's (`FileSamples`).

    Frame t is centred on sample t * hop and spans n_fft // 2 samples either side; a slice from
    (f0 - 2) * hop keeps every needed frame clear of the slice's own reflect padding, except at
    the clip's ends, where the slice's padding is the clip's."""
    hop, half = HOP_LENGTH, N_FFT // 2
    start = max(0, f0 - 2) * hop
    stop = min(samples.shape[-1], f1 * hop + half)
    if isinstance(samples, FileSamples):
        piece = samples.read(start, stop)
    else:
        piece = samples[:, start:stop]
    spec = clip_logmel(piece, checked=True)
    offset = start // hop
    return spec[:, f0 - offset : f1 - offset]


def logmel_chunks(
    samples: torch.Tensor | FileSamples, chunk: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(f0, frames [f0, f0 + chunk) of the clip's log-mel) for f0 = 0, chunk, 2 * chunk, ...;
    the last chunk holds what is left."""
    total = num_frames_for(samples.shape[-1])
    for f0 in range(0, total, chunk):
        yield f0, logmel_frames(samples, f0, min(total, f0 + chunk))


class ClipStats:
    """A clip's log-mel mean and unbiased std gathered chunk by chunk: chunks (..., t, F) merged
    in float64 with Chan et al.'s pairwise update (no cancellation from sums of squares)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = self.m2 = torch.zeros(())

    def add(self, chunk: torch.Tensor) -> None:
        k = chunk.shape[-2] * chunk.shape[-1]
        var_b, mean_b = torch.var_mean(chunk.double(), dim=(-2, -1), correction=0)
        m2_b = var_b * k
        if not self.count:
            self.count, self.mean, self.m2 = k, mean_b, m2_b
            return
        delta = mean_b - self.mean
        total = self.count + k
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + m2_b + delta.square() * (self.count * k / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), (..., 1, 1) float32 each, for `normalize_with_stats`."""
        std = (self.m2 / (self.count - 1)).sqrt()
        return self.mean.float()[..., None, None], std.float()[..., None, None]


def clip_stats(
    samples: torch.Tensor | FileSamples, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A clip's log-mel mean and unbiased std, (n, 1, 1) each, from its log-mel `chunk` frames
    at a time (`ClipStats`)."""
    stats = ClipStats()
    for _, frames in logmel_chunks(samples, chunk):
        stats.add(frames)
    return stats.result()


def file_logmel(path: str | Path, chunk_seconds: float = CHUNK_SECONDS) -> torch.Tensor:
    """A file's (T, 80) log-mel normalised over the whole clip with the unbiased std, for a file
    of any length in bounded memory.

    Up to `chunk_seconds` of audio: exactly `clip_logmel(path, "instance_unbiased")`. Longer:
    read `chunk_seconds` at a time (`FileSamples`) in two passes, as the embeddings do: the
    clip's mean/std from its log-mel chunk by chunk (`clip_stats`), then each chunk's normalised
    log-mel into the result, which is allocated only once the first pass has read the frames
    the file's header promises. Equal to the whole-clip computation up to float rounding in the
    statistics (and, for a file not at 16 kHz, in the resampling). Errors (`AudioError`) name
    the file."""
    samples = FileSamples(path)
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE / HOP_LENGTH))
    total = num_frames_for(samples.shape[-1])
    if total <= chunk:
        return clip_logmel(path, "instance_unbiased")
    mean, std = clip_stats(samples, chunk)
    out = torch.empty(total, N_MELS)
    for f0, frames in logmel_chunks(samples, chunk):
        out[f0 : f0 + chunk] = normalize_with_stats(frames[0], mean[0], std[0])
    return out


# --------------------------------------------------------------------------------------------
# Crops and padding: the three ways a clip becomes model-sized pieces
# --------------------------------------------------------------------------------------------
def pretrain_crop(
    spec: torch.Tensor,
    num_frames: int,
    generator: torch.Generator | None = None,
    offset: int | None = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Pretraining: a random `num_frames` crop along time of a (T, F) spectrogram.

    The offset is uniform in [0, T - num_frames) as in the reference (its exclusive upper bound
    never picks the last offset). Short clips, which crash the reference, are padded at the end
    with `pad_value` (0 = the clip mean after per-clip normalisation).
    """
    if spec.ndim != 2:
        raise ValueError(f"pretrain_crop expects (T, F), got shape {tuple(spec.shape)}")
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


def finetune_crop(
    spec: torch.Tensor, num_frames: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fine-tuning: a `num_frames` crop of a (T, F) spectrogram at a uniform offset in
    [0, T - num_frames] (the last offset included); shorter clips are reflect-padded."""
    if spec.shape[0] < num_frames:
        return reflect_pad_time(spec, num_frames - spec.shape[0])
    offset = int(torch.randint(0, spec.shape[0] - num_frames + 1, (1,), generator=generator))
    return spec[offset : offset + num_frames]


def inference_units(spec: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Inference: (..., T, F) -> (..., T // n + 1, n, F) for n = `num_frames`: the clip
    reflect-padded at the end by n - T % n frames (always >= 1, as the reference runtime) and
    cut into n-frame units."""
    padded = reflect_pad_time(spec, num_frames - spec.shape[-2] % num_frames)
    return padded.unflatten(-2, (-1, num_frames))


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
