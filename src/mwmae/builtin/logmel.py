"""Log-mel baseline following the HEAR common API (usable as a HEAR module).

    from mwmae.builtin import logmel
    model = logmel.load_model()
    scene = logmel.get_scene_embeddings(audio, model)            # (n, 160): mean ++ std over time
    emb, ts = logmel.get_timestamp_embeddings(audio, model)      # (n, T, 80), (n, T) ms

Features are `mwmae.features.log_mel_spectrogram` (80 mel bins, 10 ms hop). Timestamp
embeddings average groups of four frames (40 ms steps, as the MW-MAE models' 4-frame patches);
step j covers frames 4j..4j+3, whose centres average to 40 j + 15 ms (frame i is centred at
10 i ms). A final partial group averages the frames it has.
"""

from __future__ import annotations

import torch
from torch import nn

from mwmae import features

FRAMES_PER_STEP = 4
FRAME_MS = 1000.0 * features.HOP_LENGTH / features.SAMPLE_RATE  # 10 ms
STEP_MS = FRAMES_PER_STEP * FRAME_MS  # 40 ms


class LogMelBaseline(nn.Module):
    """No learned weights: log-mel frames (timestamps) and their mean and std (scene)."""

    sample_rate = features.SAMPLE_RATE
    n_mels = features.N_MELS
    scene_embedding_size = 2 * features.N_MELS
    timestamp_embedding_size = features.N_MELS

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size
        # an empty buffer so `.to(device)` and device look-ups work on a weightless module
        self.register_buffer("device_marker", torch.zeros(0), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(n, samples) -> log-mel (n, T, 80), computed in chunks of `batch_size` clips."""
        features.check_waveform(audio, "audio", ndim=2, tensor_only=True)
        audio = audio.to(self.device_marker.device)
        chunks = [  # samples checked above: the front end checks only their length
            features.clip_logmel(audio[i : i + self.batch_size], checked=True)
            for i in range(0, audio.shape[0], self.batch_size)
        ]
        return torch.cat(chunks, dim=0)


def load_model(model_file_path: str = "") -> LogMelBaseline:
    """The baseline has no weights; `model_file_path` is accepted (and ignored) for the API."""
    del model_file_path
    return LogMelBaseline()


def _pool_steps(logmel: torch.Tensor) -> torch.Tensor:
    """(n, T, F) -> (n, ceil(T / 4), F): mean of each group of four frames."""
    n, t, f = logmel.shape
    steps = -(-t // FRAMES_PER_STEP)
    pad = steps * FRAMES_PER_STEP - t
    padded = torch.cat([logmel, logmel.new_zeros(n, pad, f)], dim=1)
    sums = padded.reshape(n, steps, FRAMES_PER_STEP, f).sum(dim=2)
    counts = torch.full((steps,), float(FRAMES_PER_STEP), device=logmel.device)
    counts[-1] = FRAMES_PER_STEP - pad
    return sums / counts[None, :, None]


def get_timestamp_embeddings(
    audio: torch.Tensor, model: LogMelBaseline
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (n, T, 80) float32, timestamps (n, T) ms), T = ceil((samples // 160 + 1) / 4)."""
    with torch.no_grad():
        emb = _pool_steps(model(audio))
    n, steps, _ = emb.shape
    timestamps = torch.arange(steps, dtype=torch.float32, device=emb.device) * STEP_MS
    timestamps = (timestamps + (FRAMES_PER_STEP - 1) / 2 * FRAME_MS).expand(n, steps)
    return emb, timestamps.contiguous()


def get_scene_embeddings(audio: torch.Tensor, model: LogMelBaseline) -> torch.Tensor:
    """(n, 160) float32: per-bin mean over time, then per-bin standard deviation over time."""
    with torch.no_grad():
        logmel = model(audio)
    mean = logmel.mean(dim=1)
    std = logmel.std(dim=1, unbiased=False)
    return torch.cat([mean, std], dim=1)
