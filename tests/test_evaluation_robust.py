"""Finite in, finite out; verified embedding outputs; one writer and one line for every known
failure of `embed` and `evaluate`; embedding files read in bounded memory (issue #22: items 2,
4 for embed, 5 for the embedding cache, 6 for embed/evaluate, 8 for embedding files, 10)."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
from independent_references import SKIP_ENV, reference
from test_evaluation_helpers import (
    SR,
    blobs,
    make_fake_hear_module,
    make_scene_audio_task,
    write_embedded_scene_task,
)

import mwmae
from mwmae import features, hear
from mwmae.cli import main
from mwmae.errors import (
    ConfigError,
    InputError,
    IntegrityError,
    NonFiniteError,
    OutputError,
    RunLockedError,
)
from mwmae.evaluation.embed import embed_task, embed_tasks
from mwmae.evaluation.probe import ProbeConfig, TrainSettings
from mwmae.evaluation.protocol import EvalOptions, evaluate_task
from mwmae.evaluation.stored import export_heareval, load_split_embeddings, read_npy
from mwmae.evaluation.tasks import TaskError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"depth": 1, "decoder_depth": 1, "embed_dim": 32, "num_heads": 2, "decoder_embed_dim": 32}
FAST = TrainSettings(max_epochs=12, batch_size=256, patience=20)
GRID = [ProbeConfig(1, 32, 0.1, 1e-2)]


def _error_line(capsys, command: str) -> str:
    """The one line `mwmae <command>: error: ...` the CLI printed (and nothing else)."""
    err = capsys.readouterr().err
    assert err.startswith(f"mwmae {command}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def peak_bytes():
    """Peak Python allocations (tracemalloc; numpy's included) of the block, in bytes."""
    tracemalloc.start()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


# --------------------------------------------------------------------------------------------
# Finite in, finite out
# --------------------------------------------------------------------------------------------
def _float32_log_mel(wave: torch.Tensor) -> torch.Tensor:
    """The reference recipe spelled out in float32 (what the front end computed before)."""
    stft = torch.stft(
        wave,
        n_fft=400,
        hop_length=160,
        win_length=400,
        window=torch.hann_window(400, periodic=True),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = stft.real.square() + stft.imag.square()
    mel = torch.matmul(power.transpose(1, 2), features.mel_filterbank())
    return torch.log(mel + float(np.finfo(np.float32).eps))


def test_log_mel_of_ordinary_audio_is_unchanged_to_the_bit():
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, 16000, generator=g) * torch.tensor([[0.1], [1.0], [32768.0]])
    assert torch.equal(features.log_mel_spectrogram(audio), _float32_log_mel(audio))
    assert torch.equal(features.log_mel_spectrogram(audio[1]), _float32_log_mel(audio[1:2])[0])


@pytest.mark.parametrize("gain_log2", [20, 60, 100, 126])
def test_loud_audio_gives_the_finite_log_mel_of_its_gain(gain_log2):
    """log-mel(g x) = log-mel(x) + 2 ln g (up to the log's epsilon): an exact power-of-two
    gain, so the expected values are independent of how the loud clip is computed. A peak of
    1e18 and more used to give NaN (the STFT power overflowed float32)."""
    g = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(2, 16000, generator=g)
    loud = features.log_mel_spectrogram(x * 2.0**gain_log2)
    assert torch.isfinite(loud).all()
    shift = 2 * gain_log2 * math.log(2)
    torch.testing.assert_close(loud - shift, features.log_mel_spectrogram(x), rtol=0, atol=1e-3)


def test_any_finite_float32_clip_gives_a_finite_log_mel_and_batch_mates_are_unchanged():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8000, generator=g)
    top = x[1] / x[1].abs().max() * torch.finfo(torch.float32).max  # peak: float32's largest
    batch = features.log_mel_spectrogram(torch.stack([x[0], top]))
    assert torch.isfinite(batch).all()
    assert torch.equal(batch[0], features.log_mel_spectrogram(x[0]))  # the quiet row: as alone


def test_hear_embeddings_of_loud_audio_are_finite():
    """The per-clip normalisation removes a gain, so a clip at 1e20 embeds like the clip at 1."""
    torch.manual_seed(1)
    model = hear.HEARModel(mwmae.create_model("mwmae_tiny_4x16", **TINY).eval())
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    for loud in (x * 1e20, x * 2.0**66):
        emb, _ = hear.get_timestamp_embeddings(loud, model)
        scene = hear.get_scene_embeddings(loud, model)
        assert torch.isfinite(emb).all() and torch.isfinite(scene).all()
        torch.testing.assert_close(scene, hear.get_scene_embeddings(x, model), atol=1e-3, rtol=0)


