"""Pretraining data: sources, manifests, shards, crops, bad clips, sampling determinism."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mwmae import features
from mwmae._rng import torch_generator
from mwmae.data import (
    EpochBatchSampler,
    FileSource,
    PretrainDataset,
    ShardSource,
    build_source,
    collate_clips,
    compute_dataset_stats,
    detect_kind,
    find_audio_files,
    find_shards,
    index_shard,
    make_loader,
    read_manifest,
    scan_shard,
    shard_index_path,
    write_shards,
)

SR = 16000
DURATIONS = [0.5, 3.0, 1.2, 2.5, 0.8, 4.0, 1.0, 2.2]  # seconds; some shorter than 2 s


def write_corpus(folder: Path, bad: bool = True) -> list[Path]:
    """Tones with noise, nested folders, plus corrupt, empty and NaN files when `bad`."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    good = []
    for i, dur in enumerate(DURATIONS):
        n = int(SR * dur)
        t = np.arange(n) / SR
        x = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.05 * rng.standard_normal(n)
        sub = ["", "nested/", "nested/deeper/"][i % 3]
        ext = "flac" if i % 4 == 1 else "wav"
        path = folder / f"{sub}clip{i:02d}.{ext}"
        sf.write(path, x.astype(np.float32), SR)
        good.append(path)
    # A stereo 44.1 kHz file: resampled and averaged by the front end.
    n = int(44100 * 1.5)
    stereo = 0.2 * np.random.default_rng(1).standard_normal((n, 2)).astype(np.float32)
    sf.write(folder / "stereo44k.wav", stereo, 44100)
    good.append(folder / "stereo44k.wav")
    if bad:
        (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio at all")
        sf.write(folder / "empty.wav", np.zeros(0, np.float32), SR)
        sf.write(folder / "nan.wav", np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    (folder / "notes.txt").write_text("not audio")
    return good


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root)
    return root


def test_find_audio_files_recursive_sorted(corpus):
    files = find_audio_files(corpus)
    names = [p.relative_to(corpus).as_posix() for p in files]
    assert names == sorted(names)
    assert "nested/deeper/clip02.wav" in names and "nested/clip01.flac" in names
    assert "notes.txt" not in names
    assert len(files) == len(DURATIONS) + 1 + 3  # good + stereo + 3 bad
    assert detect_kind(corpus) == "folder"


def test_find_audio_files_one_file_hear_task_and_errors(corpus, tmp_path):
    from mwmae.errors import MissingFileError

    one = corpus / "clip00.wav"
    assert find_audio_files(one) == [one]
    task = tmp_path / "task"  # a HEAR task: only the 16 kHz audio counts
    for rate, name in (("16000", "a.mp3"), ("48000", "a.wav")):
        (task / rate / "train").mkdir(parents=True)
        (task / rate / "train" / name).write_bytes(b"")
    assert find_audio_files(task) == [task / "16000" / "train" / "a.mp3"]
    with pytest.raises(MissingFileError, match=re.escape(f"{tmp_path / 'missing'}: no such")):
        find_audio_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=re.escape(f"{tmp_path / 'empty'}: no audio files")):
        find_audio_files(tmp_path / "empty")


def test_manifests_resolve_relative_paths(corpus, tmp_path):
    files = find_audio_files(corpus)[:4]
    mdir = tmp_path / "meta"
    mdir.mkdir()
    rel = [Path("..") / "c" / p.name for p in files]  # relative to the manifest's folder
    (tmp_path / "c").mkdir()
    for p in files:
        (tmp_path / "c" / p.name).write_bytes(p.read_bytes())
    csv_path = mdir / "train.csv"
    csv_path.write_text("path,label\n" + "".join(f"{r},x\n" for r in rel))
    jsonl_path = mdir / "train.jsonl"
    jsonl_path.write_text("".join(json.dumps({"path": str(r)}) + "\n" for r in rel))
    for manifest in (csv_path, jsonl_path):
        paths = read_manifest(manifest)
        assert [p.resolve() for p in paths] == [(tmp_path / "c" / p.name).resolve() for p in files]
        assert detect_kind(manifest) == "manifest"
        src = build_source(manifest)
        assert len(src) == 4
        kind, wave = src.load(0)
        assert kind == "audio" and wave.dtype == np.float32
    bad = mdir / "bad.csv"
    bad.write_text("file\nx.wav\n")
    with pytest.raises(ValueError, match="path"):
        read_manifest(bad)


