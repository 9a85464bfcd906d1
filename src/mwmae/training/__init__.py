"""The training runtime that pretraining and fine-tuning share.

- `config`: YAML presets + dotted overrides, the sections every job has (train, checkpoint,
  output, ddp, debug) and the bases of optim and schedule, saving and comparing run configs;
- `checkpoint`: atomic, digest-verified checkpoints in one training-state format, resume from
  the newest one that verifies, `due` ("should I log / save now");
- `distributed`: torchrun / DDP helpers;
- `step`: the micro-batched optimiser step under autocast;
- `optim`: AdamW (with per-group lr scales), parameter groups, warm-up + cosine;
- `runlog`: the run's JSON-lines log, TensorBoard scalars and progress bar;
- `runtime`: the job's session (threads, process group, device), the `Trainer` every loop
  steps, checkpoints and watches for divergence, and Ctrl-C handling;
- `lock`: one writer per run folder.

`mwmae.pretraining` and `mwmae.finetuning` keep only what is theirs (data, model head, loop
body) and import nothing from each other.
"""

from .checkpoint import (
    CheckpointWriteError,
    Loaded,
    due,
    find_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_state,
    save_checkpoint,
    save_state,
    verify_checkpoint,
)
from .config import (
    CheckpointConfig,
    DDPConfig,
    DebugConfig,
    OptimConfig,
    OutputConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    check_resume_config,
    dump_yaml,
    find_config,
    list_presets,
    load_config_file,
    load_raw,
    parse_value,
    save_config,
)
from .distributed import DistInfo
from .lock import run_lock
from .optim import LayerScaledAdamW, WarmupCosine, adamw, build_optimizer, param_groups
from .runlog import RunLog, load_log
from .runtime import StopOnInterrupt, Trainer, TrainingInterrupted, session, stop_requested
from .step import autocast, micro_batch_rows, train_step

__all__ = [
    "CheckpointConfig",
    "CheckpointWriteError",
    "DDPConfig",
    "DebugConfig",
    "DistInfo",
    "LayerScaledAdamW",
    "Loaded",
    "OptimConfig",
    "OutputConfig",
    "RunLog",
    "ScheduleConfig",
    "StopOnInterrupt",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "WarmupCosine",
    "adamw",
    "apply_overrides",
    "autocast",
    "build_optimizer",
    "due",
    "dump_yaml",
    "find_config",
    "find_resumable",
    "latest_checkpoint",
    "list_checkpoints",
    "list_presets",
    "load_checkpoint",
    "load_config_file",
    "load_log",
    "load_raw",
    "micro_batch_rows",
    "param_groups",
    "parse_value",
    "restore_state",
    "check_resume_config",
    "run_lock",
    "save_checkpoint",
    "save_config",
    "save_state",
    "session",
    "stop_requested",
    "train_step",
    "verify_checkpoint",
]
