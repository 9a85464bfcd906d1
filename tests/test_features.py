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


def test_crop_or_pad():
    spec = torch.arange(250 * 2, dtype=torch.float32).reshape(250, 2)
    g = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(200):
        crop = features.crop_or_pad(spec, 200, generator=g)
        assert crop.shape == (200, 2)
        offsets.add(int(crop[0, 0].item()) // 2)
    assert min(offsets) >= 0 and max(offsets) < 50  # exclusive upper bound, as the reference
    short = features.crop_or_pad(spec[:150], 200)
    assert short.shape == (200, 2) and torch.all(short[150:] == 0)
    torch.testing.assert_close(short[:150], spec[:150])


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
