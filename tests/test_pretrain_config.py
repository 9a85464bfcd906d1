"""Pretraining configuration: frozen sections, types and ranges of every numeric field."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from test_pretrain import audio_dir, tiny_config  # noqa: F401 (audio_dir is a fixture)

from mwmae._config import to_dict
from mwmae.errors import ConfigError
from mwmae.pretraining import (
    PretrainConfig,
    build_pretrain_config,
    load_pretrain_config,
    pretrain,
    resolve_config,
)

BASE = ["data.source=/d"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("schedule.steps=2.5", "schedule.steps: expected int"),
        ("schedule.steps=abc", "schedule.steps: expected int"),
        ("schedule.steps=0", "schedule.steps: 0 is out of range (expected a value >= 1)"),
        ("schedule.warmup_steps=-1", "schedule.warmup_steps: -1 is out of range"),
        ("schedule.warmup_steps=1.5", "schedule.warmup_steps: expected int"),
        ("schedule.epochs=0", "schedule.epochs: 0.0 is out of range (expected a value > 0)"),
        ("optim.base_lr=0", "optim.base_lr: 0.0 is out of range (expected a value > 0)"),
        ("optim.base_lr=-1e-4", "optim.base_lr: -0.0001 is out of range"),
        ("optim.base_lr=fast", "optim.base_lr: expected float"),
        ("optim.eps=0", "optim.eps: 0.0 is out of range (expected a value > 0)"),
        ("optim.weight_decay=-0.1", "optim.weight_decay: -0.1 is out of range"),
        ("optim.betas=[0.9,1.0]", "optim.betas: (0.9, 1.0) is out of range"),
        ("optim.betas=[-0.1,0.9]", "optim.betas: (-0.1, 0.9) is out of range"),
        ("optim.betas=[0.9]", "optim.betas: expected two numbers in [0, 1)"),
        ("optim.clip_grad_norm=0", "optim.clip_grad_norm: 0.0 is out of range"),
        ("batch.global_size=0", "batch.global_size: 0 is out of range (expected a value >= 1)"),
        ("batch.global_size=8.0", "batch.global_size: expected int"),
        ("batch.accum_steps=0", "batch.accum_steps: 0 is out of range"),
        ("data.num_workers=-1", "data.num_workers: -1 is out of range"),
        ("data.fraction=0", "data.fraction: 0.0 is out of range"),
        ("log.every=-1", "log.every: -1 is out of range"),
        ("checkpoint.keep=0", "checkpoint.keep: 0 is out of range"),
        ("train.device=tpu", "train.device: expected one of 'auto' | 'cpu' | 'cuda'"),
        ("ddp.timeout_s=0", "ddp.timeout_s: 0.0 is out of range"),
        ("seed=-1", "seed: -1 is out of range"),
        (
            "model.mask_ratio=0",
            "model.mask_ratio: 0.0 is out of range (expected 0 < mask_ratio < 1)",
        ),
        (
            "model.mask_ratio=1",
            "model.mask_ratio: 1.0 is out of range (expected 0 < mask_ratio < 1)",
        ),
        ("model.depth=x", "model.depth: expected int, got 'x'"),
        ("model.depth=0", "model.depth: 0 is out of range (expected depth >= 1)"),
        ("model.depht=2", "did you mean 'model.depth'?"),
        ("model.name=mwmae_tiny_4x61", "model.name: unknown model preset 'mwmae_tiny_4x61'"),
        ("optim.base_rl=1", "unknown config key 'optim.base_rl'; did you mean 'optim.base_lr'?"),
        ("optimizer.base_lr=1", "unknown config key 'optimizer'; did you mean 'optim'?"),
    ],
)
def test_bad_values_name_the_key_and_the_rule(override, expected):
    with pytest.raises(ConfigError) as exc:
        load_pretrain_config("mwmae_tiny_cpu", [*BASE, override])
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_sections_are_frozen_typed_and_round_trip(tmp_path):
    cfg = load_pretrain_config("mwmae_tiny_cpu", [*BASE, "optim.base_lr=1e-4", "model.depth=2"])
    assert isinstance(cfg, PretrainConfig)
    assert cfg.optim.base_lr == 1e-4 and isinstance(cfg.optim.base_lr, float)
    assert cfg.schedule.steps == 1000 and isinstance(cfg.schedule.steps, int)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.model.name == "mwmae_tiny_4x16"
    assert cfg.model.overrides["depth"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.base_lr = 1.0
    # The plain form (what is saved in a run folder) builds the same config again.
    assert build_pretrain_config(to_dict(cfg)) == cfg
    assert resolve_config(cfg) == to_dict(cfg)
    # Paths from Python code are kept as text (what the saved config holds).
    as_path = load_pretrain_config({"data": {"source": tmp_path}, "output": {"dir": tmp_path}})
    assert as_path.data.source == str(tmp_path) and as_path.output.dir == str(tmp_path)
    # YAML 1.1 reads `1e-4` (no dot) as a string; config files read it as a number.
    path = tmp_path / "c.yaml"
    path.write_text("base: mwmae_tiny_cpu\noptim:\n  base_lr: 1e-4\n  eps: 1e-6\n")
    from_file = load_pretrain_config(path, BASE)
    assert (from_file.optim.base_lr, from_file.optim.eps) == (1e-4, 1e-6)
    assert from_file.name == "c" and from_file.model["depth"] == 4


def test_global_batch_larger_than_dataset_is_warned(tmp_path, audio_dir, caplog):  # noqa: F811
    cfg = tiny_config(
        tmp_path, audio_dir, batch={"global_size": 16}, schedule={"steps": 1, "warmup_steps": 0}
    )
    with caplog.at_level(logging.WARNING, logger="mwmae.pretraining.loop"):
        pretrain(cfg, progress=False)
    warned = [r.getMessage() for r in caplog.records if "larger than the dataset" in r.message]
    assert warned and "16" in warned[0] and "(12 clips)" in warned[0]
