"""Loading models saved with `save_pretrained`: config.json + model.safetensors, no pickle.

Loading checks, in order: config.json is well-formed (strict keys and types); the weights'
SHA-256 matches the one recorded in config.json, and they hold no NaN/Inf; the architecture
stored in the weights' metadata matches config.json field by field; the model config.json
describes is not far larger than the weights (so an edited config.json cannot make us build,
and allocate, a model its weights do not hold); only then is the model built, and its
parameters must match the weights name by name and shape by shape.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mwmae._config import check_keys
from mwmae._io import load_weights, read_json
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
    meta = read_json(config_path, ConfigError)
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
    saved = _saved_architecture(weights_path, metadata)
    problems = [] if saved is None else architecture_mismatches(config, saved)
    held = sum(t.numel() for t in state.values())
    if approx_num_params(config) > 1.5 * held + 1_000_000:  # never build what is not there
        problems.append(
            f"it describes a model of about {approx_num_params(config):,.0f} parameters, the "
            f"weights hold {held:,}"
        )
    else:  # building the model costs about what the weights do
        model = MaskedAutoencoder(config)
        problems += _parameter_mismatches(model.state_dict(), state)
    if problems:
        raise IntegrityError(
            f"{config_path}: does not match {weights_path.name} (config.json edited after "
            f"saving, or from another model): {'; '.join(problems)}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()


def approx_num_params(c: ModelConfig) -> float:
    """A lower estimate of a model's parameter count from its config alone (the transformer
    blocks' linear layers, embeddings and heads; not biases or norms), without building it."""
    per_block = 4 + 2 * c.mlp_ratio  # qkv + proj: 4 d^2; the MLP: 2 r d^2
    blocks = c.depth * per_block * c.embed_dim**2
    decoder = c.decoder_depth * per_block * c.decoder_embed_dim**2
    tokens = c.num_patches * (c.embed_dim + c.decoder_embed_dim)
    heads = c.patch_dim * (c.embed_dim + c.decoder_embed_dim) + c.embed_dim * c.decoder_embed_dim
    return float(blocks + decoder + tokens + heads)


def _parameter_mismatches(expected: dict[str, torch.Tensor], state: dict) -> list[str]:
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        return [f"parameters missing {missing}, unexpected {unexpected}"]
    shapes = [
        f"{k}: {tuple(state[k].shape)} in the weights, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if tuple(v.shape) != tuple(state[k].shape)
    ]
    return [f"parameter shapes differ ({'; '.join(shapes[:5])})"] if shapes else []


def model_display_name(path: str | Path) -> str:
    """A short name for tables and figures: the folder name, or the run's name for the
    `<run>/final` folder that pretraining exports."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "final" and path.parent.name else path.name
