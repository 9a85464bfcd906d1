"""The pretraining log-mel cache: the same items as decoding every time, keyed by content."""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from mwmae import features
from mwmae.data import (
    PretrainDataset,
    build_mel_cache,
    build_source,
    compute_dataset_stats,
    melcache,
)
from mwmae.errors import ConfigError


def _corpus(folder, n=5, seconds=1.3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"c{i}.wav", x.astype(np.float32), 16000)
    return folder


def _dataset(folder, store=None, **kw):
    """The dataset of `folder`, with a log-mel cache (kept in `store`) unless store is False."""
    source = build_source(folder)
    cache = None if store is False else build_mel_cache(source, store, **kw)
    return PretrainDataset(source, 200, seed=1, mel_cache=cache)


def _items(dataset, epochs=(0, 1)):
    return [dataset[(e, i)] for e in epochs for i in range(len(dataset))]


def test_cached_items_equal_decoded_items(tmp_path):
    folder = _corpus(tmp_path / "audio")
    (folder / "c2.wav").write_bytes(b"not audio")  # a bad clip: substituted the same way
    plain, cached = _dataset(folder, store=False), _dataset(folder)
    cache = cached.mel_cache
    assert cache.misses == 5 and cache.hits == 0 and list(cache.bad) == [2]
    for a, b in zip(_items(plain), _items(cached), strict=True):
        assert torch.equal(a["spec"], b["spec"])
        assert a["index"] == b["index"] and a["bad"] == b["bad"]
    # the cache holds exactly what the front end computes from the decoded audio
    wave = features.load_audio(folder / "c0.wav")
    assert torch.equal(cached.logmel(0), features.log_mel_spectrogram(wave))


def test_disk_cache_is_keyed_by_content_not_path(tmp_path):
    folder = _corpus(tmp_path / "audio")
    store = tmp_path / "mel"
    first = _dataset(folder, store).mel_cache
    assert (first.hits, first.misses) == (0, 5) and len(list(store.glob("*.npy"))) == 5
    second = _dataset(folder, store).mel_cache
    assert (second.hits, second.misses) == (0 + 5, 0)
    assert np.array_equal(first.values, second.values)
    # the same files in another folder are found by content
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert _dataset(moved, store).mel_cache.hits == 5
    # a file whose content changed (same name, size and everything) is computed again
    x, sr = sf.read(folder / "c1.wav", dtype="float32")
    sf.write(folder / "c1.wav", -x, sr)
    edited = _dataset(folder, store)
    cache = edited.mel_cache
    assert (cache.hits, cache.misses) == (4, 1)
    assert torch.equal(edited.logmel(1), edited.source.logmel(1))


def test_damaged_entry_is_recomputed(tmp_path, caplog):
    folder = _corpus(tmp_path / "audio", n=2)
    store = tmp_path / "mel"
    _dataset(folder, store)
    victim = sorted(store.glob("*.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    dataset = _dataset(folder, store)
    cache = dataset.mel_cache
    assert (cache.hits, cache.misses) == (1, 1)
    assert "unreadable" in caplog.text and str(victim) in caplog.text
    for i in range(2):
        assert torch.equal(dataset.logmel(i), dataset.source.logmel(i))


def test_cache_is_built_first_and_checked_at_construction(tmp_path):
    folder = _corpus(tmp_path / "audio", n=3)
    source = build_source(folder)
    cache = build_mel_cache(source)
    # the dataset statistics read the cache and give the numbers of the decoded clips
    assert compute_dataset_stats(source, mel_cache=cache) == compute_dataset_stats(source)
    with pytest.raises(ConfigError, match="cache holds 3 clips, the source 2"):
        PretrainDataset(source.subset([0, 1]), 200, mel_cache=cache)


def test_front_end_settings_are_part_of_the_key(monkeypatch):
    key = melcache.clip_key("ab" * 32, "")
    assert melcache.clip_key("ab" * 32, "#t=0.000,60.000") != key
    assert melcache.clip_key("cd" * 32, "") != key
    monkeypatch.setitem(melcache.FRONT_END, "n_mels", 128)
    assert melcache.clip_key("ab" * 32, "") != key


def test_memory_bound_is_a_config_error(tmp_path):
    folder = _corpus(tmp_path / "audio", n=3)
    with pytest.raises(ConfigError, match="data.cache_max_gb"):
        _dataset(folder, max_gb=1e-6)


def test_pretraining_with_and_without_cache_gives_the_same_losses(tmp_path):
    from mwmae.pretraining import load_log, pretrain

    folder = _corpus(tmp_path / "audio", n=6)
    losses = {}
    for cache in ("none", "memory"):
        run_dir = pretrain(
            "mwmae_tiny_cpu",
            [
                f"data.source={folder}",
                f"data.cache={cache}",
                f"data.cache_dir={tmp_path / 'mel'}",
                "data.num_workers=0",
                "model.depth=1",
                "model.decoder_depth=1",
                "schedule.steps=3",
                "batch.global_size=4",
                "log.every=1",
                "log.figure_every=0",
                f"output.dir={tmp_path / 'runs'}",
                f"output.run_name={cache}",
            ],
            progress=False,
        )
        losses[cache] = [r["loss"] for r in load_log(run_dir) if r["event"] == "train"]
    assert len(losses["none"]) == 3 and losses["none"] == losses["memory"]
