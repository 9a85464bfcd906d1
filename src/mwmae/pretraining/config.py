"""Pretraining configuration: nested frozen dataclasses built by `mwmae._config.build`.

A run's configuration is a `PretrainConfig` (sections `model`, `data`, `optim`, `schedule`,
`batch`, `train`, `log`, `checkpoint`, `output`, `ddp`, `debug`). It is made in three steps
that fine-tuning reuses with its own dataclass and preset folders:

1. `load_config_file(path_or_preset)`: a YAML mapping, following `base: other.yaml`
   (relative to the file, or a preset name), the file's own `name` kept;
2. `apply_overrides(mapping, ["optim.base_lr=1e-4", ...])`: dotted `key=value` strings, each
   value parsed as YAML (with `1e-4` read as a number);
3. `build(PretrainConfig, mapping)` (here `build_pretrain_config`): unknown keys (with a
   suggestion), types and ranges checked, every error a one-line `ConfigError` naming the key.

The `model` section is `name` (a preset of `mwmae.list_models()`) plus any `ModelConfig`
field; it is checked by building the `ModelConfig`, errors naming `model.<field>`.
Code reads `cfg.optim.base_lr`; `resolve_config` gives the same as plain nested dicts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

import yaml

from mwmae._config import bounds, build, check_keys, coerce, to_dict
from mwmae._io import atomic_write_text
from mwmae.errors import ConfigError, MissingFileError

# ---- sections (paper defaults: SPEC section 3, the reference's training code) ---------------


@dataclass(frozen=True)
class DataConfig:
    source: str | list[str] | None = None  # audio folder, .csv/.jsonl manifest, or tar shards
    kind: Literal["auto", "folder", "manifest", "shards"] = "auto"
    fraction: float = field(default=1.0, metadata=bounds(gt=0, le=1))  # seeded random subset
    num_frames: int = field(default=200, metadata=bounds(ge=1))
    normalize: Literal["instance", "dataset", "none"] = "instance"
    mean: float | None = None  # dataset statistics for normalize=dataset (computed when null)
    std: float | None = field(default=None, metadata=bounds(gt=0))
    stats_clips: int = field(default=256, metadata=bounds(ge=1))
    num_workers: int = field(default=4, metadata=bounds(ge=0))
    prefetch_factor: int = field(default=2, metadata=bounds(ge=1))
    pin_memory: bool | Literal["auto"] = "auto"  # auto: on CUDA
    max_substitutes: int = field(default=16, metadata=bounds(ge=0))  # bad clips in a row
    # Longer files are cut into clips of at most this many seconds (null or 0: never cut).
    clip_seconds: float | None = field(default=60.0, metadata=bounds(ge=0))
    # memory: decode and compute every clip's log-mel once at start, then crop from memory
    # (same batches; 1.27x for the demo's model on 2 cores, more where decoding dominates;
    # the corpus must fit).
    cache: Literal["none", "memory"] = "none"
    cache_dir: str | None = None  # also keep the log-mels here, keyed by file content
    cache_max_gb: float = field(default=8.0, metadata=bounds(gt=0))


@dataclass(frozen=True)
class OptimConfig:
    base_lr: float = field(default=1.5e-5, metadata=bounds(gt=0))  # lr = base_lr * batch / 256
    betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata=bounds(ge=0, lt=1))
    eps: float = field(default=1.0e-8, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.05, metadata=bounds(ge=0))
    decay_exclude: bool = False  # True: no decay on norms, biases, pos embeds, tokens
    clip_grad_norm: float | None = field(default=None, metadata=bounds(gt=0))  # None: off
    fused: bool | Literal["auto"] = "auto"  # fused AdamW kernel on CUDA

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: float | None = field(default=100.0, metadata=bounds(gt=0))  # when steps is null
    steps: int | None = field(default=None, metadata=bounds(ge=1))
    warmup_epochs: float | None = field(default=10.0, metadata=bounds(ge=0))
    warmup_steps: int | None = field(default=None, metadata=bounds(ge=0))
    steps_per_epoch: int | None = field(default=None, metadata=bounds(ge=1))  # null: size//batch

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ConfigError("set schedule.steps or a positive schedule.epochs")


@dataclass(frozen=True)
class BatchConfig:
    global_size: int = field(default=1024, metadata=bounds(ge=1))  # all ranks and micro-batches
    accum_steps: int = field(default=1, metadata=bounds(ge=1))


@dataclass(frozen=True)
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    num_threads: int | None = field(default=None, metadata=bounds(ge=1))  # intra-op threads


@dataclass(frozen=True)
class LogConfig:
    every: int = field(default=100, metadata=bounds(ge=0))  # steps between log records
    figure_every: int = field(default=1984, metadata=bounds(ge=0))  # reconstructions (0: off)
    figure_samples: int = field(default=4, metadata=bounds(ge=1))
    tensorboard: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = field(default=1984, metadata=bounds(ge=0))  # the reference: one epoch
    keep: int = field(default=3, metadata=bounds(ge=1))  # most recent checkpoints kept
    # Model folders (`from_pretrained`) written to snapshots/step_<k>/ after these steps and
    # never pruned: learning curves, and step 0 = the initial weights (the random-init twin).
    snapshots: tuple[int, ...] = field(default=(), metadata=bounds(ge=0))


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"
    run_name: str | None = None  # null: the config name


@dataclass(frozen=True)
class DDPConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    find_unused_parameters: bool = False
    check_replicas: bool = True  # compare all ranks' weights at the end
    timeout_s: float = field(default=1800.0, metadata=bounds(gt=0))


@dataclass(frozen=True)
class DebugConfig:
    step_sleep: float = field(default=0.0, metadata=bounds(ge=0))  # kill/resume tests


class ModelSection(Mapping[str, Any]):
    """The `model` section: a preset `name` plus `ModelConfig` overrides, read-only.

    Made by `ModelSection.build(mapping)`, which checks it by building the `ModelConfig`."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ModelSection({self._values!r})"

    @property
    def name(self) -> str:
        return self._values["name"]

    @property
    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k != "name"}

    @classmethod
    def build(cls, mapping: Mapping[str, Any] | None, where: str = "model") -> ModelSection:
        return cls(check_model_section(mapping, where))


