"""One optimiser step, and stopping cleanly on Ctrl-C: the parts any training loop shares.

`train_step` is the whole per-batch update (forward under autocast, loss scaled by the number
of micro-batches, backward, optional clipping, AdamW step, lr set from the schedule); the
pretraining loop calls it with MAE micro-batches, and fine-tuning can call it with its own
loss function. `StopOnInterrupt` turns SIGINT into a flag the loop checks after each step, so
the loop can finish the step, write a checkpoint and raise `TrainingInterrupted`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
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
    grad_norm: torch.Tensor | None  # before clipping; None when clipping is off


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
    float64 scalar), when given, gets the step's mean loss added. `params` are clipped to
    `clip_grad_norm` when it is set.
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
    grad_norm = None
    if clip_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params or []), float(clip_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(grad_norm)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after a checkpoint was written; says how to resume."""

    def __init__(self, step: int, checkpoint: Path | None, run_dir: Path) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.run_dir = step, checkpoint, run_dir


class StopOnInterrupt:
    """While active, the first SIGINT sets `requested` (the loop stops after the current
    step); a second one interrupts at once. Only in the main thread; elsewhere a no-op."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


__all__ = [
    "StepResult",
    "StopOnInterrupt",
    "TrainingInterrupted",
    "autocast",
    "train_step",
]
