"""The log-mel baseline's HEAR API and the log-mel + logistic-regression probe."""

from __future__ import annotations

import math

import pytest
import torch

from mwmae import features
from mwmae.builtin import logmel, synth
from mwmae.builtin.logmel_probe import probe_task


@pytest.fixture(scope="module")
def model() -> logmel.LogMelBaseline:
    return logmel.load_model()


def test_model_has_hear_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert isinstance(model.scene_embedding_size, int) and model.scene_embedding_size == 160
    assert isinstance(model.timestamp_embedding_size, int) and model.timestamp_embedding_size == 80
    assert model.to("cpu") is model  # weightless but movable


@pytest.mark.parametrize("n_samples", [16000 * 2, 16000 * 2 + 77, 3000])
def test_timestamp_embeddings_shapes_and_even_timestamps(model, n_samples):
    audio = torch.rand(3, n_samples, generator=torch.Generator().manual_seed(0)) * 2 - 1
    emb, ts = logmel.get_timestamp_embeddings(audio, model)
    steps = math.ceil((n_samples // 160 + 1) / 4)
    assert emb.shape == (3, steps, model.timestamp_embedding_size)
    assert ts.shape == (3, steps)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert torch.isfinite(emb).all()
    steps_ms = ts[:, 1:] - ts[:, :-1]
    assert torch.allclose(steps_ms, torch.full_like(steps_ms, 40.0))
    assert ts[0, 0].item() == pytest.approx(15.0)  # centre of frames 0..3 (0, 10, 20, 30 ms)


def test_timestamp_embedding_is_mean_of_four_frames(model):
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    emb, _ = logmel.get_timestamp_embeddings(audio, model)
    frames = features.log_mel_spectrogram(audio)  # (2, 26, 80)
    assert torch.allclose(emb[:, 0], frames[:, 0:4].mean(dim=1), atol=1e-5)
    assert torch.allclose(emb[:, 2], frames[:, 8:12].mean(dim=1), atol=1e-5)
    assert torch.allclose(emb[:, -1], frames[:, 24:26].mean(dim=1), atol=1e-5)  # partial group


def test_scene_embedding_sees_pitch_and_stationarity(model):
    t = torch.arange(16000) / 16000
    tones = torch.stack([0.5 * torch.sin(2 * math.pi * f * t) for f in (300.0, 2000.0)])
    noise = torch.randn(1, 16000, generator=torch.Generator().manual_seed(2)) * 0.3
    gated = noise * (torch.arange(16000) % 4000 < 2000)  # on/off every 125 ms
    scene = logmel.get_scene_embeddings(torch.cat([tones, gated]), model)
    assert scene.shape == (3, 160) and scene.dtype == torch.float32
    mean, std = scene[:, :80], scene[:, 80:]
    mel_hz = features.mel_to_hz_htk(
        torch.linspace(float(features.hz_to_mel_htk(50.0)), float(features.hz_to_mel_htk(8000.0)),
                       82)[1:-1].numpy()
    )  # fmt: skip
    for row, freq in ((0, 300.0), (1, 2000.0)):
        peak_bin = int(mean[row].argmax())
        assert abs(mel_hz[peak_bin] - freq) / freq < 0.1
    # a steady tone varies little over time, a gated noise a lot
    assert std[2].mean() > 3 * std[0].mean()


def test_batching_does_not_change_results():
    audio = torch.randn(5, 8000, generator=torch.Generator().manual_seed(3)) * 0.1
    small_batches = logmel.LogMelBaseline(batch_size=2)
    one_batch = logmel.LogMelBaseline(batch_size=64)
    a = logmel.get_scene_embeddings(audio, small_batches)
    b = logmel.get_scene_embeddings(audio, one_batch)
    assert torch.allclose(a, b, atol=1e-5)


def test_bad_audio_is_rejected(model):
    with pytest.raises(ValueError):
        logmel.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(TypeError):
        logmel.get_scene_embeddings(torch.zeros(2, 16000, dtype=torch.int16), model)


def test_linear_probe_on_a_tiny_task_beats_chance(tmp_path):
    synth.generate_tasks(tmp_path, size="tiny", seed=0, tasks=["synth_environment"],
                         external=False)  # fmt: skip
    result = probe_task(tmp_path / "synth_environment")
    assert result["metric"] == "top1_acc"
    assert result["chance"] == pytest.approx(0.1)
    assert result["test"] > 2 * result["chance"]
