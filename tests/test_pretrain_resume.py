"""Verified resume, failed checkpoint writes, and the pretrain CLI (errors, overrides, Ctrl-C)."""

from __future__ import annotations

import errno
import json
import logging
import random
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_pretrain import (  # noqa: F401 (audio_dir is a fixture)
    TINY_MODEL,
    _env,
    assert_same_weights,
    audio_dir,
    final_weights,
    interrupt_cli_run,
    tiny_config,
)

import mwmae
from mwmae._io import sha256_file
from mwmae.errors import IntegrityError, MwmaeError
from mwmae.pretraining import (
    CheckpointWriteError,
    find_resumable,
    load_log,
    pretrain,
    save_checkpoint,
)
from mwmae.training import checkpoint as ckpt


def _two_checkpoints(d: Path) -> torch.nn.Module:
    model = mwmae.create_model(**TINY_MODEL)
    for step in (1, 2):
        state = {"format": 1, "step": step, "rng": {"torch": torch.get_rng_state()}}
        save_checkpoint(d, step, model, state, keep=3)
    return model


def test_meta_records_the_digest_of_every_file(tmp_path):
    d = tmp_path / "checkpoints"
    _two_checkpoints(d)
    step = d / "step_00000002"
    files = json.loads((step / "meta.json").read_text())["files"]
    assert files == {name: sha256_file(step / name) for name in ("model.safetensors", "state.pt")}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "state_truncated": ("state.pt", _truncate),
    "state_empty": ("state.pt", lambda p: p.write_bytes(b"")),
    "state_random": ("state.pt", lambda p: p.write_bytes(random.Random(0).randbytes(4096))),
    "weights_truncated": ("model.safetensors", _truncate),
    "weights_flipped_byte": ("model.safetensors", _flip_byte),
    "state_missing": ("state.pt", lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_newer_checkpoint(tmp_path, caplog, damage):
    d = tmp_path / "checkpoints"
    _two_checkpoints(d)
    name, spoil = DAMAGE[damage]
    spoil(d / "step_00000002" / name)
    with caplog.at_level(logging.WARNING, logger="mwmae.training.checkpoint"):
        found = find_resumable(d)
    assert found.path.name == "step_00000001" and found.state["step"] == 1
    skipped = [r.getMessage() for r in caplog.records if "step_00000002" in r.getMessage()]
    assert skipped and name in skipped[0]


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04" + bytes(64)])
def test_unreadable_state_is_rephrased_without_torch_advice(tmp_path, content):
    """A checkpoint without recorded digests (older runs) is checked by reading: torch's
    message suggesting weights_only=False must never reach the user."""
    d = tmp_path / "checkpoints"
    _two_checkpoints(d)
    for step in ("step_00000001", "step_00000002"):
        meta = d / step / "meta.json"
        meta.write_text(json.dumps({"step": 1}))
        (d / step / "state.pt").write_bytes(content)
    with pytest.raises(IntegrityError) as exc:
        find_resumable(d)
    assert str(exc.value).startswith(str(d)) and "\n" not in str(exc.value)
    with pytest.raises(IntegrityError) as one:
        ckpt.verify_checkpoint(d / "step_00000002")
    assert "state.pt" in str(one.value) and "weights_only" not in str(one.value)


def test_flipped_weight_byte_resumes_from_the_older_checkpoint(tmp_path, audio_dir):  # noqa: F811
    reference = pretrain(tiny_config(tmp_path / "ref", audio_dir), progress=False)
    cfg = tiny_config(tmp_path / "runs", audio_dir)
    run_dir = pretrain(cfg, progress=False)
    newest = run_dir / "checkpoints" / "step_00000006"
    _flip_byte(newest / "model.safetensors")
    # Pretend the run stopped before it finished: resume must redo steps 4-6 from step 3.
    pretrain(cfg, progress=False)
    start = [r for r in load_log(run_dir) if r["event"] == "start"][-1]
    assert start["resumed_from"].endswith("step_00000003") and start["step"] == 3
    assert_same_weights(final_weights(run_dir), final_weights(reference), atol=0.0)


def _failing_writer(real):
    def save_weights(path, tensors, metadata=None, fsync=False):
        Path(path).write_bytes(b"partial")  # some bytes made it to disk, then the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return save_weights


def test_disk_full_leaves_nothing_and_a_later_save_works(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    model = _two_checkpoints(d)
    monkeypatch.setattr(ckpt, "save_weights", _failing_writer(ckpt.save_weights))
    state = {"format": 1, "step": 3, "rng": {"torch": torch.get_rng_state()}}
    with pytest.raises(CheckpointWriteError) as exc:
        save_checkpoint(d, 3, model, state, keep=3)
    assert isinstance(exc.value, OSError) and isinstance(exc.value, MwmaeError)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    message = str(exc.value)
    assert str(d) in message and "bytes needed" in message and "No space left" in message
    needed = int(message.split("about ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > weight_bytes
    assert not list(d.glob(".tmp-step_*")) and not (d / "step_00000003").exists()
    assert (d / "latest").read_text().strip() == "step_00000002"
    monkeypatch.undo()
    # Debris of a killed writer is pruned before the next save and at resume.
    (d / ".tmp-step_00000004-12345").mkdir()
    save_checkpoint(d, 4, model, {**state, "step": 4}, keep=3)
    assert not list(d.glob(".tmp-step_*"))
    (d / ".tmp-step_00000005-12345").mkdir()
    assert find_resumable(d).state["step"] == 4
    assert not list(d.glob(".tmp-step_*"))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_overrides_anywhere_and_resume_flag(tmp_path, audio_dir, capsys):  # noqa: F811
    from mwmae.cli import main

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", audio_dir)))
    argv = ["pretrain", "schedule.steps=3", "--config", str(cfg_path), "--no-progress"]
    assert main([*argv, "schedule.warmup_steps=1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == result["total_steps"] == 3
    # A bare --resume does not swallow the override that follows it.
    cmd = ["pretrain", "--config", "mwmae_tiny_cpu", "--resume", "data.source=/d"]
    assert main([*cmd, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["source"] == "/d"
    # --resume=RUN_DIR: the run folder's config, nothing more to train.
    run_dir = result["run_dir"]
    assert main(["pretrain", f"--resume={run_dir}", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == result["loss"]
    # A bare --resume requires a checkpoint in the configured run folder.
    resume = ["pretrain", "--config", str(cfg_path), "--resume", "--no-progress", "--json"]
    assert main([*resume, "schedule.steps=3", "schedule.warmup_steps=1"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == result["loss"]
    assert main([*resume, f"output.dir={tmp_path / 'empty'}"]) == 2
    assert "nothing to resume: no checkpoint in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_cli_errors_are_one_line_and_bugs_keep_tracebacks(monkeypatch, capsys):
    from mwmae import cli
    from mwmae.commands import pretrain as command

    assert (
        cli.main(["pretrain", "--config", "mwmae_tiny_cpu", "data.source=/d", "schedule.steps=2.5"])
        == 2
    )
    err = capsys.readouterr().err
    assert err == "mwmae pretrain: error: schedule.steps: expected int | null, got 2.5\n"
    assert cli.main(["pretrain", "--config", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("mwmae pretrain: error: no_such_preset: no such config")
        and err.count("\n") == 1
    )
    assert cli.main(["pretrain", "--resume"]) == 2
    assert "--config is required" in capsys.readouterr().err

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(command, "run_pretrain", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["pretrain", "--config", "mwmae_tiny_cpu"])


def test_ctrl_c_checkpoints_and_prints_the_resume_command(tmp_path, audio_dir):  # noqa: F811
    steps = 10
    cfg = tiny_config(
        tmp_path / "runs",
        audio_dir,
        schedule={"steps": steps, "warmup_steps": 3},
        log={"every": 1, "figure_every": 0, "tensorboard": False},
        checkpoint={"every": 100, "keep": 2},
        debug={"step_sleep": 0.25},
    )
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "tiny"
    returncode, err = interrupt_cli_run(
        "pretrain",
        cfg_path,
        lambda: any(r["event"] == "train" for r in _records(run_dir)),
        signal.SIGINT,
        timeout=90,
        what="training step",
    )
    assert returncode == 130, err
    stopped = [r for r in load_log(run_dir) if r["event"] == "interrupted"]
    assert len(stopped) == 1 and 1 <= stopped[0]["step"] < steps
    step = stopped[0]["step"]
    assert (run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors").is_file()
    assert not (run_dir / "final").exists()
    command = next(line for line in err.splitlines() if line.startswith("resume with: "))
    argv = shlex.split(command.removeprefix("resume with: "))
    assert argv[:2] == ["mwmae", "pretrain"]
    from mwmae.cli import main

    assert main([*argv[1:], "--no-progress", "debug.step_sleep=0"]) == 0
    start = [r for r in load_log(run_dir) if r["event"] == "start"][-1]
    assert start["step"] == step and start["resumed_from"].endswith(f"step_{step:08d}")
    reference = pretrain(
        cfg, ["debug.step_sleep=0", f"output.dir={tmp_path / 'ref'}"], progress=False
    )
    assert_same_weights(final_weights(run_dir), final_weights(reference), atol=0.0)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pretraining_does_not_import_analysis():
    code = (
        "import sys, mwmae.pretraining, mwmae.pretraining.loop, mwmae.plotting, "
        "mwmae.commands.pretrain;"
        "print(sorted(m for m in sys.modules if m.startswith('mwmae.analysis')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    from mwmae.analysis import figures
    from mwmae.plotting import save_reconstruction_figure

    assert figures.save_reconstruction_figure is save_reconstruction_figure
