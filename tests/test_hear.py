"""HEAR API module: the reference runtime's rules, validator-style checks, bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from independent_references import reference

import mwmae
from mwmae import features, hear

TINY = {"depth": 1, "decoder_depth": 1, "embed_dim": 48, "num_heads": 2}


OFFICIAL_RUN = Path(__file__).parent / "data" / "reference" / "mwmae_small_4x16_shift_run"


@pytest.fixture(scope="module")
def hear_model():
    """An official MW-MAE run directory (3 real training steps), converted on load."""
    return hear.load_model(str(OFFICIAL_RUN), device="cpu")


def test_load_model_accepts_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    model = mwmae.create_model("mwmae_tiny_4x16", **TINY)
    model.save_pretrained(tmp_path / "model")
    loaded = hear.load_model(str(tmp_path / "model"), device="cpu")
    assert loaded.timestamp_embedding_size == 5 * 48
    emb, _ = hear.get_timestamp_embeddings(0.1 * torch.randn(1, 16000), loaded)
    assert emb.shape == (1, 26, 240)


def reference_runtime(model, audio: np.ndarray):
    """The reference's RuntimeMAE.encode written independently with NumPy where it matters:
    whole-clip normalisation (unbiased std + 1e-8), np.pad reflect, 200-frame chunks,
    trimming int(pad / 4) steps, timestamps i * duration_ms / T'."""
    spec = features.log_mel_spectrogram(torch.tensor(audio)).numpy().astype(np.float64)
    mean, std = spec.mean(), spec.std(ddof=1)
    spec = (spec - mean) / (std + 1e-8)
    T = spec.shape[0]
    pad = 200 - T % 200
    spec = np.pad(spec, ((0, pad), (0, 0)), mode="reflect")
    chunks = [spec[i : i + 200] for i in range(0, spec.shape[0], 200)]
    with torch.no_grad():
        outs = [model.embed(torch.tensor(c, dtype=torch.float32)[None, None])[0] for c in chunks]
    emb = torch.cat(outs).numpy()
    emb = emb[: emb.shape[0] - int(pad / 4)]
    duration_ms = len(audio) / 16000 * 1000
    ts = np.arange(emb.shape[0]) * (duration_ms / emb.shape[0])
    return emb, ts


