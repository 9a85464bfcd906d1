"""Pretraining: YAML configs, the training loop, DDP, atomic checkpoints and exact resume.

from mwmae.pretraining import pretrain
run_dir = pretrain("mwmae_tiny_cpu", ["data.source=path/to/audio", "schedule.steps=100"])
model = mwmae.from_pretrained(run_dir / "final")
"""

from .checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .config import (
    DEFAULTS,
    apply_overrides,
    dump_yaml,
    find_config,
    list_presets,
    load_config_file,
    resolve_config,
)
from .flops import model_flops_per_sample
from .loop import RunPlan, load_log, masking_noise, plan_run, pretrain, run_dir_for
from .optim import WarmupCosine, build_optimizer, param_groups

__all__ = [
    "DEFAULTS",
    "RunPlan",
    "WarmupCosine",
    "apply_overrides",
    "build_optimizer",
    "dump_yaml",
    "find_config",
    "latest_checkpoint",
    "list_checkpoints",
    "list_presets",
    "load_checkpoint",
    "load_config_file",
    "load_log",
    "masking_noise",
    "model_flops_per_sample",
    "param_groups",
    "plan_run",
    "pretrain",
    "resolve_config",
    "run_dir_for",
    "save_checkpoint",
]
