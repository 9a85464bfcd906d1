"""The prepared shard format and crops read alone: the same batches as audio, within float16
rounding; features in the loader or on the device give the same batch; hostile shard bytes
cost bounded memory and fail in one line; an unfinished shard set is refused."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mwmae import features
from mwmae.data import (
    EpochBatchSampler,
    FileSource,
    PreparedSource,
    PretrainDataset,
    ShardSource,
    build_source,
    compute_dataset_stats,
    device_batches,
    find_audio_files,
    make_loader,
    write_shards,
)
from mwmae.data.crops import crop_logmel, window_indices, window_samples, window_start
from mwmae.errors import InputError

SR = 16000
# Seconds; 31,840 samples is exactly 200 frames, 32,000 is 201; some clips are shorter than a crop.
DURATIONS = [6.0, 31840 / SR, 1.1, 32000 / SR, 4.3, 0.4, 3.0, 2.6, 5.2, 1.9]


def write_audio(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, seconds in enumerate(DURATIONS):
        t = np.arange(int(round(seconds * SR))) / SR
        level = [0.02, 0.3, 0.8][i % 3]  # quiet to loud: different log-mel ranges
        x = level * np.sin(2 * np.pi * (120 + 70 * i) * t * (1 + t)) + 0.01 * rng.standard_normal(
            t.size
        )
        sf.write(folder / f"c{i:02d}.{'flac' if i % 2 else 'wav'}", x.astype(np.float32), SR)
    return find_audio_files(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prepared")
    audio = root / "audio"
    write_audio(audio)
    files = find_audio_files(audio)
    write_shards(files, root / "prepared", samples_per_shard=4, root=audio, content="prepared")
    write_shards(files, root / "shards", samples_per_shard=4, root=audio, content="audio")
    return {"audio": audio, "prepared": root / "prepared", "shards": root / "shards"}


def _batches(dataset: PretrainDataset, steps: int = 4, batch: int = 5, seed: int = 3) -> list:
    sampler = EpochBatchSampler(len(dataset), batch, seed=seed, total_steps=steps)
    return list(make_loader(dataset, sampler))


def _float16_atol(source: FileSource, normalize: str, scale: float | None = None) -> torch.Tensor:
    """Per clip: the float16 spacing at the clip's largest |log-mel| value, over the std that
    divides it (its own, the dataset's, or 1 for "none"), plus float32 rounding."""
    out = []
    for i in range(len(source)):
        spec = source.logmel(i).double()
        spacing = float(np.spacing(np.float16(float(spec.abs().max()))))
        std = {"instance": float(spec.std(correction=0)), "none": 1.0}.get(normalize, scale)
        out.append(spacing / std + 1e-5)
    return torch.tensor(out)


@pytest.mark.parametrize("normalize", ["instance", "dataset", "none"])
def test_prepared_batches_equal_audio_batches_within_float16_rounding(corpus, normalize):
    files = FileSource(find_audio_files(corpus["audio"]))
    kw = {"mean": -6.0, "std": 2.5} if normalize == "dataset" else {}
    audio = PretrainDataset(files, 200, seed=3, normalize=normalize, **kw)
    prepared = PretrainDataset(
        build_source(corpus["prepared"]), 200, seed=3, normalize=normalize, **kw
    )
    assert isinstance(prepared.source, PreparedSource) and prepared.crops is not None
    atol = _float16_atol(files, normalize, kw.get("std"))
    for a, b in zip(_batches(audio), _batches(prepared), strict=True):
        assert torch.equal(a["index"], b["index"]) and a["bad"] == b["bad"] == []
        diff = (a["spec"] - b["spec"]).abs().flatten(1).amax(dim=1)
        assert (diff <= atol[a["index"]]).all(), (diff, atol[a["index"]])
        assert b["spec"].dtype == torch.float32 and b["spec"].shape == (5, 1, 200, 80)


def test_stored_statistics_are_the_whole_clips_float64_population_stats(corpus):
    files = FileSource(find_audio_files(corpus["audio"]))
    for source in (build_source(corpus["prepared"]), build_source(corpus["shards"])):
        for i in range(len(files)):
            ref = files.logmel(i).numpy().astype(np.float64)
            assert source.clip_mean[i] == pytest.approx(ref.mean(), rel=1e-12)
            assert source.clip_std[i] == pytest.approx(ref.std(ddof=0), rel=1e-12)
            assert source.frames[i] == ref.shape[0]


def test_audio_shards_read_only_the_crop_and_equal_whole_clips(corpus):
    files = FileSource(find_audio_files(corpus["audio"]))
    shards = build_source(corpus["shards"])
    assert isinstance(shards, ShardSource) and shards.crop_kind == "audio"
    whole = PretrainDataset(files, 200, seed=5)
    crops = PretrainDataset(shards, 200, seed=5)
    for a, b in zip(_batches(whole, seed=5), _batches(crops, seed=5), strict=True):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["spec"], b["spec"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("offset", [0, 1, 2, 137, 200, 201])  # 201: up to the last frame
def test_crop_window_log_mel_equals_the_whole_clips_frames(offset):
    rng = np.random.default_rng(offset)
    wave = (0.2 * rng.standard_normal(64_000 + 77)).astype(np.float32)  # T = 401 frames
    whole = features.log_mel_spectrogram(wave)
    start, width = window_start(offset), window_samples(200)
    window = torch.from_numpy(wave[window_indices(len(wave), start, width)])
    got = crop_logmel(window[None], 200)[0]
    torch.testing.assert_close(got, whole[offset : offset + 200], rtol=0, atol=1e-5)


def test_short_clip_window_gives_its_frames_then_padding():
    wave = (0.2 * np.random.default_rng(1).standard_normal(5000)).astype(np.float32)  # 32 frames
    whole = features.log_mel_spectrogram(wave)
    window = torch.from_numpy(wave[window_indices(len(wave), window_start(0), window_samples(200))])
    got = crop_logmel(window[None], 200)[0]
    torch.testing.assert_close(got[: whole.shape[0]], whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["prepared", "shards"])
@pytest.mark.parametrize("normalize", ["instance", "none"])
def test_features_in_the_loader_or_on_the_device_give_the_same_batch(corpus, kind, normalize):
    source = build_source(corpus[kind])
    worker = PretrainDataset(source, 200, seed=2, normalize=normalize)
    device = PretrainDataset(source, 200, seed=2, normalize=normalize, features_on="device")
    sampler = EpochBatchSampler(len(source), 5, seed=2, total_steps=4)
    raw = list(make_loader(device, sampler))
    assert "spec" not in raw[0] and ("audio" in raw[0]) == (kind == "shards")
    moved = list(device_batches(make_loader(device, sampler), "cpu"))
    for a, b in zip(list(make_loader(worker, sampler)), moved, strict=True):
        assert torch.equal(a["spec"], b["spec"]) and torch.equal(a["index"], b["index"])


def test_a_non_finite_crop_is_substituted_wherever_features_are_computed(corpus, tmp_path):
    import shutil

    folder = shutil.copytree(corpus["prepared"], tmp_path / "prepared")
    source = build_source(folder)
    assert isinstance(source, PreparedSource)
    bad = 0  # NaN over every stored row of clip 0
    shard = source.shards[int(source.shard_id[bad])]
    start = int(source.data_offset[source.shard_id[bad]]) + int(source.offset[bad]) * 160
    with open(shard, "r+b") as f:
        f.seek(start)
        f.write(np.full((int(source.frames[bad]), 80), np.nan, np.float16).tobytes())
    source = build_source(folder)
    sampler = EpochBatchSampler(len(source), 5, seed=2, total_steps=2)
    worker = list(make_loader(PretrainDataset(source, 200, seed=2), sampler))
    device = PretrainDataset(source, 200, seed=2, features_on="device")
    moved = list(device_batches(make_loader(device, sampler), "cpu"))
    assert sum(len(b["bad"]) for b in worker) >= 1  # clip 0 is drawn and replaced
    for a, b in zip(worker, moved, strict=True):
        assert torch.isfinite(b["spec"]).all() and bad not in b["index"].tolist()
        assert torch.equal(a["spec"], b["spec"]) and a["bad"] == b["bad"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_batches_on_cuda_match_the_cpu(corpus):
    source = build_source(corpus["shards"])
    worker = PretrainDataset(source, 200, seed=2)
    device = PretrainDataset(source, 200, seed=2, features_on="device")
    sampler = EpochBatchSampler(len(source), 5, seed=2, total_steps=4)
    cuda = device_batches(make_loader(device, sampler, pin_memory=True), "cuda")
    for a, b in zip(make_loader(worker, sampler), cuda, strict=True):
        assert b["spec"].is_cuda
        torch.testing.assert_close(a["spec"], b["spec"].cpu(), rtol=0, atol=1e-4)


def test_items_one_by_one_equal_the_gathered_batch(corpus):
    dataset = PretrainDataset(build_source(corpus["prepared"]), 200, seed=4)
    items = [(1, i) for i in (3, 0, 7, 5)]
    gathered = dataset.__getitems__(items)
    for (epoch, index), row in zip(items, gathered, strict=True):
        single = dataset[(epoch, index)]
        assert torch.equal(single["spec"], row["spec"]) and single["index"] == row["index"]


def test_a_bad_clip_in_a_gathered_batch_is_substituted(corpus, tmp_path):
    folder = tmp_path / "p"
    write_shards(
        find_audio_files(corpus["audio"]), folder, samples_per_shard=100, content="prepared"
    )
    source = build_source(folder)
    shard, first = source.shards[0], int(source.offset[2])
    data = bytearray(Path(shard).read_bytes())
    start = int(source.data_offset[0]) + first * 160
    data[start : start + 160 * 5] = np.full(400, np.nan, np.float16).tobytes()  # clip 2: NaN
    Path(shard).write_bytes(bytes(data))
    dataset = PretrainDataset(build_source(folder), 1000, seed=0)  # crops start at frame 0
    batch = make_loader(dataset, EpochBatchSampler(len(dataset), 10, total_steps=1)).__iter__()
    got = next(batch)  # one epoch of the 10 clips: clip 2 among them, substituted
    assert 2 not in got["index"].tolist() and got["bad"] == [source.name(2)]
    assert bool(torch.isfinite(got["spec"]).all())


def test_subset_and_dataset_statistics_come_from_the_stored_arrays(corpus):
    files = build_source(corpus["audio"], fraction=0.5, seed=9)
    prepared = build_source(corpus["prepared"], fraction=0.5, seed=9)
    audio_ds, prepared_ds = (
        PretrainDataset(files, 200, seed=1),
        PretrainDataset(prepared, 200, seed=1),
    )
    assert prepared_ds.crops is not None and prepared_ds.crops.index_map is not None
    for i in range(len(files)):
        a, b = audio_ds[(0, i)]["spec"], prepared_ds[(0, i)]["spec"]
        assert (a - b).abs().max() < 0.01
    mean, std = compute_dataset_stats(build_source(corpus["audio"]))
    mean_p, std_p = compute_dataset_stats(build_source(corpus["prepared"]))
    mean_s, std_s = compute_dataset_stats(build_source(corpus["shards"]))
    assert mean_s == pytest.approx(mean, rel=1e-9) and std_s == pytest.approx(std, rel=1e-9)
    assert mean_p == pytest.approx(mean, rel=1e-9) and std_p == pytest.approx(std, rel=1e-9)


def test_index_lives_in_arrays_not_per_clip_objects(corpus):
    for source in (build_source(corpus["prepared"]), build_source(corpus["shards"])):
        for name, value in vars(source).items():
            if isinstance(value, (list, tuple, dict, set)):
                assert len(value) <= len(source.shards), name  # per shard, never per clip


def test_sources_survive_pickling_as_spawned_workers_receive_them(corpus):
    import pickle

    for source in (build_source(corpus["prepared"]), build_source(corpus["shards"])):
        source.load(0)  # a file handle is open now; it must not travel
        copy = pickle.loads(pickle.dumps(source))
        assert type(copy) is type(source) and len(copy) == len(source)
        np.testing.assert_array_equal(copy.load(3)[1], source.load(3)[1])


def test_prepare_shards_command_writes_the_prepared_format_by_default(corpus, tmp_path, capsys):
    from mwmae.cli import main

    for extra, content in (([], "prepared"), (["--audio"], "audio")):
        out = tmp_path / content
        argv = ["prepare-shards", str(corpus["audio"]), str(out), "--no-progress", "--json"]
        assert main(argv + extra) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["content"] == content and summary["num_clips"] == len(DURATIONS)
        assert all(s["size"] == (out / s["name"]).stat().st_size for s in summary["shards"])
        assert isinstance(build_source(out), PreparedSource) == (content == "prepared")


def test_pretraining_runs_from_prepared_shards(corpus, tmp_path):
    from test_pretrain import tiny_config

    from mwmae.pretraining import pretrain

    cfg = tiny_config(
        tmp_path / "runs",
        corpus["prepared"],
        data={"normalize": "dataset"},
        schedule={"steps": 2, "warmup_steps": 1},
    )
    run_dir = pretrain(cfg, [], progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 2 and np.isfinite(summary["loss"]) and summary["skipped_total"] == 0


# --------------------------------------------------------------------------------------------
# Hostile shard bytes (issue 22): bounded memory, one line naming shard and member
# --------------------------------------------------------------------------------------------
def _npy_with_header(header: dict, data: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _good_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, (0.1 * np.random.default_rng(0).standard_normal(SR * 3)).astype(np.float32))
    return buf.getvalue()


def _array_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


HOSTILE = {
    "huge": (
        _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (10**12,)}, b"\0" * 64),
        "declares (1000000000000,)",
    ),
    "truncated": (
        _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (2**29,)}, b"\0" * 4096),
        "declares (536870912,)",
    ),
    "complex": (_array_npy(np.ones(SR, np.complex64)), "a complex array"),
    "object": (_array_npy(np.array([1.0, "x"], dtype=object)), "an object array"),
    "structured": (_array_npy(np.zeros(SR, dtype=[("a", "<f4"), ("b", "<f4")])), "a structured"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_npy_member_is_a_bad_clip_in_bounded_memory(tmp_path, case):
    data, expected = HOSTILE[case]
    shard = _tar(tmp_path / "h.tar", {"a.npy": _good_npy(), "b.npy": data})
    source = ShardSource([shard])
    tracemalloc.start()
    try:
        with pytest.raises(features.AudioError) as exc:
            source.load(1)
        item = PretrainDataset(source, 200)[(0, 1)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(exc.value)
    assert expected in message and f"{shard}:b.npy" in message and "\n" not in message
    assert item["index"] == 0 and item["bad"] == [f"{shard}:b.npy"]  # counted, substituted
    assert peak < 50e6


def test_truncated_tar_is_one_line_naming_the_shard(tmp_path):
    shard = _tar(tmp_path / "t.tar", {f"{k}.audio.npy": _good_npy() for k in range(3)})
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: int(shard.stat().st_size * 0.8)])
    with pytest.raises(InputError) as exc:
        build_source(cut)
    assert str(cut) in str(exc.value) and "\n" not in str(exc.value)


def test_member_past_the_end_of_its_shard_is_a_bad_clip(corpus, tmp_path):
    """A sidecar that describes more bytes than the shard holds: no huge read, a bad clip."""
    out = tmp_path / "s"
    write_shards(find_audio_files(corpus["audio"])[:2], out, samples_per_shard=10)
    shard = out / "shard-000000.tar"
    sidecar = Path(f"{shard}.index.json")
    meta = json.loads(sidecar.read_text())
    meta["members"][1][3] = 10**12  # member 1 claims a terabyte
    meta.pop("stats")
    sidecar.write_text(json.dumps(meta))
    source = ShardSource([shard])
    with pytest.raises(features.AudioError, match="truncated shard member"):
        source.load(1)


# --------------------------------------------------------------------------------------------
# An unfinished or mismatched shard set is refused in one line
# --------------------------------------------------------------------------------------------
@pytest.fixture
def finished(corpus, tmp_path) -> Path:
    out = tmp_path / "set"
    write_shards(find_audio_files(corpus["audio"]), out, samples_per_shard=3, content="audio")
    return out


def _refused(folder: Path, match: str) -> None:
    with pytest.raises(InputError) as exc:
        build_source(folder)
    message = str(exc.value)
    assert str(folder) in message and "prepare-shards" in message and match in message
    assert "\n" not in message


def test_set_whose_writer_was_killed_is_refused(finished):
    (finished / "shards.json").unlink()  # killed before the summary: shards and indexes remain
    _refused(finished, "incomplete shard set")


def test_set_being_written_is_refused(corpus, tmp_path, monkeypatch):
    import mwmae.data.prepare as prepare

    def killed(self):
        if self.shards:
            raise KeyboardInterrupt  # the second shard never finishes
        original(self)

    original = prepare._Writer.close
    monkeypatch.setattr(prepare._Writer, "close", killed)
    out = tmp_path / "half"
    with pytest.raises(KeyboardInterrupt):
        write_shards(
            find_audio_files(corpus["audio"]), out, samples_per_shard=3, content="prepared"
        )
    assert (out / "shard-000000.tar").is_file() and not (out / "shards.json").exists()
    _refused(out, "incomplete shard set")


def test_summary_that_does_not_match_the_files_is_refused(finished):
    (finished / "shard-000001.tar").unlink()
    _refused(finished, "shard-000001.tar, listed in shards.json, is missing")


def test_summary_with_a_resized_shard_is_refused(finished):
    with open(finished / "shard-000000.tar", "ab") as fh:
        fh.write(b"\0" * 512)
    _refused(finished, "shard-000000.tar has")


def test_pretraining_refuses_an_incomplete_set_in_one_line(finished, tmp_path, capsys):
    import yaml
    from test_pretrain import tiny_config

    from mwmae.cli import main

    (finished / "shards.json").unlink()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", finished)))
    assert main(["pretrain", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mwmae pretrain: error: ") and "\n" not in err
    assert str(finished) in err and "prepare-shards" in err


def test_a_prepared_shard_among_audio_shards_is_refused(corpus):
    audio, prepared = (
        sorted(corpus["shards"].glob("*.tar")),
        sorted(corpus["prepared"].glob("*.tar")),
    )
    with pytest.raises(InputError, match="a prepared shard among audio shards") as exc:
        ShardSource([audio[0], prepared[0]])  # its index arrays would pass for clips
    assert str(prepared[0]) in str(exc.value)
    with pytest.raises(InputError):  # the other order
        ShardSource([prepared[0], audio[0]])


def test_a_prepared_shard_of_other_mel_bins_is_named_so(corpus, tmp_path):
    with tarfile.open(sorted(corpus["prepared"].glob("*.tar"))[0]) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    meta = json.loads(members["prepared.json"])
    members["prepared.json"] = json.dumps({**meta, "n_mels": 64}).encode()
    with pytest.raises(InputError, match="n_mels 64 is not 80"):
        PreparedSource([_tar(tmp_path / "shard-0.tar", members)])


@pytest.mark.parametrize(("soft", "expected"), [(256, 64), (1000, 250), (20000, 1024)])
def test_open_shard_files_follow_the_descriptor_limit(monkeypatch, soft, expected):
    import resource

    from mwmae.data.binary import ShardFiles

    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    assert ShardFiles([]).max_open == expected  # a quarter of the soft limit, in [64, 1024]
    assert ShardFiles([], max_open=8).max_open == 8
