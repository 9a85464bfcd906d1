"""The shared training runtime: divergence never writes weights, one writer per run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pretrain import REPO, audio_dir, tiny_config  # noqa: F401 (audio_dir is a fixture)

import mwmae
from mwmae._io import load_weights, save_weights
from mwmae.errors import ConfigError, IntegrityError, NonFiniteError, RunLockedError
from mwmae.pretraining import list_checkpoints, load_log, pretrain
from mwmae.training import checkpoint as ckpt
from mwmae.training.lock import LOCK_FILE, run_lock

pytestmark = pytest.mark.usefixtures("one_thread")


def _all_finite(path: Path) -> bool:
    weights, _ = load_weights(path)  # raises IntegrityError for NaN/Inf
    return all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point())


def test_diverging_run_keeps_its_good_checkpoints(tmp_path, audio_dir):  # noqa: F811
    # The case: checkpoints every 2 steps, keep 2, the loss read every 10 steps.
    cfg = tiny_config(
        tmp_path,
        audio_dir,
        optim={"base_lr": 1e4},
        schedule={"steps": 12, "warmup_steps": 0},
        log={"every": 10, "figure_every": 0, "tensorboard": False},
        checkpoint={"every": 2, "keep": 2},
    )
    with pytest.raises(NonFiniteError) as exc:
        pretrain(cfg, progress=False)
    message = str(exc.value)
    run_dir = tmp_path / "tiny"
    kept = list_checkpoints(run_dir / "checkpoints")
    assert kept, "the steps before the divergence were checkpointed"
    assert "\n" not in message and " at step " in message
    assert f"last good checkpoint: {kept[-1]}" in message and "optim.base_lr" in message
    bad_step = int(message.split(" at step ")[1].split(";")[0])
    assert int(kept[-1].name.split("_")[1]) < bad_step  # written before the divergence
    assert all(_all_finite(p / ckpt.MODEL_FILE) for p in kept)
    assert not (run_dir / "final").exists()
    assert not [r for r in load_log(run_dir) if r["event"] == "train"]  # no NaN log record
    # Run again: it resumes from the last good checkpoint (and, the same run, diverges again).
    with pytest.raises(NonFiniteError):
        pretrain(cfg, progress=False)
    start = [r for r in load_log(run_dir) if r["event"] == "start"][-1]
    assert start["resumed_from"] == str(kept[-1])


def test_diverging_finetune_reports_no_score(tmp_path):
    from test_finetune import TINY_MODEL, config, make_task

    torch.manual_seed(0)
    model = mwmae.create_model(**TINY_MODEL).save_pretrained(tmp_path / "model")
    cfg = config(tmp_path / "ft", model, make_task(tmp_path / "task"), optim={"base_lr": 1e30})
    with pytest.raises(NonFiniteError) as exc:
        mwmae.finetuning.finetune(cfg, progress=False)
    assert " at step " in str(exc.value) and "\n" not in str(exc.value)
    run_dir = tmp_path / "ft" / "run"
    assert not (run_dir / "results.json").exists()
    for best in run_dir.rglob("best.safetensors"):
        assert _all_finite(best)
    for fold in run_dir.glob("seed_*/*"):
        records = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
        assert all(r["loss"] == r["loss"] for r in records if r["event"] == "train")


def test_non_finite_weights_are_never_written_nor_loaded(tmp_path):
    weights = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("nan")])}
    with pytest.raises(NonFiniteError, match="'b' holds NaN or Inf"):
        save_weights(tmp_path / "w.safetensors", weights)
    assert not (tmp_path / "w.safetensors").exists()
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "x.safetensors"))  # written by someone else
    with pytest.raises(IntegrityError, match="'b' holds NaN or Inf"):
        load_weights(tmp_path / "x.safetensors")


def test_run_name_must_be_a_plain_name():
    from mwmae.pretraining import load_pretrain_config

    for bad in ("../x", "/abs/path", "a/b", ".."):
        with pytest.raises(ConfigError, match="output.run_name: expected a plain folder name"):
            load_pretrain_config("mwmae_tiny_cpu", ["data.source=/d", f"output.run_name={bad}"])


_HOLD = """
import sys, time
from pathlib import Path
from mwmae.training.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _env() -> dict[str, str]:
    path = str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_refuses_a_second_writer(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError, match=f"in use by pid {proc.pid} on "):
            with run_lock(tmp_path / "run"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == proc.pid
    with caplog.at_level("WARNING", logger="mwmae.training.lock"):
        with run_lock(tmp_path / "run"):
            held = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
            assert held["pid"] == os.getpid()
    assert any(f"pid {proc.pid}" in r.getMessage() and "gone" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # a clean end empties it
    with run_lock(tmp_path / "run"):  # and the next run takes it without a warning
        pass


def test_two_pretrain_processes_on_one_run_folder(tmp_path, audio_dir):  # noqa: F811
    cfg = tiny_config(tmp_path, audio_dir, debug={"step_sleep": 0.5}, schedule={"steps": 30})
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(cfg))
    code = (
        "import json, sys; from mwmae.pretraining import pretrain; "
        "pretrain(json.load(open(sys.argv[1])), progress=False)"
    )
    first = subprocess.Popen([sys.executable, "-c", code, str(cfg_path)], env=_env())
    try:
        lock = tmp_path / "tiny" / LOCK_FILE
        deadline = time.time() + 60
        while time.time() < deadline and not (lock.is_file() and lock.read_text()):
            time.sleep(0.1)
        with pytest.raises(RunLockedError, match=f"pid {first.pid}"):
            pretrain(cfg, progress=False)
    finally:
        first.kill()
        first.wait()
