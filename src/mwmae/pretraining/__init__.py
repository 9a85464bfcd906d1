"""Pretraining: the configuration and the loop of masked-autoencoder pretraining.

from mwmae.pretraining import pretrain
run_dir = pretrain("mwmae_tiny_cpu", ["data.source=path/to/audio", "schedule.steps=100"])
model = mwmae.from_pretrained(run_dir / "final")

`config` holds `PretrainConfig` and its presets, `loop` the job itself. Checkpoints, resume,
Ctrl-C, the per-batch step, the optimiser, DDP and the run log are `mwmae.training`'s; the
names a pretraining user needs from it are re-exported here.
"""

from mwmae.training import (
    CheckpointWriteError,
    StopOnInterrupt,
    TrainingInterrupted,
    WarmupCosine,
    apply_overrides,
    build_optimizer,
    dump_yaml,
    find_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_log,
    param_groups,
    save_checkpoint,
    train_step,
    verify_checkpoint,
)

from .config import (
    DEFAULTS,
    PretrainConfig,
    build_pretrain_config,
    list_pretrain_presets,
    load_pretrain_config,
    resolve_config,
)
from .loop import (
    RunExistsError,
    RunPlan,
    masking_noise,
    plan_run,
    pretrain,
    run_dir_for,
    snapshot_dir,
)

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
    "find_resumable",
    "latest_checkpoint",
    "list_checkpoints",
    "list_pretrain_presets",
    "load_checkpoint",
    "load_log",
    "load_pretrain_config",
    "masking_noise",
    "param_groups",
    "plan_run",
    "pretrain",
    "resolve_config",
    "run_dir_for",
    "save_checkpoint",
    "snapshot_dir",
    "train_step",
    "verify_checkpoint",
]