def _tiny_model_folder(tmp_path):
    torch.manual_seed(0)
    return mwmae.create_model("mwmae_tiny_4x16", **TINY).save_pretrained(tmp_path / "model")


def test_embed_of_a_finite_wav_at_1e20_writes_finite_rows(tmp_path, capsys):
    folder = make_scene_audio_task(tmp_path / "tasks")
    loud = folder / "16000" / "train" / "train_0.wav"
    wave, _ = sf.read(loud, dtype="float32")
    sf.write(loud, wave / np.abs(wave).max() * 1e20, SR, subtype="FLOAT")
    model = _tiny_model_folder(tmp_path)
    args = ["embed", "--model", str(model), "--tasks", str(folder), "--out", str(tmp_path / "e")]
    assert main([*args, "--no-progress"]) == 0
    emb = load_split_embeddings(tmp_path / "e" / "tones", "train").embeddings
    assert len(emb) == 4 and np.isfinite(emb).all()  # a NaN row before


def _nan_for_loud_clips():
    """The fake HEAR module, giving NaN rows for clips whose peak is above 0.9."""
    module = make_fake_hear_module()
    scene = module.get_scene_embeddings

    def get_scene_embeddings(audio, model):
        emb = scene(audio, model)
        emb[audio.abs().amax(dim=1) > 0.9] = math.nan
        return emb

    module.get_scene_embeddings = get_scene_embeddings
    return module


