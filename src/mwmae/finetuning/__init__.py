"""Fine-tuning (MAE-AST / SSAST / AudioMAE protocol) of pretrained encoders on labelled clips.

from mwmae.finetuning import finetune
run_dir = finetune("finetune_tiny_cpu", ["model=runs/mwmae_tiny/final", "task=tasks/esc"])

`config` holds the `FinetuneConfig` dataclasses and the shipped presets, `data` the task
loading (HEAR folders and manifests), `model` the classifier (fc_norm, head, drop path,
layer-wise lr decay, freezing), `loop` the job. Checkpoints, resume, Ctrl-C, the per-batch
step, the optimiser, DDP and the run log are `mwmae.training`'s.
"""

from .config import (
    DEFAULTS,
    FinetuneConfig,
    build_finetune_config,
    list_finetune_presets,
    load_finetune_config,
)
from .data import FinetuneTask, load_finetune_task
from .loop import aggregate, finetune, predict, results_record
from .model import FinetuneModel, layer_decay_groups, layer_scales, load_encoder

__all__ = [
    "DEFAULTS",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneTask",
    "aggregate",
    "build_finetune_config",
    "finetune",
    "layer_decay_groups",
    "layer_scales",
    "list_finetune_presets",
    "load_encoder",
    "load_finetune_config",
    "load_finetune_task",
    "predict",
    "results_record",
]
