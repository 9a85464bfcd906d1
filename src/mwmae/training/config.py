"""Training configuration files: YAML presets plus dotted overrides, and the shared sections.

A training job's configuration (`PretrainConfig`, `FinetuneConfig`) is a frozen dataclass made
in three steps:

1. `load_config_file(path_or_preset, folders)`: a YAML mapping, following `base: other.yaml`
   (relative to the file, or a preset of `folders`), the file's own `name` kept;
2. `apply_overrides(mapping, ["optim.base_lr=1e-4", ...])`: dotted `key=value` strings, each
   value parsed as YAML (with `1e-4` read as a number);
3. `mwmae._config.build(cls, mapping)`: unknown keys (with a suggestion), types and ranges
   checked, every error a one-line `ConfigError` naming the key.

The sections every training job has (`train`, `checkpoint`, `output`, `ddp`, `debug`) and the
bases of the ones whose defaults differ per job (`optim`, `schedule`) are defined here once.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mwmae._config import bounds, to_dict
from mwmae._io import atomic_write_text, read_json
from mwmae.errors import ConfigError, MissingFileError

# ---- sections shared by every training job --------------------------------------------------

# Upper bounds of sizes and counts: far beyond any real run, low enough that a typo (1e11)
# fails at once, naming the key, instead of allocating or spawning until the machine gives up.
MAX_STEPS = 1_000_000_000
MAX_BATCH = 1_048_576
MAX_WORKERS = 512


@dataclass(frozen=True)
class TrainConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    num_threads: int | None = field(
        default=None, metadata=bounds(ge=1, limit=4096)
    )  # intra-op threads


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = field(default=1984, metadata=bounds(ge=0))  # the reference: one epoch
    keep: int = field(
        default=3, metadata=bounds(ge=1, limit=100_000)
    )  # most recent checkpoints kept
    # Model folders (`from_pretrained`) written to snapshots/step_<k>/ after these steps and
    # never pruned: learning curves, and step 0 = the initial weights (the random-init twin).
    snapshots: tuple[int, ...] = field(default=(), metadata=bounds(ge=0))


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"
    run_name: str | None = None  # null: the config name

    def __post_init__(self) -> None:
        name = self.run_name
        if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
            raise ConfigError(
                f"output.run_name: expected a plain folder name (no '/', not '..'), got "
                f"{name!r}; use output.dir for where runs go"
            )


@dataclass(frozen=True)
class DDPConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    find_unused_parameters: bool = False
    check_replicas: bool = True  # compare all ranks' weights at the end
    timeout_s: float = field(default=1800.0, metadata=bounds(gt=0, limit=7 * 86400))


@dataclass(frozen=True)
class DebugConfig:
    step_sleep: float = field(default=0.0, metadata=bounds(ge=0, limit=3600))  # kill/resume tests


@dataclass(frozen=True)
class OptimConfig:
    """AdamW; each job subclasses it with its own default `base_lr` (and extra fields)."""

    base_lr: float = field(default=1e-3, metadata=bounds(gt=0))  # lr = base_lr * batch / 256
    betas: tuple[float, ...] = field(default=(0.9, 0.999), metadata=bounds(ge=0, lt=1))
    eps: float = field(default=1.0e-8, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.05, metadata=bounds(ge=0))
    clip_grad_norm: float | None = field(default=None, metadata=bounds(gt=0))  # None: off

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up then cosine decay, in steps or in epochs (steps win where both are set);
    each job subclasses it with its own defaults."""

    epochs: float | None = field(
        default=100.0, metadata=bounds(gt=0, limit=MAX_STEPS)
    )  # when steps is null
    steps: int | None = field(default=None, metadata=bounds(ge=1, limit=MAX_STEPS))
    warmup_epochs: float | None = field(default=10.0, metadata=bounds(ge=0, limit=MAX_STEPS))
    warmup_steps: int | None = field(default=None, metadata=bounds(ge=0, limit=MAX_STEPS))

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ConfigError("set schedule.steps or a positive schedule.epochs")

    def plan(self, steps_per_epoch: int) -> tuple[int, int]:
        """(total steps, warm-up steps <= total) for epochs of `steps_per_epoch` steps."""
        total = self.steps if self.steps is not None else int(round(self.epochs * steps_per_epoch))
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        else:
            warmup = int(round((self.warmup_epochs or 0.0) * steps_per_epoch))
        if total < 1:
            raise ConfigError(f"the schedule has {total} steps (schedule.epochs x steps per epoch)")
        return total, min(warmup, total)


# ---- files, presets, overrides ---------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML with `1e-4` and `5e3` read as floats (YAML 1.1 reads them as strings)."""


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$"),
    list("-+0123456789."),
)


# A config is a few hundred values: these bound what a hostile file can make us build (YAML
# aliases can describe a structure exponentially larger than the file: "billion laughs").
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32


def load_yaml(text: str, where: str = "") -> Any:
    """YAML (safe: no Python tags) with at most MAX_CONFIG_VALUES values once aliases are
    expanded and at most MAX_CONFIG_DEPTH levels of nesting; otherwise a `ConfigError`."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply".lstrip(": ")) from None
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).split())  # one line
        raise ConfigError(f"{where}: invalid YAML ({text})".lstrip(": ")) from exc
    _check_size(data, where)
    return data


def _check_size(data: Any, where: str) -> None:
    """Walk `data` as the tree it expands to (aliases counted each time they are used),
    stopping as soon as it is too big or too deep: the cost is bounded by the limits."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES or depth > MAX_CONFIG_DEPTH:
            what = "values" if count > MAX_CONFIG_VALUES else "levels of nesting"
            limit = MAX_CONFIG_VALUES if count > MAX_CONFIG_VALUES else MAX_CONFIG_DEPTH
            raise ConfigError(
                f"{where}: more than {limit:,} {what} (with aliases expanded): not a config".lstrip(
                    ": "
                )
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            count += len(node)  # the keys
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def find_config(name_or_path: str | Path, folders: Iterable[Path]) -> Path:
    """A config path, or a preset name (`mwmae_tiny_cpu`) found in `folders`, in order."""
    folders = list(folders)
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


def list_presets(folders: Iterable[Path]) -> list[str]:
    names: set[str] = set()
    for folder in folders:
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
    name_or_path: str | Path, folders: Iterable[Path], _seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """Read a YAML config, following `base:` (a path relative to the file, or a preset)."""
    folders = list(folders)
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
    config: Mapping[str, Any] | str | Path, overrides: Iterable[str], folders: Iterable[Path]
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


# ---- a run folder's saved config -------------------------------------------------------------


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(
    saved: Any, current: Any, mutable: tuple[str, ...], run_dir: str | Path
) -> None:
    """Refuse to resume `run_dir` with settings that differ from its saved config, leaving out
    the keys starting with one of `mutable` (logging, checkpoints, workers, ...): one
    `ConfigError` listing every difference."""
    a, b = flatten(to_dict(saved)), flatten(to_dict(current))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(mutable) or key == "name":
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    if diffs:
        raise ConfigError(f"cannot resume {run_dir} with a different config: " + "; ".join(diffs))


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


def read_saved_config(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's config.json as a dict; None when there is none."""
    path = run_dir / "config.json"
    return read_json(path) if path.is_file() else None  # malformed: IntegrityError
