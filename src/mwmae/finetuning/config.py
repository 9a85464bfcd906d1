"""Fine-tuning configuration: a frozen `FinetuneConfig` built by `mwmae._config.build`.

Made as every training config (`mwmae.training.config`): a YAML file or shipped preset
(following `base:`), then dotted `key=value` overrides, then `build` with key/type/range checks.
The sections `train`, `checkpoint`, `output`, `ddp` and `debug` are the shared ones (with
fine-tuning's defaults), `optim` and `schedule` extend the shared bases.

    cfg = load_finetune_config("finetune_tiny_cpu", ["model=runs/x/final", "task=tasks/esc"])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mwmae._config import bounds, build, to_dict
from mwmae.errors import ConfigError
from mwmae.training import config as shared

PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class HeadConfig:
    pool: Literal["auto", "mean", "cls"] = "auto"  # auto: cls token if the model has one
    fc_norm: bool = True  # LayerNorm on the pooled vector (AudioMAE's fc_norm)
    init_std: float = field(default=2e-5, metadata=bounds(gt=0))  # head weights (AudioMAE)
    drop_path: float = field(default=0.1, metadata=bounds(ge=0, lt=1))  # max rate, last block
    layer_decay: float = field(default=0.75, metadata=bounds(gt=0, le=1))
    freeze_blocks: int | Literal["all"] = 0  # freeze embeddings + first k blocks; all: probe


@dataclass(frozen=True)
class FinetuneOptimConfig(shared.OptimConfig):
    base_lr: float = field(default=1e-3, metadata=bounds(gt=0))  # lr = base_lr * batch / 256


@dataclass(frozen=True)
class FinetuneScheduleConfig(shared.ScheduleConfig):
    epochs: float = field(
        default=60.0, metadata=bounds(gt=0, limit=shared.MAX_STEPS)
    )  # when steps is null
    warmup_epochs: float = field(default=4.0, metadata=bounds(ge=0, limit=shared.MAX_STEPS))


@dataclass(frozen=True)
class FinetuneBatchConfig:
    size: int = field(
        default=32, metadata=bounds(ge=1, limit=shared.MAX_BATCH)
    )  # global: all ranks, micro-batches
    accum_steps: int = field(default=1, metadata=bounds(ge=1, limit=shared.MAX_BATCH))


@dataclass(frozen=True)
class AugmentConfig:
    mixup_alpha: float = field(default=0.0, metadata=bounds(ge=0))  # 0: off; lam ~ Beta(a, a)
    mixup_prob: float = field(default=1.0, metadata=bounds(ge=0, le=1))  # per step
    freqm: int = field(
        default=0, metadata=bounds(ge=0, limit=100_000)
    )  # max mel bins of one frequency mask
    timem: int = field(
        default=0, metadata=bounds(ge=0, limit=100_000)
    )  # max frames of one time mask
    label_smoothing: float = field(default=0.0, metadata=bounds(ge=0, lt=1))  # multiclass
    balanced_sampling: bool | Literal["auto"] = "auto"  # auto: on for multilabel tasks


@dataclass(frozen=True)
class EvalConfig:
    every: int = field(
        default=0, metadata=bounds(ge=0, limit=shared.MAX_STEPS)
    )  # between validations; 0: epoch
    units_per_batch: int = field(default=64, metadata=bounds(ge=1, limit=shared.MAX_BATCH))
    max_folds: int | None = field(
        default=None, metadata=bounds(ge=1, limit=10_000)
    )  # k-fold: first n only


@dataclass(frozen=True)
class ManifestConfig:
    """How a CSV/JSONL manifest without a split column is split (seeded by `seed`)."""

    valid_fraction: float = field(default=0.1, metadata=bounds(gt=0, lt=1))
    test_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=1))


@dataclass(frozen=True)
class FinetuneLogConfig:
    every: int = field(default=10, metadata=bounds(ge=1))  # steps between train log records


@dataclass(frozen=True)
class FinetuneCheckpointConfig(shared.CheckpointConfig):
    every: int = field(default=0, metadata=bounds(ge=0))  # 0: at every validation
    keep: int = field(default=2, metadata=bounds(ge=1, limit=100_000))


@dataclass(frozen=True)
class FinetuneOutputConfig(shared.OutputConfig):
    dir: str = "runs/finetune"
    run_name: str | None = None  # null: <task>_<model>_<config name>


@dataclass(frozen=True)
class FinetuneConfig:
    name: str = "finetune"
    seed: int = field(default=0, metadata=bounds(ge=0))
    seeds: int = field(default=1, metadata=bounds(ge=1, limit=10_000))  # runs seed, seed + 1, ...
    model: str | None = None  # from_pretrained folder, official run, or a preset (random init)
    task: str | None = None  # HEAR task folder or a .csv/.jsonl manifest
    protocol: str = "finetune"  # the results' protocol column
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    batch: FinetuneBatchConfig = field(default_factory=FinetuneBatchConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    train: shared.TrainConfig = field(default_factory=shared.TrainConfig)
    log: FinetuneLogConfig = field(default_factory=FinetuneLogConfig)
    checkpoint: FinetuneCheckpointConfig = field(default_factory=FinetuneCheckpointConfig)
    output: FinetuneOutputConfig = field(default_factory=FinetuneOutputConfig)
    ddp: shared.DDPConfig = field(default_factory=shared.DDPConfig)
    debug: shared.DebugConfig = field(default_factory=shared.DebugConfig)


DEFAULTS: dict[str, Any] = to_dict(FinetuneConfig())

# May change on resume; anything else must match the saved config.
RESUME_MUTABLE = (
    "log.",
    "checkpoint.",
    "train.",
    "ddp.",
    "debug.",
    "output.",
    "name",
    "eval.max_folds",
    "seeds",
    "protocol",
)


def config_dirs() -> list[Path]:
    """./configs/finetune (a user's own presets), then the shipped presets."""
    return [Path.cwd() / "configs" / "finetune", PRESET_DIR]


def list_finetune_presets() -> list[str]:
    return shared.list_presets(config_dirs())


def build_finetune_config(raw: Mapping[str, Any]) -> FinetuneConfig:
    cfg = build(FinetuneConfig, raw)
    if cfg.model is None:
        raise ConfigError("model is not set (model=RUN/final, an official run, or a preset name)")
    if cfg.task is None:
        raise ConfigError("task is not set (task=HEAR_TASK_FOLDER or a .csv/.jsonl manifest)")
    if cfg.manifest.valid_fraction + cfg.manifest.test_fraction >= 1:
        raise ConfigError("manifest.valid_fraction + manifest.test_fraction must be < 1")
    return cfg


def load_finetune_config(
    config: FinetuneConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> FinetuneConfig:
    """Defaults <- file, preset or mapping <- `key=value` overrides, checked."""
    overrides = list(overrides)
    if isinstance(config, FinetuneConfig) and not overrides:
        return config
    return build_finetune_config(shared.load_raw(config, overrides, config_dirs()))


__all__ = [
    "DEFAULTS",
    "FinetuneConfig",
    "build_finetune_config",
    "list_finetune_presets",
    "load_finetune_config",
]
