"""One optimiser step over micro-batches: the update every training loop shares.

`train_step` is the whole per-batch update (forward under autocast, loss scaled by the number
of micro-batches, backward, optional clipping, AdamW step, lr set from the schedule); the
pretraining loop calls it with MAE micro-batches, fine-tuning with its classifier's loss.
`micro_batch_rows` says which rows of a global batch a rank's micro-batch holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .optim import set_lr


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for precision "bf16", or "auto" on CUDA; otherwise nothing (fp32)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class StepResult:
    grad_norm: torch.Tensor  # of all gradients, before clipping (on the device: no sync)


def train_step(
    loss_fn: Callable[[Any], torch.Tensor],
    micro_batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    lr: float,
    accum_steps: int,
    *,
    params: Iterable[torch.nn.Parameter] | None = None,
    clip_grad_norm: float | None = None,
    ddp: torch.nn.parallel.DistributedDataParallel | None = None,
    amp: contextlib.AbstractContextManager | None = None,
    loss_total: torch.Tensor | None = None,
) -> StepResult:
    """One optimiser step over `accum_steps` micro-batches.

    loss_fn(micro_batch) returns the scalar loss of one micro-batch (run under `amp`); each is
    divided by `accum_steps` before backward, so the gradient is the mean over micro-batches.
    With `ddp`, gradients are all-reduced on the last micro-batch only. `loss_total` (a
    float64 scalar), when given, gets the step's mean loss added. The gradients of `params`
    are clipped to `clip_grad_norm` when it is set; their norm is returned either way.
    """
    set_lr(optimizer, lr)
    batches = iter(micro_batches)
    for micro in range(accum_steps):
        batch = next(batches)
        sync = ddp is None or micro == accum_steps - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with amp if amp is not None else contextlib.nullcontext():
                loss = loss_fn(batch)
            (loss / accum_steps).backward()
        if loss_total is not None:
            loss_total += loss.detach().double() / accum_steps
    params = [p for p in params or [] if p.grad is not None]
    if clip_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip_grad_norm))
    else:
        grad_norm = total_norm([p.grad for p in params])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(grad_norm)


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `tensors` together, on their device (no host sync)."""
    if not tensors:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused per-device norms
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def micro_batch_rows(
    global_batch: int, world_size: int, rank: int, accum_steps: int, micro: int
) -> slice:
    """Rows of the global batch in micro-batch `micro` of rank `rank`: each rank takes a
    contiguous slice of the global batch and splits it into `accum_steps` micro-batches, so
    the rows (and anything drawn per row) do not depend on the number of ranks."""
    from mwmae.errors import ConfigError

    if global_batch % (world_size * accum_steps):
        raise ConfigError(
            f"the global batch {global_batch} is not divisible by world size {world_size} x "
            f"accumulation steps {accum_steps}"
        )
    size = global_batch // (world_size * accum_steps)
    start = rank * (global_batch // world_size) + micro * size
    return slice(start, start + size)


__all__ = ["StepResult", "autocast", "micro_batch_rows", "total_norm", "train_step"]