def test_item_is_normalised_clip_then_crop(corpus):
    src = FileSource([corpus / "nested" / "clip04.wav"])  # 0.8 s: padded
    clip05 = corpus / "nested" / "deeper" / "clip05.flac"  # 4.0 s
    long_src = FileSource([corpus / "clip00.wav", clip05])
    ds = PretrainDataset(long_src, 200, seed=3)
    item = ds[(2, 1)]
    assert item["spec"].shape == (1, 200, 80) and item["bad"] == [] and item["index"] == 1
    # Manual: log-mel of the whole clip, one mean/std (population) over it, then the crop.
    full = features.log_mel_spectrogram(torch.from_numpy(features.load_audio(clip05)))
    norm = (full - full.mean()) / (full.std(correction=0) + 1e-8)
    expect = features.pretrain_crop(norm, 200, generator=torch_generator(3, 0x5EED_0002, 2, 1))
    torch.testing.assert_close(item["spec"][0], expect, rtol=0, atol=1e-5)
    # The whole clip's statistics, not the crop's: the crop's own mean is not 0.
    assert abs(float(item["spec"].mean())) > 1e-3
    # Same (epoch, index): same crop. Another epoch: another crop.
    assert torch.equal(ds[(2, 1)]["spec"], item["spec"])
    assert not torch.equal(ds[(3, 1)]["spec"], item["spec"])
    # Short clips are padded with zeros (the clip mean) at the end.
    short = PretrainDataset(src, 200)[0]["spec"][0]
    n_frames = features.num_frames_for(int(0.8 * SR))
    assert torch.all(short[n_frames:] == 0) and short[:n_frames].abs().sum() > 0


def test_dataset_normalisation_options(corpus):
    src = build_source(corpus)
    ds = PretrainDataset(src, 200, normalize="dataset", mean=-5.0, std=2.0)
    raw = PretrainDataset(src, 200, normalize="none")
    item, raw_item = ds[(0, 1)], raw[(0, 1)]
    torch.testing.assert_close(item["spec"], (raw_item["spec"] + 5.0) / (2.0 + 1e-8))
    mean, std = compute_dataset_stats(src, max_clips=3)
    assert [Path(src.name(i)).name for i in range(3)] == ["clip00.wav", "clip03.wav", "clip06.wav"]
    vals = torch.cat([raw.logmel(i).flatten().double() for i in range(3)])
    assert mean == pytest.approx(float(vals.mean()), rel=1e-6)
    assert std == pytest.approx(float(vals.std(correction=0)), rel=1e-5)
    with pytest.raises(ValueError, match="mean and std"):
        PretrainDataset(src, 200, normalize="dataset")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        PretrainDataset(src, 0)


def test_bad_clips_are_substituted_and_named(corpus):
    src = build_source(corpus)
    names = [Path(src.name(i)).name for i in range(len(src))]
    ds = PretrainDataset(src, 200)
    i_corrupt = names.index("corrupt.wav")
    item = ds[(0, i_corrupt)]
    # corrupt.wav -> empty.wav -> nan.wav (the next ones, also bad) -> the next good one.
    assert [Path(b).name for b in item["bad"]] == ["corrupt.wav", "empty.wav", "nan.wav"]
    assert names[item["index"]] not in ("corrupt.wav", "empty.wav", "nan.wav")
    again = PretrainDataset(src, 200)[(0, i_corrupt)]
    assert torch.equal(again["spec"], item["spec"]) and again["index"] == item["index"]
    i_nan = names.index("nan.wav")
    assert [Path(b).name for b in ds[(0, i_nan)]["bad"]] == ["nan.wav"]
    batch = collate_clips([ds[(0, i_corrupt)], ds[(0, 0)], ds[(0, i_nan)]])
    assert batch["spec"].shape == (3, 1, 200, 80)
    assert len(batch["bad"]) == 4  # every skip is counted, also when cached as bad
    only_bad = PretrainDataset(
        FileSource([corpus / "empty.wav", corpus / "nan.wav"]), 200, max_substitutes=3
    )
    with pytest.raises(RuntimeError, match="bad clips in a row"):
        only_bad[0]


