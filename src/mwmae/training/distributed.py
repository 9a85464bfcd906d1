"""DistributedDataParallel plumbing for `torchrun` launches (single or multi node).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the run is
a single process. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from mwmae.errors import ConfigError

            raise ConfigError(
                "train.device=cuda, but this machine has no usable CUDA device "
                f"(torch {torch.__version__}); use train.device=auto or cpu"
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(
    device: str = "auto", backend: str = "auto", timeout_s: float = 1800
) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return DistInfo(device=dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            rank=rank,
            world_size=world_size,
        )
        owns = True
    log.info("rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, dev, backend)
    return DistInfo(rank, world_size, local_rank, dev, owns)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_strings(info: DistInfo, items: list[str]) -> list[str]:
    """Every rank's strings, on every rank (UTF-8 bytes in tensors: no pickling)."""
    if not info.enabled:
        return list(items)
    data = "\n".join(items).encode("utf-8")
    size = torch.tensor([len(data)], dtype=torch.long, device=info.device)
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    if longest == 0:
        return []
    buf = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    if data:
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(info.device)
    bufs = [torch.zeros_like(buf) for _ in range(info.world_size)]
    dist.all_gather(bufs, buf)
    out: list[str] = []
    for b, s in zip(bufs, sizes, strict=True):
        n = int(s)
        if n:
            out.extend(bytes(b[:n].cpu().tolist()).decode("utf-8").split("\n"))
    return out


def replica_max_abs_diff(info: DistInfo, model: torch.nn.Module) -> float:
    """Largest |w_rank - w_rank0| over all parameters and ranks (0.0 for one process)."""
    if not info.enabled:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=info.device)
    for p in model.state_dict().values():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        if ref.is_floating_point():
            diff = (p.detach().double() - ref.double()).abs().max()
        else:
            diff = (p.detach() != ref).any().double()
        worst = torch.maximum(worst, diff)
    all_reduce_max(info, worst)
    return float(worst)
