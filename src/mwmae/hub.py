"""Loading models saved with `save_pretrained`: config.json + model.safetensors, no pickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mwmae.models import MaskedAutoencoder, ModelConfig
from mwmae.models.mae import CONFIG_NAME, WEIGHTS_NAME


def is_pretrained_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> MaskedAutoencoder:
    """Load a model written by `MaskedAutoencoder.save_pretrained`, in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required}: missing; a pretrained model folder holds {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} (written by model.save_pretrained)"
            )
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "mwmae" or "model" not in meta:
        raise ValueError(f"{config_path}: not an mwmae model config (expected format 'mwmae')")
    config = ModelConfig.from_dict(meta["model"])
    model = MaskedAutoencoder(config)
    state = load_file(str(weights_path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: weights do not match the config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model.to(device).eval()


def model_display_name(path: str | Path) -> str:
    """A short name for tables and figures: the folder name, or the run's name for the
    `<run>/final` folder that pretraining exports."""
    path = Path(path).resolve()
    return path.parent.name if path.name == "final" and path.parent.name else path.name
