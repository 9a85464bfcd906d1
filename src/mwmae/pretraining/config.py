"""Pretraining configuration: a frozen `PretrainConfig` built by `mwmae._config.build`.

Made as every training config (`mwmae.training.config`): a YAML file or shipped preset
(following `base:`), then dotted `key=value` overrides, then `build` with key/type/range checks.
Sections: `model` (a `ModelSpec`: a preset `name` of `mwmae.list_models()` plus any
`ModelConfig` field, checked by building the `ModelConfig` with its own rules, errors naming
`model.<field>`), `data`, `optim`, `schedule`, `batch`, `log` (pretraining's own) and `train`,
`checkpoint`, `output`, `ddp`, `debug` (the shared ones). The model owns the input geometry:
the crop length is `cfg.model.config.num_frames`.

    cfg = load_pretrain_config("mwmae_tiny_cpu", ["data.source=path/to/audio"])
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mwmae._config import bounds, build, to_dict
from mwmae.errors import ConfigError
from mwmae.models import ModelConfig, list_models, preset_config
from mwmae.models.config import check_overrides
from mwmae.training import config as shared

PRESET_DIR = Path(__file__).resolve().parent / "configs"

# ---- pretraining's own sections (paper defaults: SPEC section 3, the reference's code) -------


@dataclass(frozen=True)
class DataConfig:
    source: str | list[str] | None = None  # audio folder, .csv/.jsonl manifest, or tar shards
    kind: Literal["auto", "folder", "manifest", "shards"] = "auto"
    fraction: float = field(default=1.0, metadata=bounds(gt=0, le=1))  # seeded random subset
    # The crop length is the model's input, model.num_frames; a value here must equal it
    # (kept so that configs and run folders that spell it out still load).
    num_frames: int | None = field(default=None, metadata=bounds(ge=1, limit=10_000_000))
    normalize: Literal["instance", "dataset", "none"] = "instance"
    mean: float | None = None  # dataset statistics for normalize=dataset (computed when null)
    std: float | None = field(default=None, metadata=bounds(gt=0))
    stats_clips: int = field(default=256, metadata=bounds(ge=1, limit=100_000_000))
    num_workers: int = field(default=4, metadata=bounds(ge=0, limit=shared.MAX_WORKERS))
    prefetch_factor: int = field(default=2, metadata=bounds(ge=1, limit=1024))
    pin_memory: bool | Literal["auto"] = "auto"  # auto: on CUDA
    max_substitutes: int = field(
        default=16, metadata=bounds(ge=0, limit=1_000_000)
    )  # bad clips in a row
    # Longer files are cut into clips of at most this many seconds (null or 0: never cut).
    clip_seconds: float | None = field(default=60.0, metadata=bounds(ge=0, limit=86_400))
    # memory: decode and compute every clip's log-mel once at start, then crop from memory
    # (same batches; 1.27x for the demo's model on 2 cores, more where decoding dominates;
    # the corpus must fit).
    cache: Literal["none", "memory"] = "none"
    cache_dir: str | None = None  # also keep the log-mels here, keyed by file content
    cache_max_gb: float = field(default=8.0, metadata=bounds(gt=0, limit=1_000_000))


@dataclass(frozen=True)
class PretrainOptimConfig(shared.OptimConfig):
    base_lr: float = field(default=1.5e-5, metadata=bounds(gt=0))  # lr = base_lr * batch / 256
    decay_exclude: bool = False  # True: no decay on norms, biases, pos embeds, tokens
    fused: bool | Literal["auto"] = "auto"  # fused AdamW kernel on CUDA


@dataclass(frozen=True)
class PretrainScheduleConfig(shared.ScheduleConfig):
    steps_per_epoch: int | None = field(
        default=None, metadata=bounds(ge=1, limit=shared.MAX_STEPS)
    )  # null: size//batch


@dataclass(frozen=True)
class BatchConfig:
    global_size: int = field(
        default=1024, metadata=bounds(ge=1, limit=shared.MAX_BATCH)
    )  # all ranks and micro-batches
    accum_steps: int = field(default=1, metadata=bounds(ge=1, limit=shared.MAX_BATCH))


@dataclass(frozen=True)
class LogConfig:
    every: int = field(default=100, metadata=bounds(ge=0))  # steps between log records
    figure_every: int = field(default=1984, metadata=bounds(ge=0))  # reconstructions (0: off)
    figure_samples: int = field(default=4, metadata=bounds(ge=1, limit=64))
    tensorboard: bool = True


def model_config(section: Any, where: str = "model") -> ModelConfig:
    """The `ModelConfig` of a model section {name: preset, **field overrides}, checked by
    ModelConfig's own rules; every error names `model.<field>`."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: expected a section with a preset 'name', got {section!r}")
    values = dict(section)
    name = values.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name must name a preset (see mwmae.list_models())")
    if name not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see mwmae.list_models())"
        raise ConfigError(f"{where}.name: unknown model preset {name!r}{hint}")
    check_overrides(values, where)
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    try:
        return preset_config(name, **values)
    except ConfigError as exc:  # ModelConfig's messages start with the field they are about
        msg = str(exc)
        field_name = msg.split(":", 1)[0].split("[", 1)[0]
        raise ConfigError(f"{where}.{msg}" if field_name in known else f"{where}: {msg}") from None


