"""Loading models saved with `save_pretrained`: config.json + model.safetensors, no pickle.

Loading checks, in order: config.json is well-formed (strict keys and types); the weights'
SHA-256 matches the one recorded in config.json; the architecture stored in the weights'
metadata matches config.json field by field; the parameters match the model it describes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mwmae._config import check_keys
from mwmae._io import load_weights
from mwmae.errors import ConfigError, IntegrityError, MissingFileError
from mwmae.models import MaskedAutoencoder, ModelConfig
from mwmae.models.config import NON_ARCHITECTURE_FIELDS
from mwmae.models.mae import CONFIG_NAME, WEIGHTS_CONFIG_KEY, WEIGHTS_NAME

log = logging.getLogger(__name__)

CONFIG_KEYS = ("format", "mwmae_version", "weights_sha256", "model")


def is_pretrained_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def read_config_json(config_path: Path) -> tuple[ModelConfig, str | None]:
    """Strictly read a config.json: (model config, recorded weights SHA-256 or None)."""
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "mwmae" or "model" not in meta:
        raise ConfigError(f"{config_path}: not an mwmae model config (expected format 'mwmae')")
    try:
        check_keys(meta, CONFIG_KEYS, "")
        if not isinstance(meta["model"], dict):
            raise ConfigError(f"model: expected a mapping, got {meta['model']!r}")
        config = ModelConfig.from_dict(meta["model"], where="model")
    except ConfigError as exc:
        raise ConfigError(f"{config_path}: {exc}") from exc
    digest = meta.get("weights_sha256")
    if digest is not None and not isinstance(digest, str):
        raise ConfigError(f"{config_path}: weights_sha256: expected str, got {digest!r}")
    return config, digest


def architecture_mismatches(config: ModelConfig, saved: dict[str, Any]) -> list[str]:
    """'field: config.json says X, the weights were saved with Y' for each differing field."""
    current = config.architecture()
    problems = []
    for key in sorted((set(current) | set(saved)) - NON_ARCHITECTURE_FIELDS):
        if current.get(key) != saved.get(key):
            problems.append(
                f"{key}: config.json says {current.get(key)!r}, "
                f"the weights were saved with {saved.get(key)!r}"
            )
    return problems


def _saved_architecture(weights_path: Path, metadata: dict[str, str]) -> dict[str, Any] | None:
    text = metadata.get(WEIGHTS_CONFIG_KEY)
    if text is None:
        return None
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{weights_path}: unreadable model config in its metadata") from exc
    return saved


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> MaskedAutoencoder:
    """Load a model written by `MaskedAutoencoder.save_pretrained`, in eval mode."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise MissingFileError(
                f"{required}: missing; a pretrained model folder holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (written by model.save_pretrained)"
            )
    config, digest = read_config_json(config_path)
    if digest is None:
        log.warning(
            "%s: no weights_sha256 recorded (saved by an older mwmae); "
            "%s is loaded without an integrity check",
            config_path,
            weights_path.name,
        )
    state, metadata = load_weights(weights_path, expected_sha256=digest)
    model = MaskedAutoencoder(config)
    saved = _saved_architecture(weights_path, metadata)
    problems = [] if saved is None else architecture_mismatches(config, saved)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        problems.append(f"parameters missing {missing}, unexpected {unexpected}")
    if problems:
        raise IntegrityError(
            f"{config_path}: does not match {weights_path.name} (config.json edited after "
            f"saving, or from another model): {'; '.join(problems)}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()


def model_display_name(path: str | Path) -> str:
    """A short name for tables and figures: the folder name, or the run's name for the
    `<run>/final` folder that pretraining exports."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "final" and path.parent.name else path.name
