"""Pretraining configs: nested dicts from YAML, `base:` inheritance, dotted overrides, checks.

A config file holds any subset of `DEFAULTS`; `base: other.yaml` (relative to the file) pulls
in another file first. Overrides are `section.key=value` strings whose value is parsed as YAML
(`optim.base_lr=1e-4`, `model.depth=2`, `optim.betas=[0.9,0.95]`, `schedule.steps=null`).
The `model` section is `name` (a preset of `mwmae.list_models()`) plus any `ModelConfig` field.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mwmae._io import atomic_write_text

# Paper defaults (SPEC section 3, the reference's training code) for everything but the data.
DEFAULTS: dict[str, Any] = {
    "name": "pretrain",
    "seed": 0,
    "model": {"name": "mwmae_base_4x16"},
    "data": {
        "source": None,  # folder of audio, .csv/.jsonl manifest, or tar shards (dir/glob/list)
        "kind": "auto",  # auto | folder | manifest | shards
        "fraction": 1.0,  # seeded random subset of the clips
        "num_frames": 200,
        "normalize": "instance",  # instance (reference) | dataset | none
        "mean": None,  # dataset statistics for normalize=dataset (computed when null)
        "std": None,
        "stats_clips": 256,  # clips used to compute dataset statistics
        "num_workers": 4,
        "prefetch_factor": 2,
        "pin_memory": "auto",  # auto: on CUDA
        "max_substitutes": 16,  # bad clips in a row before giving up
        "clip_seconds": 60.0,  # longer files are cut into clips of at most this (null: never)
    },
    "optim": {
        "base_lr": 1.5e-5,  # lr = base_lr * global_batch / 256
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "weight_decay": 0.05,
        "decay_exclude": False,  # True: no decay on norms, biases, pos embeds, tokens
        "clip_grad_norm": None,  # e.g. 1.0; None: no clipping (reference)
        "fused": "auto",  # fused AdamW kernel on CUDA
    },
    "schedule": {
        "epochs": 100,  # used when steps is null
        "steps": None,
        "warmup_epochs": 10,  # used when warmup_steps is null
        "warmup_steps": None,
        "steps_per_epoch": None,  # null: dataset size // global batch (at least 1)
    },
    "batch": {
        "global_size": 1024,  # over all ranks and accumulation steps
        "accum_steps": 1,
    },
    "train": {
        "device": "auto",  # auto | cpu | cuda
        "precision": "auto",  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
        "compile": False,  # torch.compile the model
        "num_threads": None,  # torch intra-op threads per process (None: torch default)
    },
    "log": {
        "every": 100,  # steps between log records
        "figure_every": 1984,  # steps between reconstruction figures (0: off)
        "figure_samples": 4,
        "tensorboard": True,
    },
    "checkpoint": {
        "every": 1984,  # steps between checkpoints (the reference: one epoch)
        "keep": 3,  # most recent checkpoints kept
    },
    "output": {
        "dir": "runs",
        "run_name": None,  # null: the config name
    },
    "ddp": {
        "backend": "auto",  # auto: nccl on CUDA, gloo on CPU
        "find_unused_parameters": False,
        "check_replicas": True,  # compare all ranks' weights at the end
        "timeout_s": 1800,
    },
    "debug": {
        "step_sleep": 0.0,  # seconds slept per step (kill/resume tests)
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.kind": ("auto", "folder", "manifest", "shards"),
    "data.normalize": ("instance", "dataset", "none"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "bf16", "fp32"),
    "ddp.backend": ("auto", "nccl", "gloo"),
}

# Sections that may change when a run is resumed; anything else must match the saved config.
RESUME_MUTABLE = (
    "log.",
    "checkpoint.",
    "data.num_workers",
    "data.prefetch_factor",
    "data.pin_memory",
    "train.compile",
    "train.num_threads",
    "ddp.",
    "debug.",
    "output.",
    "name",
)

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _config_dirs() -> list[Path]:
    # ./configs/pretrain first (a user's own presets), then the presets shipped in the package
    # (configs/pretrain in a source checkout is a link to them).
    return [Path.cwd() / "configs" / "pretrain", Path(__file__).resolve().parent / "configs"]


def find_config(name_or_path: str | Path) -> Path:
    """A config path, or a preset name (`mwmae_tiny_cpu`) found under ./configs/pretrain or
    among the presets shipped in the package."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    for folder in _config_dirs():
        if (folder / stem).is_file():
            return folder / stem
    raise FileNotFoundError(
        f"{name_or_path}: no such config file or preset (presets: {list_presets() or 'none'})"
    )