@pytest.mark.parametrize("seconds", [0.5, 2.0, 4.0, 10.3])
def test_timestamp_embeddings_follow_reference_runtime(hear_model, seconds):
    rng = np.random.default_rng(int(seconds * 10))
    n = int(round(seconds * 16000))
    audio = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
    emb, ts = hear.get_timestamp_embeddings(torch.tensor(audio), hear_model)
    T = n // 160 + 1
    assert emb.shape == (2, math.ceil(T / 4), hear_model.timestamp_embedding_size)
    assert ts.shape == emb.shape[:2]
    for i in range(2):
        ref_emb, ref_ts = reference_runtime(hear_model.model, audio[i])
        np.testing.assert_allclose(emb[i].numpy(), ref_emb, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(ts[i].numpy(), ref_ts, rtol=1e-6, atol=1e-3)
    scene = hear.get_scene_embeddings(torch.tensor(audio), hear_model)
    torch.testing.assert_close(scene, emb.mean(1))


def test_exact_multiple_of_unit_adds_a_whole_chunk(hear_model):
    # T % 200 == 0 -> pad = 200: a whole extra chunk is encoded, then 50 steps trimmed.
    n = 199 * 160 * 2 + 160  # T = n // 160 + 1 = 400
    assert n // 160 + 1 == 400
    emb, _ = hear.get_timestamp_embeddings(torch.zeros(1, n) + 0.01 * torch.randn(1, n), hear_model)
    assert emb.shape[1] == 100


def test_validator_checks(hear_model):
    """The documented checks of hear-validator, re-implemented."""
    assert isinstance(hear_model, torch.nn.Module)
    assert hear_model.sample_rate in (16000, 22050, 44100, 48000)
    assert isinstance(hear_model.scene_embedding_size, int)
    assert isinstance(hear_model.timestamp_embedding_size, int)
    audio = torch.rand(16, 2 * hear_model.sample_rate) * 2 - 1
    emb, ts = hear.get_timestamp_embeddings(audio, hear_model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert emb.shape[0] == 16 and emb.shape[2] == hear_model.timestamp_embedding_size
    assert ts.shape == emb.shape[:2]
    diffs = torch.diff(ts, dim=1)
    assert torch.all((diffs - diffs[:, :1]).abs() < 1.0)  # evenly spaced within 1 ms
    assert float(diffs.mean()) <= 50.0
    scene = hear.get_scene_embeddings(torch.rand(8, int(3.74 * 16000)) * 2 - 1, hear_model)
    assert scene.shape == (8, hear_model.scene_embedding_size) and scene.dtype == torch.float32
    # batch independence: one sound alone gives the same embedding as in a batch
    alone = hear.get_scene_embeddings(audio[3:4], hear_model)
    batch = hear.get_scene_embeddings(audio[:5], hear_model)
    torch.testing.assert_close(alone[0], batch[3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "audio,match",
    [
        (torch.zeros(16000), "n_sounds, n_samples"),
        (torch.zeros(1, 16000, dtype=torch.float64), "float32"),
        (torch.zeros(1, 0), "empty"),
        (torch.full((1, 16000), float("nan")), "NaN"),
        (np.zeros((1, 16000), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_error(hear_model, audio, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hear.get_timestamp_embeddings(audio, hear_model)


def test_long_audio_memory_is_bounded(hear_model):
    hear_model.max_units_per_batch = 2
    audio = 0.05 * torch.randn(1, 16000 * 9)
    small, _ = hear.get_timestamp_embeddings(audio, hear_model)
    hear_model.max_units_per_batch = 64
    big, _ = hear.get_timestamp_embeddings(audio, hear_model)
    torch.testing.assert_close(small, big)


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a model path"):
        hear.load_model("")
    with pytest.raises(FileNotFoundError, match="no such model"):
        hear.load_model(str(tmp_path / "nope"))


def test_real_hear_validator(hear_model, tmp_path, monkeypatch):
    """Run hear-validator 2021.0.2 itself (installed by `make test` with --no-deps) against
    mwmae.hear. It imports tensorflow only for an isinstance check: a stand-in is enough."""
    import sys
    import types

    stub = types.ModuleType("tensorflow")
    stub.Module = type("Module", (), {})
    monkeypatch.setitem(sys.modules, "tensorflow", stub)
    validate = reference("hearvalidator.validate")
    path = tmp_path / "model"
    hear_model.model.save_pretrained(path)
    validate.ValidateModel("mwmae.hear", str(path), device="cpu")()


# --------------------------------------------------------------------------------------------
# Long audio in bounded-memory chunks
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_hear():
    torch.manual_seed(1)
    return hear.HEARModel(mwmae.create_model("mwmae_tiny_4x16", **TINY).eval())


@pytest.mark.parametrize(
    "n_samples",
    [
        16000 * 30,  # T = 3001: the last 4 s chunk holds 201 frames
        160 * 2400 + 77,  # T = 2401: the last chunk holds a single frame
        160 * 2399,  # T = 2400: a whole extra unit of reflection padding
    ],
)
def test_chunked_encoding_equals_the_whole_clip(tiny_hear, n_samples):
    g = torch.Generator().manual_seed(n_samples)
    audio = 0.1 * torch.randn(2, n_samples, generator=g)
    audio[1] *= torch.linspace(0.0, 3.0, n_samples)  # clips with different statistics
    whole_emb, whole_ts = hear.get_timestamp_embeddings(audio, tiny_hear)  # 1 chunk (120 s)
    whole_scene = hear.get_scene_embeddings(audio, tiny_hear)
    tiny_hear.chunk_seconds = 4.0  # 400 frames: 2 units per chunk
    try:
        emb, ts = hear.get_timestamp_embeddings(audio, tiny_hear)
        scene = hear.get_scene_embeddings(audio, tiny_hear)
    finally:
        tiny_hear.chunk_seconds = mwmae.embeddings.DEFAULT_CHUNK_SECONDS
    assert (
        emb.shape == whole_emb.shape == (2, math.ceil(features.num_frames_for(n_samples) / 4), 240)
    )
    torch.testing.assert_close(ts, whole_ts, rtol=0, atol=0)
    torch.testing.assert_close(emb, whole_emb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scene, whole_scene, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scene, whole_emb.mean(dim=1), rtol=1e-4, atol=1e-5)