# Ranges of model fields checked here, so that a bad value fails at config time naming the key.
MODEL_RANGES: dict[str, tuple[str, float | None, float | None]] = {
    # field: (text of the range, exclusive low, exclusive high)
    "mask_ratio": ("0 < mask_ratio < 1", 0.0, 1.0),
    "embed_dim": ("embed_dim >= 1", 0.0, None),
    "depth": ("depth >= 1", 0.0, None),
    "num_heads": ("num_heads >= 1", 0.0, None),
    "decoder_embed_dim": ("decoder_embed_dim >= 1", 0.0, None),
    "decoder_depth": ("decoder_depth >= 0", -1.0, None),
    "decoder_num_heads": ("decoder_num_heads >= 1", 0.0, None),
    "mlp_ratio": ("mlp_ratio > 0", 0.0, None),
    "num_frames": ("num_frames >= 1", 0.0, None),
    "num_mels": ("num_mels >= 1", 0.0, None),
}


def check_model_section(mapping: Mapping[str, Any] | None, where: str = "model") -> dict:
    """A model section as a dict, checked: a preset name, known fields of the right type and
    range, and a `ModelConfig` that builds. Raises `ConfigError` naming `model.<field>`."""
    from mwmae.models import ModelConfig, list_models, preset_config

    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where}: expected a section with a preset 'name', got {mapping!r}")
    values = dict(mapping)
    name = values.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name must name a preset (see mwmae.list_models())")
    if name not in list_models():
        close = difflib.get_close_matches(name, list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see mwmae.list_models())"
        raise ConfigError(f"{where}.name: unknown model preset {name!r}{hint}")
    hints = get_type_hints(ModelConfig)
    known = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "name"]
    for key in values:
        if key != "name" and key not in known:
            try:
                check_keys([key], known, where)
            except ConfigError as exc:
                msg = str(exc).replace("unknown config key ", "", 1)
                raise ConfigError(f"unknown model config keys: {msg}") from None
    for key, value in list(values.items()):
        if key == "name" or get_origin(hints[key]) is dict:
            continue
        values[key] = coerce(value, hints[key], f"{where}.{key}")
        _check_model_range(key, values[key], where)
    try:
        preset_config(name, **{k: v for k, v in values.items() if k != "name"})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _check_model_range(key: str, value: Any, where: str) -> None:
    if key not in MODEL_RANGES or value is None:
        return
    text, low, high = MODEL_RANGES[key]
    if (low is not None and not value > low) or (high is not None and not value < high):
        raise ConfigError(f"{where}.{key}: {value!r} is out of range (expected {text})")


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "pretrain"
    seed: int = field(default=0, metadata=bounds(ge=0))
    model: ModelSection = field(default_factory=lambda: ModelSection({"name": "mwmae_base_4x16"}))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


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

# ---- generic: files, presets, overrides (reused by fine-tuning with its own folders) -------


class _Loader(yaml.SafeLoader):
    """YAML with `1e-4` and `5e3` read as floats (YAML 1.1 reads them as strings)."""


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, where: str = "") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({exc})".lstrip(": ")) from exc


