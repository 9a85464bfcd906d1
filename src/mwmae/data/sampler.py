"""Sampling: the global stream of (epoch, index) positions, the DataLoader over it, and the
way of its batches to the training device (`device_batches`).

The sample stream is the concatenation of per-epoch permutations, the permutation of epoch `e`
drawn from (seed, e); global step `s` takes stream positions [s * G, (s + 1) * G) for a global
batch G, split into contiguous per-rank and per-micro-batch slices. It depends only on
(seed, G, N), never on the number of workers or ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from mwmae.data.dataset import PretrainDataset, collate_clips
from mwmae.errors import ConfigError, InputError

_TAG_PERMUTATION = 0x5EED_0001  # keeps the permutations' seed stream apart from the others


class EpochBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of (epoch, index) for steps [start_step, total_steps).

    Global step s covers stream positions [s * G, (s + 1) * G); rank r takes the r-th of
    `world_size` contiguous slices and splits it into `accum_steps` micro-batches. Stream
    position p is index perm_e[p % N] of epoch e = p // N, perm_e a permutation seeded by
    (seed, e). The result depends only on (seed, G, N), never on workers or ranks.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        accum_steps: int = 1,
        start_step: int = 0,
        total_steps: int = 1,
    ) -> None:
        if num_items <= 0:
            raise InputError("the dataset is empty")
        if global_batch % (world_size * accum_steps):
            raise ConfigError(
                f"global batch {global_batch} must be divisible by world size {world_size} x "
                f"accumulation steps {accum_steps}"
            )
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.start_step, self.total_steps = start_step, total_steps
        self.micro_batch = global_batch // (world_size * accum_steps)
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, _TAG_PERMUTATION, epoch])
            )
            perm = rng.permutation(self.num_items)
            self._perms = {epoch: perm}  # keep one: the stream only moves forward
        return perm

    def positions(self, step: int, micro: int) -> list[tuple[int, int]]:
        start = (
            step * self.global_batch
            + self.rank * (self.global_batch // self.world_size)
            + micro * self.micro_batch
        )
        out = []
        for p in range(start, start + self.micro_batch):
            epoch, offset = divmod(p, self.num_items)
            out.append((epoch, int(self.permutation(epoch)[offset])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.accum_steps):
                yield self.positions(step, micro)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accum_steps


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers do small STFTs; one thread each avoids oversubscription


def make_loader(
    dataset: PretrainDataset,
    sampler: EpochBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader that returns micro-batches in sampler order (`collate_clips` dicts).

    `generator` seeds the workers' base seed; passing one leaves the global torch RNG alone.
    """
    kwargs: dict[str, Any] = {"generator": generator}
    if num_workers > 0:
        kwargs.update(
            prefetch_factor=prefetch_factor, worker_init_fn=_worker_init, persistent_workers=False
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        **kwargs,
    )


def device_batches(
    loader: Iterable[dict[str, Any]], device: torch.device | str
) -> Iterator[dict[str, Any]]:
    """The loader's batches with their model input ("spec") on `device`.

    On CUDA each batch is copied (non-blocking, from the pinned memory of a `pin_memory`
    loader) and, for a dataset that leaves them to the device (`features_on="device"`), its
    features computed, on a side stream one batch ahead, so that the copy overlaps the current
    step. Elsewhere the batches pass as they come (their features computed on the CPU if they
    carry raw crops)."""
    device = torch.device(device)
    dataset = getattr(loader, "dataset", None)
    spec_of = dataset.batch_spec if isinstance(dataset, PretrainDataset) else _spec_as_is
    if device.type != "cuda":
        for batch in loader:
            yield {**batch, "spec": spec_of(batch, device)}
        return
    stream = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)

    def issue(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.cuda.Event]:
        with torch.cuda.stream(stream):
            moved = {**batch, "spec": spec_of(batch, device)}
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    pending = None
    for batch in loader:  # fetch batch k, start its copy, then hand over batch k - 1
        ready, pending = pending, issue(batch)
        if ready is not None:
            yield _handed_over(*ready, current)
    if pending is not None:
        yield _handed_over(*pending, current)


def _spec_as_is(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    return batch["spec"].to(device, non_blocking=True)


def _handed_over(
    batch: dict[str, Any], done: torch.cuda.Event, current: torch.cuda.Stream
) -> dict[str, Any]:
    """A batch made on the side stream, safe to use on the `current` stream once its own
    copy is done (not the copies issued after it)."""
    current.wait_event(done)
    batch["spec"].record_stream(current)  # its memory is not reused while `current` needs it
    return batch