def list_presets() -> list[str]:
    names: set[str] = set()
    for folder in _config_dirs():
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


def load_config_file(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, following `base:` (a path relative to the file, or a preset)."""
    path = find_config(name_or_path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: circular 'base' chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping")
    base = data.pop("base", None)
    name = data.get("name", path.stem)  # a file's own name, never its base's
    if base is not None:
        base_path = path.parent / base
        parent = load_config_file(base_path if base_path.is_file() else base, _seen + (path,))
        data = deep_merge(parent, data)
    data["name"] = name
    return data


def parse_value(text: str) -> Any:
    """A command-line value as YAML, with numbers like 1e-4 read as floats (YAML 1.1 reads
    them as strings)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (copied)."""
    config = copy.deepcopy(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.base_lr=1e-4)")
        parts = key.strip().split(".")
        node = config
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return config


def _coerce(key: str, default: Any, value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and float(value).is_integer()
        ):
            return int(value)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ValueError(f"{key}: expected a list, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, (str, bool)):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    return value


def _check_section(prefix: str, defaults: dict[str, Any], values: dict[str, Any]) -> dict:
    out: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ValueError(f"unknown config key {full!r}{hint}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"{full}: expected a section, got {value!r}")
            out[key] = _check_section(full + ".", default, value)
        else:
            out[key] = _coerce(full, default, value)
    return out


def validate(config: dict[str, Any]) -> None:
    """Raise ValueError for impossible settings (types were checked on resolve)."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = config[section][name]
        if value not in choices:
            raise ValueError(f"{key}: {value!r} is not one of {list(choices)}")
    data, sched, batch = config["data"], config["schedule"], config["batch"]
    if data["source"] is None:
        raise ValueError(
            "data.source is not set: a folder of audio, a .csv/.jsonl manifest or "
            "tar shards (e.g. data.source=path/to/audio)"
        )
    if not 0.0 < data["fraction"] <= 1.0:
        raise ValueError(f"data.fraction must be in (0, 1], got {data['fraction']}")
    if data["normalize"] == "dataset" and (data["mean"] is None) != (data["std"] is None):
        raise ValueError("data.mean and data.std go together (or both null to compute them)")
    if batch["global_size"] < 1 or batch["accum_steps"] < 1:
        raise ValueError("batch.global_size and batch.accum_steps must be positive")
    if sched["steps"] is None and (sched["epochs"] is None or sched["epochs"] <= 0):
        raise ValueError("set schedule.steps or a positive schedule.epochs")
    if sched["steps"] is not None and int(sched["steps"]) < 1:
        raise ValueError("schedule.steps must be positive")
    for key in ("every", "figure_every"):
        if config["log"][key] < 0:
            raise ValueError(f"log.{key} must be >= 0")
    if config["checkpoint"]["every"] < 0 or config["checkpoint"]["keep"] < 1:
        raise ValueError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")
    betas = config["optim"]["betas"]
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"optim.betas must be two numbers in [0, 1), got {betas}")
    # The model section must build a valid ModelConfig.
    from mwmae.models import preset_config

    model = dict(config["model"])
    name = model.pop("name", None)
    if not isinstance(name, str):
        raise ValueError("model.name must name a preset (see mwmae.list_models())")
    preset_config(name, **model)


def resolve_config(
    config: Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Defaults <- file or dict <- overrides, type-checked and validated."""
    raw = (
        load_config_file(config) if isinstance(config, (str, Path)) else copy.deepcopy(dict(config))
    )
    raw.pop("base", None)
    raw = apply_overrides(raw, overrides)
    model = raw.pop("model", None)
    merged = _check_section("", {k: v for k, v in DEFAULTS.items() if k != "model"}, raw)
    out = deep_merge({k: v for k, v in DEFAULTS.items() if k != "model"}, merged)
    model = dict(model or DEFAULTS["model"])
    if "name" not in model:
        raise ValueError("model.name is required")
    out["model"] = model
    out["optim"]["betas"] = [float(b) for b in out["optim"]["betas"]]
    validate(out)
    # Key order as DEFAULTS for readable saved files.
    return {k: out[k] for k in DEFAULTS}


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
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUME_MUTABLE) or key == "name":
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def dump_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)


def save_config(config: Mapping[str, Any], directory: str | Path) -> None:
    """Write config.yaml and config.json (atomically) into `directory`."""
    directory = Path(directory)
    for name, text in (
        ("config.yaml", dump_yaml(config)),
        ("config.json", json.dumps(config, indent=2)),
    ):
        atomic_write_text(directory / name, text)