def _config_dirs() -> list[Path]:
    # ./configs/pretrain first (a user's own presets), then the presets shipped in the package
    # (configs/pretrain in a source checkout is a link to them).
    return [Path.cwd() / "configs" / "pretrain", Path(__file__).resolve().parent / "configs"]


def find_config(name_or_path: str | Path, folders: Iterable[Path] | None = None) -> Path:
    """A config path, or a preset name (`mwmae_tiny_cpu`) found in `folders` (default:
    ./configs/pretrain, then the presets shipped in the package)."""
    folders = list(_config_dirs() if folders is None else folders)
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in folders:
        if (folder / stem).is_file():
            return folder / stem
    raise MissingFileError(
        f"{name_or_path}: no such config file or preset "
        f"(presets: {', '.join(list_presets(folders)) or 'none'})"
    )


def list_presets(folders: Iterable[Path] | None = None) -> list[str]:
    names: set[str] = set()
    for folder in _config_dirs() if folders is None else folders:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config_file(
    name_or_path: str | Path,
    folders: Iterable[Path] | None = None,
    _seen: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Read a YAML config, following `base:` (a path relative to the file, or a preset)."""
    folders = None if folders is None else list(folders)
    path = find_config(name_or_path, folders).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'base' chain")
    data = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    base = data.pop("base", None)
    name = data.get("name", path.stem)  # a file's own name, never its base's
    if base is not None:
        base_path = path.parent / str(base)
        parent = load_config_file(
            base_path if base_path.is_file() else base, folders, _seen + (path,)
        )
        data = deep_merge(parent, data)
    data["name"] = name
    return data


def parse_value(text: str) -> Any:
    """A command-line value as YAML, with numbers like 1e-4 read as floats."""
    value = load_yaml(text) if text.strip() else ""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def apply_overrides(config: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (copied)."""
    config = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.base_lr=1e-4)")
        parts = key.strip().split(".")
        node = config
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return config


def load_raw(
    config: Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    folders: Iterable[Path] | None = None,
) -> dict[str, Any]:
    """File (or preset, or mapping) <- overrides, as a plain nested dict, not yet checked."""
    if isinstance(config, str | Path):
        raw = load_config_file(config, folders)
    else:
        raw = _paths_as_text(to_dict(config))
    raw.pop("base", None)
    return apply_overrides(raw, overrides)


def _paths_as_text(value: Any) -> Any:
    """A copy of a mapping from Python code with `Path` values as strings (`data.source`)."""
    if isinstance(value, Mapping):
        return {k: _paths_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_paths_as_text(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else copy.deepcopy(value)


# ---- pretraining ---------------------------------------------------------------------------


def build_pretrain_config(raw: Mapping[str, Any]) -> PretrainConfig:
    """A checked `PretrainConfig` from a nested mapping (see the module docs)."""
    raw = dict(raw)
    model = ModelSection.build(raw.pop("model", DEFAULTS["model"]))
    cfg = build(PretrainConfig, {**raw, "model": model})
    validate(cfg)
    return cfg


def load_pretrain_config(
    config: PretrainConfig | Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> PretrainConfig:
    """Defaults <- file, preset or mapping <- `key=value` overrides, checked."""
    overrides = list(overrides)
    if isinstance(config, PretrainConfig) and not overrides:
        return config
    return build_pretrain_config(load_raw(config, overrides))


def validate(cfg: PretrainConfig) -> None:
    """Checks across fields (each field's type and range were checked by `build`)."""
    if cfg.data.source is None:
        raise ConfigError(
            "data.source is not set: a folder of audio, a .csv/.jsonl manifest or "
            "tar shards (e.g. data.source=path/to/audio)"
        )
    if cfg.data.normalize == "dataset" and (cfg.data.mean is None) != (cfg.data.std is None):
        raise ConfigError("data.mean and data.std go together (or both null to compute them)")


def resolve_config(
    config: Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """`load_pretrain_config` as plain nested dicts (what is saved in the run folder)."""
    return to_dict(load_pretrain_config(config, overrides))


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Settings that differ between a run's saved config and the config it is resumed with,
    leaving out those that may change (logging, checkpoints, workers, ...)."""
    a, b = flatten(to_dict(saved)), flatten(to_dict(current))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUME_MUTABLE) or key == "name":
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(to_dict(config))), sort_keys=False)


def save_config(config: Any, directory: str | Path) -> None:
    """Write config.yaml and config.json (atomically) into `directory`."""
    directory = Path(directory)
    plain = to_dict(config)
    for name, text in (
        ("config.yaml", dump_yaml(plain)),
        ("config.json", json.dumps(plain, indent=2)),
    ):
        atomic_write_text(directory / name, text)
