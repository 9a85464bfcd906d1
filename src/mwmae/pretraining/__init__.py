"""Pretraining: YAML configs, the training loop, DDP, atomic checkpoints and exact resume.

from mwmae.pretraining import pretrain
run_dir = pretrain("mwmae_tiny_cpu", ["data.source=path/to/audio", "schedule.steps=100"])
model = mwmae.from_pretrained(run_dir / "final")

`config` holds the configuration dataclasses and the generic load/override functions,
`step` the per-batch `train_step` and Ctrl-C handling (both reusable by fine-tuning),
`loop` the job itself, `checkpoint` the verified, atomic checkpoints.
"""

from .checkpoint import (
    CheckpointWriteError,
    find_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from .config import (
    DEFAULTS,
    PretrainConfig,
    apply_overrides,
    build_pretrain_config,
    dump_yaml,
    find_config,
    list_presets,
    load_config_file,
    load_pretrain_config,
    resolve_config,
)
from .flops import model_flops_per_sample
from .loop import (
    RunExistsError,
    RunPlan,
    load_log,
    masking_noise,
    plan_run,
    pretrain,
    run_dir_for,
    snapshot_dir,
)
from .optim import WarmupCosine, build_optimizer, param_groups
from .step import StopOnInterrupt, TrainingInterrupted, train_step

__all__ = [
    "DEFAULTS",
    "CheckpointWriteError",
    "PretrainConfig",
    "RunExistsError",
    "RunPlan",
    "StopOnInterrupt",
    "TrainingInterrupted",
    "WarmupCosine",
    "apply_overrides",
    "build_optimizer",
    "build_pretrain_config",
    "dump_yaml",
    "find_config",
    "find_resumable",
    "latest_checkpoint",
    "list_checkpoints",
    "list_presets",
    "load_checkpoint",
    "load_config_file",
    "load_log",
    "load_pretrain_config",
    "masking_noise",
    "model_flops_per_sample",
    "param_groups",
    "plan_run",
    "pretrain",
    "resolve_config",
    "run_dir_for",
    "snapshot_dir",
    "save_checkpoint",
    "train_step",
    "verify_checkpoint",
]