def test_embed_refuses_non_finite_rows_naming_the_file(tmp_path):
    folder = make_scene_audio_task(tmp_path / "tasks")
    bad = folder / "16000" / "valid" / "valid_1.wav"
    sf.write(bad, np.full(SR // 2, 0.95, np.float32), SR)
    module = _nan_for_loud_clips()
    with pytest.raises(NonFiniteError) as info:
        embed_task(module, module.load_model(), folder, tmp_path / "e", batch_size=2)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "'valid'" in msg and "'tones'" in msg
    out = tmp_path / "e" / "tones"
    assert (out / "train.done.json").is_file()  # the split before it was embedded
    assert not (out / "valid.done.json").exists() and not (out / "valid.embeddings.npy").exists()


def _nan_task(tmp_path, name="blobs"):
    rng = np.random.default_rng(0)
    x, y = blobs(120, 8, 2, rng)
    parts = {"train": x[:80].copy(), "valid": x[80:100], "test": x[100:]}
    parts["train"][5, 3] = np.nan
    labels = {
        s: [[f"c{k}"] for k in yy] for s, yy in zip(parts, np.split(y, [80, 100]), strict=True)
    }
    return write_embedded_scene_task(tmp_path / "emb", name, parts, labels)


def test_evaluate_refuses_non_finite_embeddings_naming_task_and_split(tmp_path, capsys):
    folder = _nan_task(tmp_path)
    with pytest.raises(NonFiniteError) as info:
        evaluate_task(folder, seeds=2, settings=FAST, grid=GRID)  # scored 0.5 before
    msg = str(info.value)
    assert "\n" not in msg and "task 'blobs'" in msg and "split 'train'" in msg
    assert "row 5 (of train_5.wav)" in msg
    args = ["evaluate", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "r")]
    assert main([*args, "--seeds", "1", "--max-epochs", "2", "--no-progress"]) == 2
    assert "task 'blobs', split 'train'" in _error_line(capsys, "evaluate")
    # heareval's layout too (written from a finite copy, then damaged the way a model would).
    kit = tmp_path / "kit"
    folder_ok = _nan_task(tmp_path / "ok", "fine")
    arr = np.load(folder_ok / "train.embeddings.npy")
    np.save(folder_ok / "train.embeddings.npy", np.nan_to_num(arr))
    export_heareval(folder_ok, kit)
    raw = np.fromfile(kit / "train.embeddings.npy", dtype=np.float32)
    raw[7] = np.inf
    raw.tofile(kit / "train.embeddings.npy")
    with pytest.raises(NonFiniteError, match="task 'fine', split 'train': row 0"):
        load_split_embeddings(kit, "train")


def _nan_weights_folder(tmp_path):
    """A model folder whose weights hold NaN and whose recorded digest matches them."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mwmae._io import sha256_file

    folder = _tiny_model_folder(tmp_path)
    weights = folder / "model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], math.nan)
    save_file(tensors, str(weights), metadata=metadata)
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = sha256_file(weights)
    (folder / "config.json").write_text(json.dumps(config))
    return folder, name


def test_embed_with_nan_weights_is_one_line_naming_the_tensor(tmp_path, capsys):
    folder = make_scene_audio_task(tmp_path / "tasks")
    model, tensor = _nan_weights_folder(tmp_path)
    args = ["embed", "--model", str(model), "--tasks", str(folder), "--out", str(tmp_path / "e")]
    assert main([*args, "--no-progress"]) == 2
    assert repr(tensor) in _error_line(capsys, "embed")


# --------------------------------------------------------------------------------------------
# Verified outputs
# --------------------------------------------------------------------------------------------
def _embed_logmel(tmp_path, folder):
    return embed_tasks("logmel", [folder], tmp_path / "e", model_id="baseline")


def test_done_marker_records_each_output_file(tmp_path):
    from mwmae._io import sha256_file

    folder = make_scene_audio_task(tmp_path / "tasks")
    rows = _embed_logmel(tmp_path, folder)
    outputs = rows[0]["splits"]["train"]["outputs"]
    out = tmp_path / "e" / "tones"
    assert set(outputs) == {f"train.{s}" for s in ("embeddings.npy", "labels.json",
                                                   "filenames.json", "cache.json")}  # fmt: skip
    for name, record in outputs.items():
        assert record == {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_embedding_file_is_re_embedded_and_named_by_evaluate(tmp_path, capsys, damage):
    folder = make_scene_audio_task(tmp_path / "tasks")
    module = make_fake_hear_module()
    model = module.load_model()
    embed_task(module, model, folder, tmp_path / "e", batch_size=2)
    path = tmp_path / "e" / "tones" / "train.embeddings.npy"
    good = path.read_bytes()
    damaged = {"truncate": good[:100], "flip": good[:-1] + bytes([good[-1] ^ 1]), "delete": b""}
    path.write_bytes(damaged[damage])
    if damage == "delete":
        path.unlink()
    else:  # evaluate names it in one line (a numpy traceback before)
        args = ["evaluate", "--embeddings", str(tmp_path / "e"), "--out", str(tmp_path / "r")]
        assert main([*args, "--seeds", "1", "--max-epochs", "2", "--no-progress"]) == 2
        assert str(path) in _error_line(capsys, "evaluate")
    calls = model.calls
    embed_task(module, model, folder, tmp_path / "e", batch_size=2)
    assert model.calls == calls + 2  # train only: its 2 batches (kept and trusted before)
    assert path.read_bytes() == good


def test_truncated_embeddings_through_the_cli(tmp_path, capsys):
    folder = make_scene_audio_task(tmp_path / "tasks")
    args = ["embed", "--model", "logmel", "--tasks", str(folder), "--out", str(tmp_path / "e")]
    assert main([*args, "--no-progress"]) == 0
    path = tmp_path / "e" / "tones" / "train.embeddings.npy"
    good = path.read_bytes()
    path.write_bytes(good[:100])
    capsys.readouterr()
    assert main([*args, "--no-progress"]) == 0
    assert path.read_bytes() == good and "'train': '4x160'" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# One writer per output folder
# --------------------------------------------------------------------------------------------
def test_embed_refuses_an_output_folder_another_process_writes(tmp_path, capsys):
    from mwmae.training.lock import acquire, release

    folder = make_scene_audio_task(tmp_path / "tasks")
    fd = acquire(tmp_path / "e")  # a live holder (flock is per open file)
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on "):
            _embed_logmel(tmp_path, folder)
        args = ["embed", "--model", "logmel", "--tasks", str(folder), "--out", str(tmp_path / "e")]
        assert main([*args, "--no-progress"]) == 2
        assert "one run folder has one writer" in _error_line(capsys, "embed")
    finally:
        release(fd)
    assert not (tmp_path / "e" / "tones").exists()
    _embed_logmel(tmp_path, folder)  # free again


def test_embed_takes_over_the_lock_of_a_dead_holder(tmp_path, caplog):
    folder = make_scene_audio_task(tmp_path / "tasks")
    (tmp_path / "e").mkdir()
    dead = {"pid": 999_999_999, "host": "gone", "since": "2020-01-01 00:00:00", "command": "x"}
    (tmp_path / "e" / ".lock").write_text(json.dumps(dead))
    rows = _embed_logmel(tmp_path, folder)
    assert rows[0]["splits"]["train"]["rows"] == 4
    assert any("pid 999999999 on gone" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "e" / ".lock").read_text() == ""  # released cleanly


def test_only_the_task_folders_make_the_embeddings_digest(tmp_path):
    from mwmae.evaluation.protocol import embeddings_digest

    folder = make_scene_audio_task(tmp_path / "tasks")
    _embed_logmel(tmp_path, folder)
    before = embeddings_digest(tmp_path / "e")
    (tmp_path / "e" / ".lock").write_text('{"pid": 1}')
    assert embeddings_digest(tmp_path / "e") == before
    (tmp_path / "e" / "embed.json").write_text('{"seconds": 1.5}')  # a cached embed rewrites it
    assert embeddings_digest(tmp_path / "e") == before
    (task,) = [p.parent for p in (tmp_path / "e").glob("*/task_metadata.json")]
    metadata = task / "task_metadata.json"
    metadata.write_bytes(metadata.read_bytes() + b" ")  # what a result depends on
    assert embeddings_digest(tmp_path / "e") != before


# --------------------------------------------------------------------------------------------
# One line for every known failure
# --------------------------------------------------------------------------------------------
@pytest.fixture
def read_only(monkeypatch):
    """Make writes under the returned folder fail as on a read-only file system (EROFS): chmod
    cannot, as tests may run as root. Creating a folder or opening a file for writing there
    fails; reading does not."""
    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def blocked(path) -> bool:
        return any(os.path.abspath(path).startswith(r) for r in roots)

    def fake_open(path, flags, *args, **kwargs):
        if flags & writing and blocked(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if blocked(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: roots.append(os.path.abspath(folder)) or folder


@pytest.mark.parametrize("existing", [True, False])
def test_read_only_output_folder_is_one_line(tmp_path, capsys, read_only, existing):
    folder = make_scene_audio_task(tmp_path / "tasks")
    out = tmp_path / "ro"
    if existing:
        out.mkdir()
    read_only(out)
    args = ["embed", "--model", "logmel", "--tasks", str(folder), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 2
    line = _error_line(capsys, "embed")
    assert str(out) in line and "Read-only file system" in line
    emb = write_embedded_scene_task(
        tmp_path / "emb", "t", {s: np.ones((4, 2), np.float32) for s in ("train", "valid", "test")},
        {s: [["a"], ["b"]] * 2 for s in ("train", "valid", "test")},
    )  # fmt: skip
    args = ["evaluate", "--embeddings", str(emb), "--out", str(out), "--seeds", "1"]
    assert main([*args, "--max-epochs", "1", "--no-progress"]) == 2
    assert str(out) in _error_line(capsys, "evaluate")
    assert main(["export-heareval", str(emb), "--out", str(out)]) == 2
    assert str(out) in _error_line(capsys, "export-heareval")


def test_full_disk_during_embed_is_one_line(tmp_path, capsys, monkeypatch):
    import mwmae.evaluation.embed as embed_module

    def no_space(path, array):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(embed_module, "atomic_save_npy", no_space)
    folder = make_scene_audio_task(tmp_path / "tasks")
    args = ["embed", "--model", "logmel", "--tasks", str(folder), "--out", str(tmp_path / "e")]
    assert main([*args, "--no-progress"]) == 2
    line = _error_line(capsys, "embed")
    assert str(tmp_path / "e" / "tones") in line and "No space left on device" in line
    assert not list((tmp_path / "e" / "tones").glob("*.done.json"))
    with pytest.raises(OutputError):
        _embed_logmel(tmp_path, folder)


def test_missing_model_path_device_and_module_are_one_line(tmp_path, capsys):
    folder = make_scene_audio_task(tmp_path / "tasks")
    base = ["--tasks", str(folder), "--out", str(tmp_path / "e"), "--no-progress"]
    missing = tmp_path / "nope"
    assert main(["embed", "--model", str(missing), *base]) == 2
    assert f"{missing}: no such model file or folder" in _error_line(capsys, "embed")
    devices = ["cuda:99", "gpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        assert main(["embed", "--model", "logmel", *base, "--device", device]) == 2
        assert f"device {device!r}" in _error_line(capsys, "embed")
        with pytest.raises(ConfigError, match=f"device {device!r}"):
            EvalOptions(device=device)
    emb = tmp_path / "emb"
    assert main(["evaluate", "--model", "logmel", *base[:2], "--out", str(emb), "--device",
                 "cuda:99", "--no-progress"]) == 2  # fmt: skip
    assert "device 'cuda:99'" in _error_line(capsys, "evaluate")
    assert main(["embed", "--model", "x", *base, "--hear-module", "no_such_hear_module"]) == 2
    assert "'no_such_hear_module' cannot be imported" in _error_line(capsys, "embed")
    assert not (tmp_path / "e").exists()  # nothing written for a run that could not start


# --------------------------------------------------------------------------------------------
# Bounded reading
# --------------------------------------------------------------------------------------------
def _npy_bytes(header: dict) -> bytes:
    text = repr(header).encode() + b" "
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def _scene_folder(tmp_path):
    rng = np.random.default_rng(1)
    x, y = blobs(30, 4, 2, rng)
    parts = {"train": x[:10], "valid": x[10:20], "test": x[20:]}
    labels = {s: [["c0"], ["c1"]] * 5 for s in parts}
    return write_embedded_scene_task(tmp_path / "emb", "t", parts, labels)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}),
         "declares a (1000000, 1000000) float32 array (4,000,000,000,000 bytes), the file "
         "holds 0"),
        (_npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (500_000_000, 4)})
         + b"\0" * 64, "the file holds 64 (truncated or damaged)"),
        (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{", "declares 2,147,483,648 bytes"),
        (b"\x93NUMPY\x01\x00", "not a .npy file"),
        (_npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (-4, -1)}), "the shape"),
        (_npy_bytes({"descr": "<f4", "fortran_order": False})[:-1] + b"\n", "unreadable"),
    ],
)  # fmt: skip
def test_npy_headers_are_checked_against_the_bytes_present(tmp_path, peak_bytes, data, expected):
    folder = _scene_folder(tmp_path)
    path = folder / "train.embeddings.npy"
    path.write_bytes(data)
    with pytest.raises(IntegrityError) as info:
        load_split_embeddings(folder, "train")
    assert str(path) in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value) and peak_bytes() < 10e6


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.ones((10, 4), np.complex64), "a complex array (complex64)"),
        (np.array([[None] * 4] * 10, dtype=object), "an object array"),
        (np.zeros(10, dtype=[("a", "<f4"), ("b", "<f4", (3,))]), "a structured array"),
        (np.array([["x"] * 4] * 10), "a non-numeric array (<U1)"),
    ],
)
def test_complex_object_and_structured_arrays_are_refused_by_name(tmp_path, array, kind):
    folder = _scene_folder(tmp_path)
    path = folder / "train.embeddings.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(InputError) as info:
        load_split_embeddings(folder, "train")
    assert str(info.value).startswith(f"{path}: {kind}")
    np.save(path, np.ones((10, 4), ">f8"))  # real numbers of another type and order: read
    assert read_npy(path).dtype == np.dtype(">f8")
    assert load_split_embeddings(folder, "train").embeddings.shape == (10, 4)


def _kit_folder(tmp_path):
    folder = _scene_folder(tmp_path)
    return export_heareval(folder, tmp_path / "kit")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc.", "expected 1099511627776 bytes"),
        (b"\x80\x04\x8d" + struct.pack("<Q", 2**40) + b"abc.", "expected 1099511627776 bytes"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"]\x94.", "a frame of 1,099,511,627,776"),
        (b"\x80\x02]r" + struct.pack("<I", 2**31) + b".", "memo index 2,147,483,648"),
        (b"\x80\x02\xff.", "not a readable label pickle (at position 2, opcode"),
        (b"\x80\x02K\x01K\x02a.", "not a readable label pickle ("),  # APPEND to an int
        (b"\x80\x02K\x05.", "expected a list of label lists, not int"),
        (pickle.dumps([["c0"]] * 9), "9 rows, expected 10"),
        (pickle.dumps([["c0", "c1", "c0"]] * 10), "row 0 is not a list of at most 2 labels"),
        (pickle.dumps([[["c0"]]] * 10), "row 0 holds a label that is not a string or number"),
    ],
)
def test_kit_label_pickles_are_read_in_bounded_memory(tmp_path, peak_bytes, payload, expected):
    kit = _kit_folder(tmp_path)
    path = kit / "valid.target-labels.pkl"
    path.write_bytes(payload)
    with pytest.raises(TaskError) as info:  # MemoryError before, for a pickle declaring 2^40
        load_split_embeddings(kit, "valid")
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    assert "\n" not in str(info.value) and peak_bytes() < 10e6


@pytest.mark.parametrize("dims", ["[10]", "[-10, -4]", "[true, 4]", "[10, 4.5]", "[" * 10**5])
def test_kit_dimensions_are_checked(tmp_path, dims):
    kit = _kit_folder(tmp_path)
    path = kit / "train.embedding-dimensions.json"
    path.write_text(dims)
    with pytest.raises(TaskError) as info:
        load_split_embeddings(kit, "train")
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# The independent references cannot be skipped silently
# --------------------------------------------------------------------------------------------
def test_a_missing_reference_fails_and_skips_only_outside_ci_when_asked(monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match="no_such_reference_module is missing"):
        reference("no_such_reference_module")
    monkeypatch.setenv(SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception):
        reference("no_such_reference_module")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        reference("no_such_reference_module")
    assert reference("json") is json
