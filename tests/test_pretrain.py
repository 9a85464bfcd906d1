"""Pretraining: configs, schedule, optimiser groups, checkpoints, exact resume, DDP, CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

import mwmae
from mwmae.pretraining import (
    WarmupCosine,
    build_optimizer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_log,
    param_groups,
    plan_run,
    pretrain,
    resolve_config,
    save_checkpoint,
)
from mwmae.training.config import apply_overrides, parse_value

REPO = Path(__file__).resolve().parents[1]
SR = 16000
# A few-thousand-parameter MW-MAE: 8 MW-MHA decoder heads of 4 dims, one block each side.
TINY_MODEL = {
    "name": "mwmae_tiny_4x16",
    "embed_dim": 32,
    "num_heads": 2,
    "depth": 1,
    "decoder_depth": 1,
    "decoder_embed_dim": 32,
}


def write_audio(folder: Path, n: int = 10, bad: bool = True) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        dur = [0.6, 2.5, 1.4, 3.0, 1.0][i % 5]
        t = np.arange(int(SR * dur)) / SR
        x = 0.3 * np.sin(2 * np.pi * (120 + 70 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"clip{i:02d}.wav", x.astype(np.float32), SR)
    if bad:
        (folder / "clip03b_corrupt.wav").write_bytes(b"RIFF....garbage")
        sf.write(folder / "clip07b_nan.wav", np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    return folder


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return write_audio(tmp_path_factory.mktemp("audio"))


def tiny_config(out: Path, source: Path, **sections) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 1,
        "model": dict(TINY_MODEL),
        "data": {"source": str(source), "num_workers": 0},
        "optim": {"base_lr": 0.05},  # peak lr 0.05 * 4 / 256 ~ 8e-4
        "schedule": {"steps": 6, "warmup_steps": 2},
        "batch": {"global_size": 4},
        "train": {"num_threads": 1},
        "log": {"every": 2, "figure_every": 0, "tensorboard": False},
        "checkpoint": {"every": 3, "keep": 2},
        "output": {"dir": str(out)},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 0.0, rel_l2: float = 0.0) -> None:
    """max |a - b| <= atol and ||a - b|| / ||a|| <= rel_l2 over all weights (0: bit-identical)."""
    assert a.keys() == b.keys()
    va = torch.cat([a[k].double().flatten() for k in sorted(a)])
    vb = torch.cat([b[k].double().flatten() for k in sorted(a)])
    worst = float((va - vb).abs().max())
    assert worst <= atol, f"max abs diff {worst} > {atol}"
    rel = float((va - vb).norm() / va.norm())
    assert rel <= rel_l2, f"relative L2 diff {rel} > {rel_l2}"


# Same global batch computed in a different float summation order (one batch of 4 vs two of 2):
# most weights agree exactly (median diff 0), relative L2 ~5e-7 after 6 steps; single weights
# may move by a fraction of the lr (peak 7.8e-4) where a near-zero gradient changes sign under
# Adam's normalisation, measured up to 2.7e-5 over seeds 1-3.
ORDER_ATOL, ORDER_REL_L2 = 1e-4, 1e-5


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def test_paper_presets_match_spec():
    cfg = resolve_config("mwmae_base_4x16", ["data.source=/x"])
    assert cfg["model"] == {"name": "mwmae_base_4x16"}
    o = cfg["optim"]
    assert (o["base_lr"], o["betas"], o["eps"], o["weight_decay"]) == (
        1.5e-5,
        [0.9, 0.999],
        1e-8,
        0.05,
    )
    assert isinstance(o["eps"], float) and o["decay_exclude"] is False
    assert o["clip_grad_norm"] is None
    assert cfg["batch"]["global_size"] == 1024
    assert (cfg["schedule"]["epochs"], cfg["schedule"]["warmup_epochs"]) == (100, 10)
    plan = plan_run(cfg, dataset_size=2_032_320)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (1984, 198_400, 19_840)
    assert plan.peak_lr == pytest.approx(6e-5)
    mae = resolve_config("mae_base_4x16", ["data.source=/x"])
    assert mae["model"]["name"] == "mae_base_4x16" and mae["name"] == "mae_base_4x16"
    assert {k: v for k, v in mae.items() if k not in ("model", "name")} == {
        k: v for k, v in cfg.items() if k not in ("model", "name")
    }
    # DDP: 8 ranks share the 1024 batch; the lr depends on the global batch only.
    plan8 = plan_run(cfg, 2_032_320, world_size=8)
    assert plan8.micro_batch == 128 and plan8.peak_lr == plan.peak_lr
    tiny = resolve_config("mwmae_tiny_cpu", ["data.source=/x"])
    assert tiny["model"]["name"] == "mwmae_tiny_4x16" and tiny["schedule"]["steps"] == 1000
    mae_tiny = resolve_config("mae_tiny_cpu", ["data.source=/x"])
    assert mae_tiny["model"] == {**tiny["model"], "name": "mae_tiny_4x16"}


def test_overrides_and_validation(tmp_path):
    assert parse_value("1e-4") == 1e-4 and parse_value("[0.9, 0.95]") == [0.9, 0.95]
    assert parse_value("null") is None and parse_value("true") is True
    cfg = resolve_config(
        "mwmae_tiny_cpu",
        [
            "optim.base_lr=1e-4",
            "data.fraction=0.1",
            "data.source=/d",
            "model.depth=2",
            "schedule.steps=null",
            "schedule.epochs=3",
        ],
    )
    assert cfg["optim"]["base_lr"] == 1e-4 and cfg["data"]["fraction"] == 0.1
    assert cfg["model"]["depth"] == 2 and cfg["schedule"]["steps"] is None
    with pytest.raises(ValueError, match="did you mean 'optim.base_lr'"):
        resolve_config("mwmae_tiny_cpu", ["data.source=/d", "optim.base_rl=1"])
    with pytest.raises(ValueError, match="batch.global_size: expected int"):
        resolve_config("mwmae_tiny_cpu", ["data.source=/d", "batch.global_size=abc"])
    with pytest.raises(ValueError, match="data.source is not set"):
        resolve_config("mwmae_tiny_cpu")
    with pytest.raises(ValueError, match="fraction"):
        resolve_config("mwmae_tiny_cpu", ["data.source=/d", "data.fraction=1.5"])
    with pytest.raises(ValueError, match="unknown model config keys"):
        resolve_config("mwmae_tiny_cpu", ["data.source=/d", "model.depht=2"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["optim.base_lr"])
    # base: inheritance relative to the file, and the child's name.
    (tmp_path / "child.yaml").write_text(
        f"base: {REPO / 'configs/pretrain/mwmae_tiny_cpu.yaml'}\noptim:\n  base_lr: 2.0e-3\n"
    )
    child = resolve_config(tmp_path / "child.yaml", ["data.source=/d"])
    assert child["name"] == "child" and child["optim"]["base_lr"] == 2e-3
    assert child["model"]["depth"] == 4


def test_every_shipped_config_resolves():
    names = sorted(p.stem for p in (REPO / "configs" / "pretrain").glob("*.yaml"))
    assert {"mwmae_base_4x16", "mae_base_4x16", "mwmae_tiny_cpu", "mae_tiny_cpu"} <= set(names)
    for name in names:
        cfg = resolve_config(name, ["data.source=/x"])
        assert cfg["name"] == name
        mwmae.models.preset_config(cfg["model"]["name"])


# --------------------------------------------------------------------------------------------
# Schedule and optimiser
# --------------------------------------------------------------------------------------------
def test_warmup_cosine_schedule():
    s = WarmupCosine(6e-5, warmup_steps=10, total_steps=110)
    assert s(0) == 0.0 and s(5) == pytest.approx(3e-5) and s(10) == pytest.approx(6e-5)
    assert s(60) == pytest.approx(3e-5) and s(110) == pytest.approx(0.0, abs=1e-20)
    assert s(35) == pytest.approx(6e-5 * 0.5 * (1 + math.cos(math.pi * 25 / 100)))
    lrs = [s(i) for i in range(111)]
    assert all(b >= a for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert all(b <= a for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    s2 = WarmupCosine(1.0, 1, 2)
    s2.load_state_dict(s.state_dict())
    assert s2(35) == s(35)


def test_param_groups_and_decoupled_decay():
    model = mwmae.create_model(**TINY_MODEL)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = param_groups(model, 0.05)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(trainable)
    decay, no_decay = param_groups(model, 0.05, decay_exclude=True)
    names = {id(p): n for n, p in model.named_parameters()}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert {"pos_embed", "decoder_pos_embed", "mask_token"} <= excluded
    assert "blocks.0.norm1.weight" in excluded and "blocks.0.attn.qkv.bias" in excluded
    assert any(".rel_pos_bias." in n for n in excluded)
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    # Decoupled decay (optax.adamw): with zero gradient, p <- p - lr * wd * p.
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(torch.nn.ParameterList([p]), lr=0.1, weight_decay=0.05)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.1 * 0.05))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def test_checkpoints_atomic_keep_and_safe_load(tmp_path):
    model = mwmae.create_model(**TINY_MODEL)
    opt = build_optimizer(model, lr=1e-3)
    model(torch.randn(2, 1, 200, 80)).loss.backward()
    opt.step()
    state = {
        "format": 1,
        "step": 0,
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    d = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(d, step, model, {**state, "step": step}, keep=2)
    assert [p.name for p in list_checkpoints(d)] == ["step_00000002", "step_00000003"]
    assert latest_checkpoint(d).name == "step_00000003"
    # Debris from a run killed mid-write is never picked up.
    (d / ".tmp-step_00000009-1").mkdir()
    (d / "step_00000010").mkdir()
    (d / "step_00000010" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(d).name == "step_00000003"
    (d / "latest").write_text("step_00000010\n")  # pointer to an incomplete folder: ignored
    assert latest_checkpoint(d).name == "step_00000003"
    fresh = mwmae.create_model(**TINY_MODEL)
    loaded = load_checkpoint(latest_checkpoint(d), fresh)
    assert loaded["step"] == 3
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # state.pt is plain tensors and containers: loadable without unpickling arbitrary code.
    torch.load(d / "step_00000003" / "state.pt", weights_only=True)
    opt2 = build_optimizer(fresh, lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
def test_run_end_to_end(tmp_path, audio_dir):
    cfg = tiny_config(
        tmp_path / "runs", audio_dir, log={"every": 2, "figure_every": 3, "tensorboard": True}
    )
    run_dir = pretrain(cfg, ["optim.clip_grad_norm=1.0"], progress=False)
    assert run_dir == tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == json.loads((run_dir / "config.json").read_text())
    assert saved["optim"]["clip_grad_norm"] == 1.0
    assert resolve_config(run_dir / "config.yaml") == saved  # the saved config runs as is
    records = load_log(run_dir)
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(0.05 * 4 / 256 * 1 / 2)  # lr at step 1 (0-based)
    assert "grad_norm" in train[0]
    # 12 files, 2 bad: 6 steps x 4 clips = 24 positions cover the bad ones twice.
    end = records[-1]
    assert end["event"] == "end" and end["skipped_total"] == 4
    named = {Path(n).name for r in train for n in r.get("bad_files", [])}
    assert named == {"clip03b_corrupt.wav", "clip07b_nan.wav"}
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "step_00000003",
        "step_00000006",
    ]
    model = mwmae.from_pretrained(run_dir / "final")
    assert model.config.embed_dim == 32
    ckpt = load_file(str(run_dir / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert_same_weights(ckpt, final_weights(run_dir))
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    if importlib.util.find_spec("mwmae.analysis.figures") is not None:
        assert [p.name for p in sorted((run_dir / "figures").glob("*.png"))] == [
            "reconstruction_step_00000003.png",
            "reconstruction_step_00000006.png",
        ]
    # Auto-resume of a finished run: no training, same weights, exported again.
    before = final_weights(run_dir)
    pretrain(cfg, ["optim.clip_grad_norm=1.0", "log.every=1"], progress=False)
    assert_same_weights(before, final_weights(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["loss"] == train[-1]["loss"] and summary["step"] == 6
    # Resuming with different training settings is refused; refusing to resume too.
    with pytest.raises(ValueError, match="optim.clip_grad_norm: 1.0 -> None"):
        pretrain(cfg, progress=False)
    with pytest.raises(FileExistsError):
        pretrain(cfg, ["optim.clip_grad_norm=1.0"], progress=False, resume=False)


def test_accumulation_matches_one_big_batch(tmp_path, audio_dir):
    """Same global batch, 2 micro-batches: the same run up to float summation order."""
    one = pretrain(tiny_config(tmp_path / "a", audio_dir), progress=False)
    two = pretrain(
        tiny_config(tmp_path / "b", audio_dir, batch={"global_size": 4, "accum_steps": 2}),
        progress=False,
    )
    assert_same_weights(final_weights(one), final_weights(two), ORDER_ATOL, ORDER_REL_L2)
    la = [r["loss"] for r in load_log(one) if r["event"] == "train"]
    lb = [r["loss"] for r in load_log(two) if r["event"] == "train"]
    np.testing.assert_allclose(la, lb, rtol=1e-4)


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def interrupt_cli_run(
    command: str,
    cfg_path: Path,
    ready,
    sig: int,
    timeout: float,
    what: str,
    settle: float = 0.0,
) -> tuple[int, str]:
    """Run `mwmae COMMAND --config CFG --no-progress` in a subprocess, wait until `ready()`
    (failing if the process dies or `timeout` s pass: "no WHAT within T s"), wait `settle` s
    more, send `sig`; returns (exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mwmae", command, "--config", str(cfg_path), "--no-progress"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, f"no {what} within {timeout:g} s"
            time.sleep(0.05)
        time.sleep(settle)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_sigkill_and_resume_is_bit_identical(tmp_path, audio_dir):
    steps = 10
    cfg = tiny_config(
        tmp_path / "runs",
        audio_dir,
        schedule={"steps": steps, "warmup_steps": 3},
        checkpoint={"every": 4, "keep": 3},
        debug={"step_sleep": 0.25},
    )
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "tiny"
    returncode, _ = interrupt_cli_run(
        "pretrain",
        cfg_path,
        lambda: (run_dir / "checkpoints" / "step_00000004").is_dir(),
        signal.SIGKILL,
        timeout=90,
        what="checkpoint",
        settle=0.6,  # between checkpoints, a couple of steps past step 4
    )
    assert returncode == -signal.SIGKILL
    assert not (run_dir / "final").exists()
    killed_at = max(r["step"] for r in load_log(run_dir) if r["event"] == "train")
    assert 4 <= killed_at < steps
    resumed = pretrain(cfg_path, ["debug.step_sleep=0"], progress=False)  # auto-resume
    starts = [r for r in load_log(resumed) if r["event"] == "start"]
    assert starts[-1]["resumed_from"].endswith("step_00000004") and starts[-1]["step"] == 4
    reference = pretrain(
        cfg, ["debug.step_sleep=0", f"output.dir={tmp_path / 'ref'}"], progress=False
    )
    assert_same_weights(final_weights(resumed), final_weights(reference), atol=0.0)
    # The log's losses after the resume match the uninterrupted run's too.
    loss = {r["step"]: r["loss"] for r in load_log(reference) if r["event"] == "train"}
    after = [r for r in load_log(resumed) if r["event"] == "train" and r["step"] > 4]
    assert after and all(r["loss"] == loss[r["step"]] for r in after)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_match_one_process(tmp_path, audio_dir):
    """torchrun, 2 gloo ranks x 2 clips = one process with the global batch of 4.

    Expected: ranks bit-identical to each other; bit-identical to one process that
    accumulates 2 micro-batches of 2 (same micro-batches, gradients g1 / 2 + g2 / 2 both ways,
    halving is exact in floating point); equal to one process with a single batch of 4 within
    ORDER_ATOL / ORDER_REL_L2 (float summation order).
    """
    cfg = tiny_config(
        tmp_path / "ddp", audio_dir, log={"every": 1, "figure_every": 0, "tensorboard": False}
    )
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--nnodes",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "mwmae",
        "pretrain",
        "--config",
        str(cfg_path),
        "--no-progress",
        "--json",
    ]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp" / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replica_max_abs_diff"] == 0.0
    start = next(r for r in load_log(run_dir) if r["event"] == "start")
    assert start["plan"]["micro_batch"] == 2 and start["world_size"] == 2
    accum = pretrain(
        tiny_config(tmp_path / "accum", audio_dir, batch={"global_size": 4, "accum_steps": 2}),
        progress=False,
    )
    assert_same_weights(final_weights(run_dir), final_weights(accum), atol=0.0)
    single = pretrain(tiny_config(tmp_path / "single", audio_dir), progress=False)
    assert_same_weights(final_weights(run_dir), final_weights(single), ORDER_ATOL, ORDER_REL_L2)
    # Bad clips are counted over both ranks: the same total as one process.
    assert summary["skipped_total"] == load_log(single)[-1]["skipped_total"] > 0


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def test_cli_help_print_config_and_shards(tmp_path, audio_dir, capsys):
    from mwmae.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--help"])
    assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out
    assert (
        main(
            [
                "pretrain",
                "--config",
                "mwmae_base_4x16",
                "data.source=/d",
                "optim.base_lr=1e-4",
                "--print-config",
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["base_lr"] == 1e-4 and printed["batch"]["global_size"] == 1024
    assert main(["pretrain", "--config", "mwmae_tiny_cpu"]) == 2  # no data.source
    assert "data.source" in capsys.readouterr().err
    out = tmp_path / "shards"
    assert (
        main(
            [
                "prepare-shards",
                str(audio_dir),
                str(out),
                "--logmel",
                "--samples-per-shard",
                "4",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_clips"] == 10 and len(summary["skipped"]) == 2
    # Train from the log-mel shards through the CLI.
    cfg = tiny_config(
        tmp_path / "runs",
        out,
        schedule={"steps": 2, "warmup_steps": 1},
        log={"every": 1, "figure_every": 0, "tensorboard": False},
    )
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["pretrain", "--config", str(cfg_path), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 2 and result["skipped_total"] == 0
    assert mwmae.from_pretrained(Path(result["run_dir"]) / "final").config.depth == 1
    # --resume RUN_DIR alone: the config comes from the run folder.
    assert main(["pretrain", "--resume", result["run_dir"], "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["step"] == 2 and again["loss"] == result["loss"]


def test_dataset_statistics_are_computed_and_kept(tmp_path, audio_dir):
    cfg = tiny_config(
        tmp_path, audio_dir, data={"normalize": "dataset"}, schedule={"steps": 1, "warmup_steps": 0}
    )
    run_dir = pretrain(cfg, progress=False)
    saved = json.loads((run_dir / "config.json").read_text())["data"]
    assert isinstance(saved["mean"], float) and saved["std"] > 0
    assert -20 < saved["mean"] < 5  # natural-log mel power of quiet tones
    pretrain(cfg, progress=False)  # resuming takes the stored statistics: no mismatch
