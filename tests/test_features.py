"""Front end vs an independent float64 NumPy implementation of the reference's settings."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mwmae import features


def reference_logmel_float64(wave: np.ndarray) -> np.ndarray:
    """Written from the spec, frame by frame, in float64: centred frames with reflect padding,
    periodic Hann window, |rfft|^2, HTK triangular filters 50-8000 Hz (no normalisation), ln."""
    n_fft, hop, sr, n_mels = 400, 160, 16000, 80
    padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic
    bin_freqs = np.arange(n_fft // 2 + 1) * sr / n_fft

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def inv_mel(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = inv_mel(np.linspace(mel(50.0), mel(8000.0), n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        for k, f in enumerate(bin_freqs):
            if lo < f <= centre:
                fb[k, m] = (f - lo) / (centre - lo)
            elif centre < f < hi:
                fb[k, m] = (hi - f) / (hi - centre)
    out = np.empty((n_frames, n_mels))
    for t in range(n_frames):
        frame = padded[t * hop : t * hop + n_fft] * window
        power = np.abs(np.fft.rfft(frame)) ** 2
        out[t] = np.log(power @ fb + np.finfo(np.float32).eps)
    return out


def test_logmel_matches_float64_reference():
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 1.3) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    ours = features.log_mel_spectrogram(torch.tensor(wave, dtype=torch.float32)).numpy()
    ref = reference_logmel_float64(wave)
    assert ours.shape == ref.shape == (len(wave) // 160 + 1, 80)
    # float32 STFT vs float64: log-domain error is tiny wherever there is energy.
    assert np.abs(ours - ref).max() < 2e-3
    assert np.abs(ours - ref).mean() < 1e-4


def test_logmel_batched_equals_single():
    waves = torch.randn(3, 8000) * 0.1
    batched = features.log_mel_spectrogram(waves)
    for i in range(3):
        torch.testing.assert_close(batched[i], features.log_mel_spectrogram(waves[i]))


def test_filterbank_matches_reference_corner_cases():
    fb = features.mel_filterbank().numpy()
    assert fb.shape == (201, 80)
    assert fb.min() >= 0 and fb.max() <= 1.0
    freqs = np.arange(201) * 40.0
    assert np.all(fb[freqs < 50] == 0) and np.all(fb[freqs > 8000] == 0)


def test_normalize_per_instance_population_and_unbiased():
    spec = torch.randn(2, 30, 80, dtype=torch.float64) * 3 + 5
    pop = features.normalize_per_instance(spec)
    flat = spec.reshape(2, -1).numpy()
    expected = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pop.reshape(2, -1).numpy(), expected, rtol=1e-10)
    unb = features.normalize_per_instance(spec, unbiased=True)
    expected = (flat - flat.mean(1, keepdims=True)) / (flat.std(1, ddof=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(unb.reshape(2, -1).numpy(), expected, rtol=1e-10)


def test_pretrain_crop():
    spec = torch.arange(250 * 2, dtype=torch.float32).reshape(250, 2)
    g = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(200):
        crop = features.pretrain_crop(spec, 200, generator=g)
        assert crop.shape == (200, 2)
        offsets.add(int(crop[0, 0].item()) // 2)
    assert min(offsets) >= 0 and max(offsets) < 50  # exclusive upper bound, as the reference
    short = features.pretrain_crop(spec[:150], 200)
    assert short.shape == (200, 2) and torch.all(short[150:] == 0)
    torch.testing.assert_close(short[:150], spec[:150])


def test_finetune_crop_includes_the_last_offset_and_reflect_pads():
    spec = torch.arange(210 * 2, dtype=torch.float32).reshape(210, 2)
    g = torch.Generator().manual_seed(0)
    offsets = {int(features.finetune_crop(spec, 200, g)[0, 0]) // 2 for _ in range(300)}
    assert offsets == set(range(11))  # uniform over [0, T - n], both ends included
    short = features.finetune_crop(spec[:150], 200, g)
    ref = np.pad(spec[:150].numpy(), ((0, 50), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(short.numpy(), ref)


@pytest.mark.parametrize("frames", [1, 7, 200, 399, 400, 401])
def test_inference_units_reflect_pad_by_n_minus_t_mod_n(frames):
    spec = torch.randn(2, frames, 3)
    pad = 200 - frames % 200  # always >= 1, as the reference runtime
    units = features.inference_units(spec, 200)
    assert units.shape == (2, frames // 200 + 1, 200, 3)
    for i in range(2):
        ref = np.pad(spec[i].numpy(), ((0, pad), (0, 0)), mode="reflect")
        np.testing.assert_array_equal(units[i].reshape(-1, 3).numpy(), ref)
    torch.testing.assert_close(features.inference_units(spec[0], 200), units[0], rtol=0, atol=0)


def test_normalize_clip_modes():
    spec = torch.randn(30, 80, dtype=torch.float64) * 3 + 5
    flat = spec.numpy()
    for mode, ddof in (("instance", 0), ("instance_unbiased", 1)):
        expected = (flat - flat.mean()) / (flat.std(ddof=ddof) + 1e-8)
        np.testing.assert_allclose(
            features.normalize_clip(spec, mode).numpy(), expected, rtol=1e-10
        )
    by_stats = features.normalize_clip(spec, "dataset", mean=5.0, std=3.0)
    np.testing.assert_allclose(by_stats.numpy(), (flat - 5.0) / (3.0 + 1e-8), rtol=1e-12)
    assert features.normalize_clip(spec, "none") is spec
    with pytest.raises(ValueError, match="needs mean and std"):
        features.normalize_clip(spec, "dataset")
    with pytest.raises(ValueError, match="normalize must be one of"):
        features.normalize_clip(spec, "global")


def test_reflect_pad_matches_numpy_including_long_pads():
    for length, pad in [(7, 3), (5, 4), (5, 13), (3, 40), (1, 5), (200, 199)]:
        x = torch.arange(length, dtype=torch.float32)[:, None].repeat(1, 2)
        ours = features.reflect_pad_time(x, pad)[:, 0].numpy()
        ref = np.pad(np.arange(length, dtype=np.float32), (0, pad), mode="reflect")
        np.testing.assert_array_equal(ours, ref)


def test_load_audio_resamples_and_averages(tmp_path):
    sr = 22050
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, sr, subtype="PCM_16")
    wave = features.load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    # averaging halves the amplitude; resampling keeps it
    assert 0.22 < np.abs(wave[1000:-1000]).max() < 0.26


def test_int_pcm_scaled(tmp_path):
    path = tmp_path / "int.wav"
    sf.write(path, (np.ones(1600) * 16384).astype(np.int16), 16000, subtype="PCM_16")
    wave = features.load_audio(path)
    assert np.allclose(wave, 0.5, atol=1e-4)


@pytest.mark.parametrize("kind", ["missing", "empty", "nan", "garbage"])
def test_bad_audio_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif kind == "nan":
        sf.write(path, np.full(1600, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    elif kind == "garbage":
        path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(features.AudioError, match=str(path.name)):
        features.load_audio(path)


def test_too_short_audio_is_a_clear_error():
    with pytest.raises(features.AudioError, match="too short"):
        features.log_mel_spectrogram(torch.zeros(100))


# --------------------------------------------------------------------------------------------
# The one audio validator
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "wave,kwargs,match",
    [
        ([0.0, 0.1], {}, "clip: expected a torch.Tensor or numpy array, got list"),
        (np.zeros(400), {"tensor_only": True}, "clip: expected a torch.Tensor, got ndarray"),
        (np.zeros(400, dtype=np.int16), {}, "clip: expected floating-point samples.*int16"),
        (torch.zeros(400, dtype=torch.float64), {"dtype": torch.float32}, "dtype torch.float32"),
        (torch.zeros(400), {"ndim": 2}, r"clip: expected 2-D audio .*got shape \(400,\)"),
        (torch.zeros(2, 0), {}, "clip: audio is empty"),
        (torch.zeros(0, 400), {}, "clip: audio is empty"),
        (np.zeros(100, dtype=np.float32), {"min_samples": 201}, "clip: audio too short: 100"),
        (np.array([0.0, np.inf, 0.0]), {}, "clip: audio contains NaN or Inf"),
        (torch.tensor([[0.0, 0.0], [0.0, float("nan")]]), {}, "clip: audio contains NaN or Inf"),
    ],
)
def test_check_waveform_names_the_argument_and_problem(wave, kwargs, match):
    from mwmae.errors import InputError

    with pytest.raises(InputError, match=match):
        features.check_waveform(wave, "clip", **kwargs)


def test_check_waveform_accepts_good_audio_and_every_entry_point_uses_it():
    import inspect

    from mwmae import embeddings, hear

    features.check_waveform(np.zeros((2, 400), np.float32), "clip", ndim=2)
    features.check_waveform(torch.zeros(400), "clip", ndim=(1, 2), dtype=torch.float32)
    for module in (embeddings, hear):  # no private copies of the checks
        source = inspect.getsource(module)
        assert "isfinite" not in source and "check_waveform(" in source


# --------------------------------------------------------------------------------------------
# The one clip path: file -> validated, resampled samples -> log-mel -> normalised
# --------------------------------------------------------------------------------------------
def _tone_file(path, seconds=1.5, sr=22050):
    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr, subtype="FLOAT")
    return path


def test_clip_logmel_of_a_file_is_the_pieces_in_order(tmp_path):
    path = _tone_file(tmp_path / "tone.wav")
    wave = features.load_audio(path)
    logmel = features.log_mel_spectrogram(wave)
    assert torch.equal(features.clip_logmel(path), logmel)
    assert torch.equal(
        features.clip_logmel(path, "instance"), features.normalize_per_instance(logmel)
    )
    assert torch.equal(
        features.clip_logmel(wave, "instance_unbiased"),
        features.normalize_clip(logmel, "instance_unbiased"),
    )


def test_load_audio_reads_a_frame_range_by_seeking(tmp_path):
    path = tmp_path / "a.wav"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    sf.write(path, x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(features.load_audio(path, start=1000, stop=5000), x[1000:5000])
    part = features.clip_logmel(path, start=1000, stop=5000)
    assert torch.equal(part, features.log_mel_spectrogram(x[1000:5000]))
    with pytest.raises(features.AudioError, match=r"a\.wav#t=0\.000,0\.005: audio too short"):
        features.clip_logmel(path, start=0, stop=80)
    with pytest.raises(features.AudioError, match=r"gone\.wav \(frames 0-10\): could not decode"):
        features.load_audio(tmp_path / "gone.wav", start=0, stop=10)
    with pytest.raises(ValueError, match="needs a stop frame"):
        features.load_audio(path, start=10)
    with open(path, "rb") as fh:  # an open file (a shard member) names itself
        np.testing.assert_array_equal(features.load_audio(fh, name="shard:a.wav"), x)


def test_each_clip_is_scanned_for_nan_once(tmp_path, monkeypatch):
    import mwmae
    from mwmae.builtin import logmel as baseline
    from mwmae.data import FileSource, PretrainDataset
    from mwmae.embeddings import timestamp_embeddings

    path = _tone_file(tmp_path / "tone.wav", seconds=3.0)
    scans = []
    real = features._all_finite
    monkeypatch.setattr(features, "_all_finite", lambda w: scans.append(w.shape) or real(w))
    features.clip_logmel(path, "instance")
    assert len(scans) == 1
    PretrainDataset(FileSource([path]), 200)[0]
    assert len(scans) == 2
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1)
    audio = torch.from_numpy(features.load_audio(path))[None]
    assert len(scans) == 3
    timestamp_embeddings(model, audio, chunk_seconds=2.0)  # two chunks of 2 s
    assert len(scans) == 4
    baseline.get_scene_embeddings(audio, baseline.load_model())
    assert len(scans) == 5