def test_fraction_is_a_seeded_subset(corpus):
    full = build_source(corpus)
    part = build_source(corpus, fraction=0.5, seed=1)
    again = build_source(corpus, fraction=0.5, seed=1)
    other = build_source(corpus, fraction=0.5, seed=2)
    assert len(part) == round(len(full) * 0.5)
    names = [part.name(i) for i in range(len(part))]
    assert names == [again.name(i) for i in range(len(again))]
    assert names != [other.name(i) for i in range(len(other))]
    assert set(names) <= {full.name(i) for i in range(len(full))}
    with pytest.raises(ValueError, match="fraction"):
        build_source(corpus, fraction=0.0)


def test_sampler_independent_of_world_size_and_resume():
    n, g = 10, 8
    single = EpochBatchSampler(n, g, seed=5, total_steps=6)
    batches = list(single)
    stream = [pos for b in batches for pos in b]
    # Each epoch of the stream is a permutation of all items.
    assert sorted(i for e, i in stream if e == 0) == list(range(n))
    assert sorted(i for e, i in stream if e == 1) == list(range(n))
    assert [i for e, i in stream if e == 0] != [i for e, i in stream if e == 1]
    # 2 ranks x 2 micro-batches: concatenated in (rank, micro) order = the single stream.
    for world, accum in ((2, 1), (2, 2), (4, 2), (1, 4)):
        per_rank = [list(EpochBatchSampler(n, g, 5, world, r, accum, 0, 6)) for r in range(world)]
        for step in range(6):
            got = [
                pos
                for r in range(world)
                for pos in sum(per_rank[r][step * accum : (step + 1) * accum], [])
            ]
            assert got == batches[step], (world, accum, step)
    resumed = list(EpochBatchSampler(n, g, seed=5, start_step=4, total_steps=6))
    assert resumed == batches[4:]
    assert len(EpochBatchSampler(n, g, 5, 2, 0, 2, 1, 6)) == 10
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(n, 6, world_size=4)


def test_loader_identical_across_worker_counts(corpus):
    ds = PretrainDataset(build_source(corpus), 200, seed=7)
    outs = []
    for workers in (0, 2):
        sampler = EpochBatchSampler(len(ds), 6, seed=7, total_steps=4)
        batches = list(make_loader(ds, sampler, num_workers=workers))
        outs.append(batches)
    assert len(outs[0]) == len(outs[1]) == 4
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a["spec"], b["spec"]) and torch.equal(a["index"], b["index"])
        assert a["bad"] == b["bad"]
    assert sum(len(b["bad"]) for b in outs[0]) > 0  # the bad files were hit and reported


@pytest.mark.parametrize("logmel", [False, True])
def test_shards_roundtrip(corpus, tmp_path, logmel):
    files = find_audio_files(corpus)
    out = tmp_path / "shards"
    summary = write_shards(files, out, logmel=logmel, samples_per_shard=4, root=corpus)
    n_good = len(DURATIONS) + 1
    assert summary["num_clips"] == n_good
    assert [s["count"] for s in summary["shards"]] == [4, 4, 1]
    assert sorted(Path(s["path"]).name for s in summary["skipped"]) == [
        "corrupt.wav",
        "empty.wav",
        "nan.wav",
    ]
    assert json.loads((out / "shards.json").read_text())["num_clips"] == n_good
    assert not list(out.glob(".*tmp"))
    # Plain tar in the WebDataset layout: <key>.<ext> members grouped by key.
    with tarfile.open(out / "shard-000000.tar") as tf:
        names = tf.getnames()
        ext = "logmel.npy" if logmel else "audio.npy"
        assert names[:2] == [f"000000000.{ext}", "000000000.json"]
        meta = json.loads(tf.extractfile("000000000.json").read())
        arr = np.load(io.BytesIO(tf.extractfile(names[0]).read()), allow_pickle=False)
    assert meta["source"] == files[0].relative_to(corpus).as_posix()
    assert detect_kind(out) == "shards" and len(find_shards(out)) == 3
    shard_ds = PretrainDataset(build_source(out), 200, seed=1)
    good = [f for f in files if f.name not in ("corrupt.wav", "empty.wav", "nan.wav")]
    file_ds = PretrainDataset(FileSource(good), 200, seed=1)
    assert len(shard_ds) == len(file_ds) == n_good
    for i in range(n_good):
        a, b = shard_ds[(1, i)]["spec"], file_ds[(1, i)]["spec"]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert arr.dtype == np.float32 and arr.ndim == (2 if logmel else 1)
    # Shard globs and explicit lists work too.
    assert len(ShardSource(find_shards(str(out / "shard-00000[01].tar")))) == 8
    # The sidecar index equals a header scan; a stale one (other tar size) is ignored.
    first = out / "shard-000000.tar"
    assert shard_index_path(first).is_file()
    assert index_shard(first) == scan_shard(first)
    shard_index_path(first).write_text(json.dumps({"tar_size": 1, "members": [["x", "npy", 0, 1]]}))
    assert index_shard(first) == scan_shard(first)


