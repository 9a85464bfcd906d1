"""The fine-tuning classifier: pretrained encoder (decoder dropped), pooling, fc_norm, head.

AudioMAE's `models_vit` recipe: the encoder runs on all tokens (no masking), the tokens are
mean-pooled (or the cls token is taken where the model has one), a LayerNorm (`fc_norm`) and
a linear head follow. Options:

- stochastic depth (drop path): forward hooks on each block's attention and MLP scale the
  residual branch per sample by Bernoulli(1 - p) / (1 - p) in training; p rises linearly
  from 0 (first block) to `drop_path` (last block), as timm's `dpr`;
- layer-wise lr decay: the parameters of layer i (0 = patch and position embeddings, i = block
  i, depth + 1 = final norm, fc_norm and head) get lr * decay ** (depth + 1 - i);
- freezing: the embeddings and the first k blocks get no gradient (k = "all": the whole
  encoder, final norm included, so only fc_norm and the head train: a linear probe).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwmae.errors import ConfigError, InputError, MissingFileError
from mwmae.models import MaskedAutoencoder
from mwmae.training.optim import is_no_decay

DECODER_PARTS = (
    "decoder_embed",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
    "decoder_pred_contrast",
)
EMBEDDING_PARTS = ("patch_embed", "pos_embed", "cls_token", "encoder_mask_token")


RANDOM_PREFIX = "random:"


def load_encoder(spec: str) -> MaskedAutoencoder:
    """A model from a `save_pretrained` folder, an official (JAX) run or checkpoint, or a
    preset name; `random:FOLDER` is FOLDER's architecture with fresh weights. Random weights
    are drawn from the caller's torch RNG (the random-init baseline)."""
    import mwmae
    from mwmae.hub import is_pretrained_dir

    if spec.startswith(RANDOM_PREFIX):
        return _random_like(Path(spec[len(RANDOM_PREFIX) :]))
    path = Path(spec)
    try:
        if is_pretrained_dir(path):
            return mwmae.from_pretrained(path)
        if path.exists():
            return mwmae.from_official(path)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(f"model={spec}: cannot load ({exc})") from None
    if spec in mwmae.list_models():
        return mwmae.create_model(spec)
    raise MissingFileError(
        f"model={spec}: not a model folder, an official run, or a preset "
        f"(presets: {', '.join(mwmae.list_models())})"
    )


def model_label(spec: str) -> str:
    """The model's name in run folders and tables (`random_<name>` for random init)."""
    from mwmae.hub import model_display_name

    if spec.startswith(RANDOM_PREFIX):
        return "random_" + model_label(spec[len(RANDOM_PREFIX) :])
    return model_display_name(spec) if Path(spec).exists() else spec


def _random_like(folder: Path) -> MaskedAutoencoder:
    from mwmae.models import ModelConfig
    from mwmae.models.mae import CONFIG_NAME

    path = folder / CONFIG_NAME
    try:
        config = ModelConfig.from_dict(json.loads(path.read_text())["model"])
    except FileNotFoundError:
        raise MissingFileError(f"model=random:{folder}: {path} not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"model=random:{folder}: {path} is not an mwmae config ({exc})") from None
    return MaskedAutoencoder(config)


class FinetuneModel(nn.Module):
    """logits (B, C) of spectrogram units (B, T, F)."""

    def __init__(
        self,
        encoder: MaskedAutoencoder,
        num_classes: int,
        pool: str = "auto",
        fc_norm: bool = True,
        init_std: float = 2e-5,
    ) -> None:
        super().__init__()
        for part in DECODER_PARTS:
            if hasattr(encoder, part):
                delattr(encoder, part)
        if hasattr(encoder, "encoder_mask_token"):  # SSAST-style: unused without masking
            encoder.encoder_mask_token.requires_grad_(False)
        has_cls = encoder.config.use_cls_token
        if pool == "cls" and not has_cls:
            raise ConfigError("head.pool=cls: this model has no cls token (use mean or auto)")
        self.pool = ("cls" if has_cls else "mean") if pool == "auto" else pool
        self.encoder = encoder
        dim = encoder.config.embed_dim
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    @property
    def depth(self) -> int:
        return len(self.encoder.blocks)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        if self.pool == "cls":
            # MaskedAutoencoder has no public "all tokens with cls" call (adapter, see report).
            pooled = enc._run_encoder(enc._embed_tokens(spec))[:, 0]
        else:
            pooled = enc.forward_features(spec).mean(dim=1)
        return self.head(self.fc_norm(pooled))


def layer_id(name: str, depth: int) -> int:
    """0: embeddings; i + 1: encoder block i; depth + 1: final norm, fc_norm, head."""
    parts = name.split(".")
    if parts[0] == "encoder" and parts[1] in EMBEDDING_PARTS:
        return 0
    if parts[0] == "encoder" and parts[1] == "blocks":
        return int(parts[2]) + 1
    return depth + 1


def layer_scales(depth: int, decay: float) -> list[float]:
    """lr multiplier of layer i = decay ** (depth + 1 - i), i = 0 .. depth + 1."""
    return [decay ** (depth + 1 - i) for i in range(depth + 2)]


def freeze(model: FinetuneModel, blocks: int | str) -> None:
    """No gradient for the embeddings and the first `blocks` blocks ("all": the encoder)."""
    if blocks == 0:
        return
    enc = model.encoder
    if blocks == "all":
        enc.requires_grad_(False)
        return
    if not 0 <= int(blocks) <= model.depth:
        raise ConfigError(f"head.freeze_blocks: {blocks} (the model has {model.depth} blocks)")
    for part in EMBEDDING_PARTS:
        if hasattr(enc, part):
            getattr(enc, part).requires_grad_(False)
    for block in enc.blocks[: int(blocks)]:
        block.requires_grad_(False)


def add_drop_path(model: FinetuneModel, rate: float) -> list[Any]:
    """Stochastic depth on the trainable blocks' residual branches; returns the hook handles."""
    handles = []
    depth = model.depth
    for i, block in enumerate(model.encoder.blocks):
        p = rate * i / (depth - 1) if depth > 1 else rate
        if p <= 0 or not any(q.requires_grad for q in block.parameters()):
            continue
        for branch in (block.attn, block.mlp):
            handles.append(branch.register_forward_hook(_drop_path_hook(p)))
    return handles


def _drop_path_hook(p: float):
    keep = 1.0 - p

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        shape = (output.shape[0],) + (1,) * (output.ndim - 1)
        mask = torch.empty(shape, device=output.device, dtype=output.dtype).bernoulli_(keep)
        return output * mask / keep

    return hook


def layer_decay_groups(
    model: FinetuneModel, weight_decay: float, decay: float
) -> list[dict[str, Any]]:
    """AdamW groups, one per (layer, decay or not): lr_scale from `layer_scales` (read by
    `mwmae.training.optim.LayerScaledAdamW`), no weight decay on 1-D tensors and
    embeddings/tokens (`mwmae.training.optim.is_no_decay`)."""
    scales = layer_scales(model.depth, decay)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, no_decay = layer_id(name, model.depth), is_no_decay(name, p)
        group = groups.setdefault(
            (lid, no_decay),
            {
                "params": [],
                "names": [],
                "lr_scale": scales[lid],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "layer": lid,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]