class ModelSpec(Mapping[str, Any]):
    """The `model` section as written: a preset `name` plus `ModelConfig` field overrides
    (what run folders save), and `config`, the `ModelConfig` they build. Read-only; made by
    `ModelSpec.build(mapping)`, which builds the config, so a bad section fails at once."""

    def __init__(self, values: Mapping[str, Any], config: ModelConfig) -> None:
        self._values, self.config = dict(values), config

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ModelSpec({self._values!r})"

    @property
    def name(self) -> str:
        return self._values["name"]

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k != "name"}

    @classmethod
    def build(cls, mapping: Any, where: str = "model") -> ModelSpec:
        if isinstance(mapping, ModelSpec):
            return mapping
        config = model_config(mapping, where)
        values = {"name": mapping["name"]}
        for key, value in mapping.items():  # as plain values: tuples (patch_size) as lists
            if key != "name":
                value = getattr(config, key) if key in config.to_dict() else value
                values[key] = list(value) if isinstance(value, tuple) else value
        return cls(values, config)


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "pretrain"
    seed: int = field(default=0, metadata=bounds(ge=0))
    model: ModelSpec = field(default_factory=lambda: ModelSpec.build({"name": "mwmae_base_4x16"}))
    data: DataConfig = field(default_factory=DataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    schedule: PretrainScheduleConfig = field(default_factory=PretrainScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    train: shared.TrainConfig = field(default_factory=shared.TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: shared.CheckpointConfig = field(default_factory=shared.CheckpointConfig)
    output: shared.OutputConfig = field(default_factory=shared.OutputConfig)
    ddp: shared.DDPConfig = field(default_factory=shared.DDPConfig)
    debug: shared.DebugConfig = field(default_factory=shared.DebugConfig)


# The defaults as plain dicts (documentation, `--print-config` of an empty file).
DEFAULTS: dict[str, Any] = to_dict(PretrainConfig())

# Settings that may change when a run is resumed; anything else must match the saved config.
RESUME_MUTABLE = (
    "log.",
    "checkpoint.",
    "data.num_workers",
    "data.prefetch_factor",
    "data.pin_memory",
    "data.cache",  # the cache changes speed, never values
    "train.compile",
    "train.num_threads",
    "ddp.",
    "debug.",
    "output.",
    "name",
)


def config_dirs() -> list[Path]:
    """./configs/pretrain (a user's own presets), then the presets shipped in the package
    (configs/pretrain in a source checkout is a link to them)."""
    return [Path.cwd() / "configs" / "pretrain", PRESET_DIR]


def list_pretrain_presets() -> list[str]:
    return shared.list_presets(config_dirs())


# ---- building ------------------------------------------------------------------------------


def build_pretrain_config(raw: Mapping[str, Any]) -> PretrainConfig:
    """A checked `PretrainConfig` from a nested mapping (see the module docs)."""
    raw = dict(raw)
    model = ModelSpec.build(raw.pop("model", DEFAULTS["model"]))
    cfg = build(PretrainConfig, {**raw, "model": model})
    return validate(cfg)


def load_pretrain_config(
    config: PretrainConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> PretrainConfig:
    """Defaults <- file, preset or mapping <- `key=value` overrides, checked."""
    overrides = list(overrides)
    if isinstance(config, PretrainConfig) and not overrides:
        return config
    return build_pretrain_config(shared.load_raw(config, overrides, config_dirs()))


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Checks across fields (each field's type and range were checked by `build`); returns
    the config with `data.num_frames` resolved to the model's."""
    if cfg.data.source is None:
        raise ConfigError(
            "data.source is not set: a folder of audio, a .csv/.jsonl manifest or "
            "tar shards (e.g. data.source=path/to/audio)"
        )
    if cfg.data.normalize == "dataset" and (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean and data.std go together (or both null to compute them)")
    frames, model_frames = cfg.data.num_frames, cfg.model.config.num_frames
    if frames is not None and frames != model_frames:
        raise ConfigError(
            f"data.num_frames ({frames}) differs from model.num_frames ({model_frames}): "
            "crops are the model's input; set model.num_frames"
        )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_frames=None))


def resolve_config(
    config: Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """`load_pretrain_config` as plain nested dicts (what is saved in the run folder)."""
    return to_dict(load_pretrain_config(config, overrides))


__all__ = [
    "DEFAULTS",
    "PretrainConfig",
    "build_pretrain_config",
    "list_pretrain_presets",
    "load_pretrain_config",
    "ModelSpec",
    "model_config",
    "resolve_config",
]