def test_foreign_shard_members_and_corrupt_entries(tmp_path):
    """Shards from other tools: .wav/.flac members and bare .npy; a broken member is a bad clip."""
    path = tmp_path / "foreign.tar"
    rng = np.random.default_rng(0)
    wav = io.BytesIO()
    sf.write(wav, (0.1 * rng.standard_normal(SR * 3)).astype(np.float32), SR, format="WAV")
    npy = io.BytesIO()
    np.save(npy, rng.standard_normal((300, 80)).astype(np.float32))
    members = {
        "a.wav": wav.getvalue(),
        "a.cls": b"3",
        "b.npy": npy.getvalue(),
        "c.npy": b"\x93NUMPY garbage",
    }
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = ShardSource([path])
    assert len(src) == 3
    assert src.load(0)[0] == "audio" and src.load(1)[0] == "logmel"
    ds = PretrainDataset(src, 200)
    item = ds[(0, 2)]
    assert item["index"] == 0 and item["bad"] == [f"{path}:c.npy"]


# --------------------------------------------------------------------------------------------
# Long files: cut into clips, each read by seeking
# --------------------------------------------------------------------------------------------
def write_long(path: Path, seconds: float, sr: int = SR, block_s: float = 5.0) -> np.ndarray:
    """A sine + noise file written in blocks; returns what was written (as float32)."""
    rng = np.random.default_rng(3)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="FLOAT") as fh:
        for lo in range(0, n, int(block_s * sr)):
            fh.write(x[lo : lo + int(block_s * sr)])
    return x


def test_long_file_is_cut_into_clips_read_by_seeking(tmp_path, monkeypatch):
    folder = tmp_path / "long"
    folder.mkdir()
    written = write_long(folder / "long.wav", 25.0)
    short = write_long(folder / "short.wav", 4.0)
    n = written.size
    # Hand-worked: 400000 frames, 10 s clips = 160000 frames -> ceil = 3 clips of 133333/4.
    expected = [(0, 133333), (133333, 266666), (266666, 400000)]
    src = build_source(folder, clip_seconds=10.0)
    assert len(src) == 4 and n == 400000
    long_items = [i for i in range(len(src)) if src.file(i).endswith("long.wav")]
    assert [src.file(i) for i in range(len(src))].count(str(folder / "short.wav")) == 1
    assert src.name(3) == str(folder / "short.wav")  # a file that fits: one clip, plain name
    assert src.name(long_items[1]) == f"{folder / 'long.wav'}#t=8.333,16.667"

    # Every clip is read by seeking to its start and reading its frames, never the whole file.
    calls: list[tuple[str, int]] = []
    real_seek, real_read = sf.SoundFile.seek, sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile,
        "seek",
        lambda self, f, whence=sf.SEEK_SET: (
            # tell() is seek(0, SEEK_CUR): only absolute seeks move the read position
            (whence == sf.SEEK_SET and calls.append(("seek", f))) or real_seek(self, f, whence)
        ),
    )
    monkeypatch.setattr(
        sf.SoundFile,
        "read",
        lambda self, frames=-1, **kw: (
            calls.append(("read", frames)) or real_read(self, frames, **kw)
        ),
    )
    monkeypatch.setattr(sf, "read", lambda *a, **k: pytest.fail("whole-file read"))
    for i, (lo, hi) in zip(long_items, expected, strict=True):
        calls.clear()
        kind, clip = src.load(i)
        # (soundfile itself seeks again past what it read; the first seek is ours)
        assert kind == "audio" and calls[:2] == [("seek", lo), ("read", hi - lo)]
        assert [f for what, f in calls if what == "read"] == [hi - lo]
        np.testing.assert_array_equal(clip, written[lo:hi])  # the same range read whole
    monkeypatch.undo()
    np.testing.assert_array_equal(src.load(3)[1], short)
    ds = PretrainDataset(src, 200)
    assert ds[long_items[2]]["spec"].shape == (1, 200, 80)
    # clip_seconds=None: every file is one clip (no header read), as before long-file support.
    assert len(build_source(folder, clip_seconds=None)) == 2


