"""Atomic training checkpoints that resume exactly.

Layout of a run folder's `checkpoints/`:

    step_00000100/model.safetensors   model state dict (safetensors, no pickle)
    step_00000100/state.pt            optimiser, scheduler, step, counters, RNG states
    step_00000100/meta.json           human-readable summary
    latest                            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, flushed to disk, then renamed into
place with `os.replace`, and `latest` is replaced the same way: a run killed at any moment
leaves either the previous or the new checkpoint, never a partial one. `state.pt` holds only
tensors and plain containers, and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from mwmae._io import atomic_write_text, fsync_dir

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest"
_STEP_RE = re.compile(r"^step_(\d+)$")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint `step` under `directory` atomically; keep the newest `keep`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = directory / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    torch.save(state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps({"step": step, **(meta or {})}, indent=2))
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        _fsync_file(tmp / name)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a finished run resumed): swap it out
        old = directory / f".old-step_{step:08d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(directory)
    atomic_write_text(directory / LATEST_FILE, final.name + "\n", fsync=True)
    prune(directory, keep)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint named by `latest`, else the highest complete step folder."""
    directory = Path(directory)
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        candidate = directory / pointer.read_text().strip()
        if (candidate / MODEL_FILE).is_file() and (candidate / STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune(directory: Path, keep: int) -> None:
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in directory.glob(".tmp-step_*"):  # left by runs killed mid-write
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (strict) and return the training state (no pickle code)."""
    from safetensors.torch import load_file

    path = Path(path)
    weights = load_file(str(path / MODEL_FILE))
    model.load_state_dict(weights, strict=True)
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
