"""AdamW, its parameter groups, and the per-step learning-rate schedule of the reference.

One optimiser for every training job: `adamw(groups, ...)` builds a `LayerScaledAdamW`, AdamW
whose groups may carry an `lr_scale` (fine-tuning's layer-wise lr decay; 1 elsewhere, where it
is exactly `torch.optim.AdamW`), so a loop sets one lr per step with `set_lr`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Parameters that conventional MAE training leaves out of weight decay. The reference decays
# everything; `decay_exclude=True` uses this list (plus every 1-D tensor: biases, norms,
# relative-position tables).
NO_DECAY_NAMES = ("pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "encoder_mask_token")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES


def param_groups(
    model: nn.Module, weight_decay: float, decay_exclude: bool = False
) -> list[dict[str, Any]]:
    """One group (decay on every trainable parameter, as the reference) or two (decay, none)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not decay_exclude:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    decay = [p for n, p in named if not is_no_decay(n, p)]
    no_decay = [p for n, p in named if is_no_decay(n, p)]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class LayerScaledAdamW(torch.optim.AdamW):
    """AdamW whose groups' lr is multiplied by their `lr_scale` at each step, so a loop that
    sets one lr for every group (`set_lr`) keeps per-group scales (layer-wise lr decay)."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        base = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, base, strict=True):
                g["lr"] = lr


def adamw(
    groups: list[dict[str, Any]],
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> LayerScaledAdamW:
    """AdamW with decoupled decay p -= lr * wd * p (as optax.adamw), each group's own
    `weight_decay` and optional `lr_scale`; the lr is set per step with `set_lr`."""
    if not groups:
        from mwmae.errors import ConfigError

        raise ConfigError("nothing to train: every parameter is frozen")
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return LayerScaledAdamW(groups, lr=0.0, betas=betas, eps=eps, **kwargs)


def build_optimizer(
    model: nn.Module,
    lr: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.05,
    decay_exclude: bool = False,
    fused: bool | None = None,
) -> LayerScaledAdamW:
    """`adamw` over `param_groups(model, weight_decay, decay_exclude)`, lr set to `lr`."""
    optimizer = adamw(param_groups(model, weight_decay, decay_exclude), betas, eps, fused)
    set_lr(optimizer, lr)
    return optimizer


class WarmupCosine:
    """lr(step): linear from 0 to `peak_lr` over `warmup_steps`, then cosine to 0 at
    `total_steps` (optax join_schedules([linear, cosine_decay(alpha=0)])); lr(0) = 0.

    Stateless apart from the step, so resuming only needs the step.
    """

    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int) -> None:
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"bad schedule: warmup {warmup_steps}, total {total_steps}")
        self.peak_lr, self.warmup_steps, self.total_steps = peak_lr, warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps <= 0:
            return self.peak_lr
        progress = min(step - self.warmup_steps, decay_steps) / decay_steps
        return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peak_lr = float(state["peak_lr"])
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = int(state["total_steps"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
