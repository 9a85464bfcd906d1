"""Models: tokenisers, transformer blocks, MW-MHA, masking, and the masked autoencoders."""

from .config import (
    ENCODER_SIZES,
    PATCH_SIZES,
    PRESET_ALIASES,
    PRESET_TABLE,
    PRESETS,
    ModelConfig,
    default_window_sizes,
    list_models,
    preset_config,
)
from .layers import Attention, Block, Mlp, MultiWindowAttention, PatchEmbed
from .mae import MAEOutput, MaskedAutoencoder, chunk_masking_noise


def create_model(name: str, **overrides) -> MaskedAutoencoder:
    """Build a model from a named preset (see `list_models()`; the old names in
    `PRESET_ALIASES` work too), with config overrides."""
    return MaskedAutoencoder(preset_config(name, **overrides))


__all__ = [
    "ENCODER_SIZES",
    "PATCH_SIZES",
    "PRESET_ALIASES",
    "PRESET_TABLE",
    "PRESETS",
    "Attention",
    "Block",
    "MAEOutput",
    "MaskedAutoencoder",
    "Mlp",
    "ModelConfig",
    "MultiWindowAttention",
    "PatchEmbed",
    "chunk_masking_noise",
    "create_model",
    "default_window_sizes",
    "list_models",
    "preset_config",
]
