"""Running a training job: the process around it, the state every loop carries, and Ctrl-C.

- `session(train, ddp)`: thread count, the torchrun process group and the device for the
  job; on exit the caller's process is left as it was.
- `Trainer`: the model, its optimiser and schedule, the DDP/compiled wrapper and the step
  count; `Trainer.train_step` is one optimiser step, `save`/`restore` the one checkpoint
  format. It watches every step's loss and gradient norm for NaN/Inf on the device (no
  sync) and `check_finite` reads that at log and checkpoint boundaries: a diverged run stops
  with one line naming the step and the last good checkpoint, and never writes weights.
- `StopOnInterrupt` turns the first SIGINT into a flag that `stop_requested` reads after a
  step (every rank stops at the same step); the loop then writes a checkpoint and raises
  `TrainingInterrupted`, which says how to resume.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwmae._io import first_non_finite
from mwmae.errors import NonFiniteError

from . import checkpoint as ckpt
from .config import DDPConfig, TrainConfig
from .distributed import DistInfo, all_reduce_max, barrier, cleanup, init_distributed
from .optim import WarmupCosine
from .step import StepResult, autocast, train_step


@contextlib.contextmanager
def session(train: TrainConfig, ddp: DDPConfig) -> Iterator[DistInfo]:
    """Set the thread count, join torchrun's process group (if launched by torchrun) and pick
    the device; on exit leave the group we created and restore the caller's thread count."""
    threads = torch.get_num_threads()
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    try:
        info = init_distributed(train.device, ddp.backend, ddp.timeout_s)
        try:
            yield info
        finally:
            cleanup(info)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Trainer:
    """What every training loop steps and checkpoints the same way."""

    info: DistInfo
    model: nn.Module  # the bare model: weights, checkpoints, figures
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    forward: nn.Module  # what is called: DDP-wrapped and/or compiled
    ddp: nn.parallel.DistributedDataParallel | None
    precision: str = "auto"
    clip_grad_norm: float | None = None
    accum_steps: int = 1
    checkpoint_dir: Path | None = None  # where `save` writes (named by divergence errors)
    step: int = 0  # optimiser steps done
    saved_step: int = -1  # the step of the last checkpoint written
    lr: float = 0.0  # of the last step
    # On the device: (step, loss, grad norm) of the first step with a non-finite loss or
    # gradient norm; step -1 while every step was finite. Read only by `check_finite`.
    first_bad: torch.Tensor | None = None

    @classmethod
    def wrap(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: WarmupCosine,
        info: DistInfo,
        *,
        compile: bool = False,
        find_unused_parameters: bool = False,
        **settings: Any,
    ) -> Trainer:
        """A trainer for `model` (already on `info.device`): DDP-wrapped under torchrun,
        compiled when asked; `settings` are precision, clip_grad_norm, accum_steps and
        checkpoint_dir."""
        ddp = None
        if info.enabled:
            ddp = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
        wrapped = ddp if ddp is not None else model
        forward = torch.compile(wrapped) if compile else wrapped
        return cls(info, model, optimizer, schedule, forward, ddp, **settings)

    def train_step(
        self,
        loss_fn: Callable[[Any], torch.Tensor],
        micro_batches: Iterable[Any],
        loss_total: torch.Tensor | None = None,
    ) -> StepResult:
        """One optimiser step at the schedule's lr of the current step (see `train_step`);
        the step's mean loss is added to `loss_total` when given."""
        self.lr = self.schedule(self.step)
        loss = torch.zeros((), dtype=torch.float64, device=self.info.device)
        result = train_step(
            loss_fn,
            micro_batches,
            self.optimizer,
            self.lr,
            self.accum_steps,
            params=self.model.parameters(),
            clip_grad_norm=self.clip_grad_norm,
            ddp=self.ddp,
            amp=autocast(self.info.device, self.precision),
            loss_total=loss,
        )
        self.step += 1
        self._watch(loss, result.grad_norm)
        if loss_total is not None:
            loss_total += loss
        return result

    def _watch(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember the first step whose loss or gradient norm is not finite (device ops)."""
        device = self.info.device
        if self.first_bad is None:
            self.first_bad = torch.full((3,), -1.0, dtype=torch.float64, device=device)
        norm = grad_norm.detach().to(device=device, dtype=torch.float64)
        now = torch.stack([torch.full((), float(self.step), dtype=torch.float64, device=device),
                           loss, norm])  # fmt: skip
        first = ~(torch.isfinite(loss) & torch.isfinite(norm)) & (self.first_bad[0] < 0)
        self.first_bad = torch.where(first, now, self.first_bad)

    def check_finite(self) -> None:
        """Raise `NonFiniteError` if any step so far, on any rank, had a non-finite loss or
        gradient norm: one line naming the step, the last good checkpoint and what to change.
        Reads the device (call it at log and checkpoint boundaries, not every step)."""
        if self.first_bad is None:
            return
        bad = self.first_bad.clone()
        # the earliest bad step over ranks (-1 = none): max over ranks of -step where bad
        key = torch.where(bad[0] >= 0, -bad[0], torch.full_like(bad[0], -math.inf))[None]
        step = -float(all_reduce_max(self.info, key).item())
        if math.isinf(step):
            return
        _, loss, norm = bad.tolist()
        if bad[0] < 0:  # another rank saw it; this rank's numbers were finite
            what = "the loss (on another rank) is not finite"
        elif not math.isfinite(loss):
            what = f"loss is {loss}"
        else:
            what = f"the gradient norm is {norm}"
        raise self._diverged(f"{what} at step {int(step)}")

    def _diverged(self, what: str) -> NonFiniteError:
        last = ckpt.latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        where = str(last) if last is not None else "none (no checkpoint was written yet)"
        return NonFiniteError(
            f"{what}; last good checkpoint: {where}; nothing was written after it. Lower "
            "optim.base_lr or set optim.clip_grad_norm (a new run), or run again as it is to "
            "retry from that checkpoint"
        )

    def check_weights(self) -> None:
        """`check_finite`, then the weights themselves (before anything writes them)."""
        self.check_finite()
        bad = first_non_finite({k: v.detach() for k, v in self.model.state_dict().items()})
        if bad is not None:
            raise self._diverged(f"weight {bad!r} holds NaN or Inf after step {self.step}")

    def save(
        self,
        directory: Path,
        kind: str,
        extra: dict[str, Any],
        meta: dict[str, Any] | None = None,
        keep: int = 3,
    ) -> Path:
        """Write checkpoint `step` (rank 0) and wait for every rank; returns its folder.
        Raises `NonFiniteError` instead when the run has diverged (nothing is written)."""
        self.check_weights()
        path = Path(directory) / f"step_{self.step:08d}"
        if self.info.is_main:
            path = ckpt.save_state(
                directory, self.step, self.model, self.optimizer, kind, extra, meta, keep
            )
        self.saved_step = self.step
        barrier(self.info)
        return path

    def restore(self, loaded: ckpt.Loaded, kind: str) -> dict[str, Any]:
        """Continue from a verified checkpoint; returns its state (the job's own fields)."""
        state = ckpt.restore_state(loaded, self.model, self.optimizer, kind)
        self.step = self.saved_step = int(state["step"])
        return state


# ---- Ctrl-C ---------------------------------------------------------------------------------


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


def stop_requested(info: DistInfo, stop: StopOnInterrupt) -> bool:
    """Whether any rank was asked to stop (so that every rank stops at the same step)."""
    if not info.enabled:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=info.device)
    return bool(all_reduce_max(info, flag).item())