def test_clip_bounds_cover_the_file_without_short_tails():
    from mwmae.data import clip_bounds

    assert clip_bounds(100, 100) == [(0, -1)]
    for frames, per in [(101, 100), (250, 100), (1000, 7), (57_600_000, 960_000)]:
        bounds = clip_bounds(frames, per)
        assert bounds[0][0] == 0 and bounds[-1][1] == frames
        assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) <= per and max(sizes) - min(sizes) <= 1
        assert len(bounds) == -(-frames // per)


def test_prepare_shards_writes_long_files_as_clips(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    written = write_long(folder / "long.wav", 25.0)
    summary = write_shards(find_audio_files(folder), tmp_path / "shards", clip_seconds=10.0)
    assert summary["num_clips"] == 3 and summary["skipped"] == []
    src = ShardSource(find_shards(tmp_path / "shards"))
    got = np.concatenate([src.load(i)[1] for i in range(3)])
    np.testing.assert_array_equal(got, written)  # the clips tile the file exactly
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tf:
        metas = [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert [(m["start_s"], m["end_s"]) for m in metas] == [
        (0.0, 133333 / SR),
        (133333 / SR, 266666 / SR),
        (266666 / SR, 25.0),
    ]


# --------------------------------------------------------------------------------------------
# Accounting: unusable entries, distinct bad files vs substitutions
# --------------------------------------------------------------------------------------------
def test_unusable_audio_names_are_counted_and_named(tmp_path, caplog):
    folder = tmp_path / "a"
    write_corpus(folder, bad=False)
    (folder / "x.wav").mkdir()  # a directory named like audio
    (folder / "gone.flac").symlink_to(folder / "missing.flac")  # a broken symlink
    from mwmae.data import scan_audio_folder

    with caplog.at_level("WARNING"):
        listing = scan_audio_folder(folder)
    reasons = dict(listing.skipped)
    assert reasons == {
        str(folder / "gone.flac"): "broken symbolic link",
        str(folder / "x.wav"): "a directory, not a file",
    }
    assert "2 audio-named entries" in caplog.text and "x.wav" in caplog.text
    assert "gone.flac" in caplog.text
    ds = PretrainDataset(build_source(folder), 200)
    assert dict(ds.skipped) == reasons and len(ds) == len(DURATIONS) + 1
    summary = write_shards(listing.paths, tmp_path / "s", unusable=listing.skipped)
    assert {u["path"] for u in summary["unreadable"]} == set(reasons)


def test_bad_files_are_counted_once_apart_from_substitutions(tmp_path):
    from mwmae.data import clip_file

    folder = tmp_path / "nine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"g{i}.wav", 0.1 * rng.standard_normal(SR).astype(np.float32), SR)
    for i in range(9):  # b0..b8 sort before g*: every item from 0 to 8 is substituted
        (folder / f"b{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00broken")
    ds = PretrainDataset(build_source(folder), 200, max_substitutes=16)
    names = []
    for epoch in range(3):
        for i in range(len(ds)):
            names.extend(ds[(epoch, i)]["bad"])
    # Naive count: item i (0..8) skips the bad files i..8, i.e. 9 - i of them, every epoch.
    expected = 3 * sum(9 - i for i in range(9))
    assert len(names) == ds.substitutions == expected == 135
    assert len(ds.bad_files) == 9 and len(set(map(clip_file, names))) == 9
    assert {Path(p).name for p in ds.bad_files} == {f"b{i}.wav" for i in range(9)}


def test_run_summary_counts_bad_files_apart_from_substitutions(tmp_path):
    from test_pretrain import tiny_config

    from mwmae.pretraining import pretrain

    folder = tmp_path / "nine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"g{i}.wav", 0.1 * rng.standard_normal(SR).astype(np.float32), SR)
    for i in range(9):
        (folder / f"b{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00broken")
    cfg = tiny_config(tmp_path / "runs", folder, schedule={"steps": 3, "warmup_steps": 1})
    run_dir = pretrain(cfg, [], progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    # 3 steps x 4 = 12 positions = one epoch of the 12 items: items 0..8 substitute 9 - i each.
    assert summary["bad_files"] == 9
    assert summary["skipped_total"] == sum(9 - i for i in range(9)) == 45
