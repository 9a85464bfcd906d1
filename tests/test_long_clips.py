"""The front end's long-clip path (`features.logmel_frames`, `ClipStats`, `FileSamples`,
`file_logmel`): a clip computed a chunk at a time equals the whole-clip computation (the
reference here), short files take the whole-clip path unchanged, and every bad file is named."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from mwmae import features

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path, seconds: float, rate: int, channels: int = 1, subtype: str = "FLOAT", seed=0):
    """A tone rising in loudness plus noise: chunks of different statistics."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.1, 2.0, n)
    x = (x + 0.02 * rng.standard_normal(n)).astype(np.float32)
    sf.write(path, np.stack([x, 0.5 * x], axis=1) if channels == 2 else x, rate, subtype=subtype)
    return path


def test_chunk_log_mel_frames_equal_the_whole_clip():
    audio = 0.1 * torch.randn(1, 160 * 1000 + 33, generator=torch.Generator().manual_seed(5))
    whole = features.log_mel_spectrogram(audio)
    for f0, f1 in [(0, 1), (0, 400), (1, 3), (400, 800), (997, whole.shape[1])]:
        torch.testing.assert_close(
            features.logmel_frames(audio, f0, f1), whole[:, f0:f1], rtol=0, atol=1e-5
        )


def test_clip_stats_merged_chunk_by_chunk_match_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    chunks = [3.0 + 2.0 * torch.randn(2, t, 80, generator=g) for t in (5, 400, 1, 77)]
    stats = features.ClipStats()
    for chunk in chunks:
        stats.add(chunk)
    mean, std = stats.result()
    whole = torch.cat(chunks, dim=1).double().numpy().reshape(2, -1)
    assert mean.shape == std.shape == (2, 1, 1) and mean.dtype == torch.float32
    np.testing.assert_allclose(mean.flatten(), whole.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(std.flatten(), whole.std(axis=1, ddof=1), rtol=1e-6)


@pytest.mark.parametrize("rate", [1000, 8000, 22050, 44100, 44101, 48000, 96000])
def test_resampled_length_is_the_resamplers(rate):
    for frames in (1, 999, rate + 7, 3 * rate + 1):
        wave = np.zeros(frames, np.float32)
        assert features.resampled_length(frames, rate) == len(features.resample(wave, rate))


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (22050, 1), (8000, 1)])
def test_file_pieces_equal_the_whole_file_resampled(tmp_path, rate, channels):
    path = _write(tmp_path / "a.wav", 7.3, rate, channels, subtype="PCM_16")
    whole = features.load_audio(path)
    samples = features.FileSamples(path)
    assert samples.shape == (1, whole.shape[0])
    n = whole.shape[0]
    for start, stop in [(0, 401), (5, 16000), (16001, 33333), (n - 500, n), (n - 20000, n - 3)]:
        piece = samples.read(start, stop)
        assert piece.shape == (1, stop - start) and piece.dtype == torch.float32
        if rate == features.SAMPLE_RATE:  # read as it is: the very samples
            np.testing.assert_array_equal(piece[0].numpy(), whole[start:stop])
        else:  # resampled with context: the whole file's resampling up to float rounding
            np.testing.assert_allclose(piece[0].numpy(), whole[start:stop], rtol=0, atol=1e-6)


def test_short_files_take_the_whole_clip_path_unchanged(tmp_path):
    for rate in (16000, 44100):
        path = _write(tmp_path / f"s{rate}.wav", 3.0, rate)
        expected = features.clip_logmel(path, "instance_unbiased")
        assert torch.equal(features.file_logmel(path), expected)
        assert torch.equal(features.file_logmel(path, chunk_seconds=3.01), expected)


@pytest.mark.parametrize("chunk_seconds", [1.0, 2.3, 6.0])
def test_a_long_file_chunk_by_chunk_equals_the_whole_clip(tmp_path, chunk_seconds):
    path = _write(tmp_path / "a.wav", 9.37, 16000)
    whole = features.clip_logmel(path, "instance_unbiased")
    chunked = features.file_logmel(path, chunk_seconds=chunk_seconds)
    assert chunked.shape == whole.shape and chunked.dtype == whole.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_a_long_resampled_file_chunk_by_chunk_equals_the_whole_clip(tmp_path):
    # The samples agree to float rounding (above); the log of a nearly silent mel bin turns
    # that into ~1e-4 here, as a one-ulp change of the whole clip's samples does.
    path = _write(tmp_path / "a.wav", 9.37, 44100, channels=2, subtype="PCM_16")
    whole = features.clip_logmel(path, "instance_unbiased")
    chunked = features.file_logmel(path, chunk_seconds=2.3)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=2e-3)
    assert float((chunked - whole).abs().mean()) < 1e-5


def test_a_long_file_is_read_a_chunk_at_a_time(tmp_path, monkeypatch):
    rate = 44100
    path = _write(tmp_path / "a.wav", 20.0, rate)
    reads = []
    real = features._load

    def counting(source, sample_rate, start, stop, *args):
        reads.append(stop - start)
        return real(source, sample_rate, start, stop, *args)

    monkeypatch.setattr(features, "_load", counting)
    spec = features.file_logmel(path, chunk_seconds=2.0)  # 200 frames a chunk
    frames = features.num_frames_for(features.resampled_length(20 * rate, rate))
    assert spec.shape == (frames, 80)
    assert len(reads) == 2 * -(-frames // 200)  # two passes over the chunks
    # A chunk, its resampling context either side, and under 0.1 s of alignment and STFT frame
    # margins: never the whole file.
    assert max(reads) <= rate * (2.0 + 2 * features.RESAMPLE_CONTEXT_SECONDS + 0.1)


def _bad_files(tmp_path):
    sf.write(tmp_path / "short.wav", np.zeros(10, np.float32), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = np.full(16000, 0.1, np.float32)
    nan[123] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    long_nan = np.full(16000 * 5, 0.1, np.float32)
    long_nan[16000 * 4] = np.inf  # in the last chunk of the long-clip path
    sf.write(tmp_path / "long_nan.wav", long_nan, 16000, subtype="FLOAT")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    return {
        "short.wav": "audio too short: 10 samples",
        "empty.wav": "audio is empty",
        "nan.wav": "NaN or Inf",
        "long_nan.wav": "NaN or Inf",
        "corrupt.wav": "could not decode audio",
        "missing.wav": "no such audio file",
    }


def test_bad_files_are_audio_errors_naming_the_file(tmp_path):
    for name, problem in _bad_files(tmp_path).items():
        with pytest.raises(features.AudioError) as info:
            features.file_logmel(tmp_path / name, chunk_seconds=1.0)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: ") and problem in message, message
        assert "\n" not in message


def test_a_header_that_overstates_the_frames_is_an_error_naming_the_file(tmp_path):
    path = _write(tmp_path / "a.wav", 2.0, 16000)
    samples = features.FileSamples(path)
    samples.frames += 100  # as a header that promises more than the file holds
    with pytest.raises(features.AudioError, match=r"a\.wav: the audio ends before its stated"):
        samples.read(31000, 32050)
