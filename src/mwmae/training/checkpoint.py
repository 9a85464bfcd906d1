"""Atomic training checkpoints that resume exactly, and verify before they are trusted.

Layout of a run folder's `checkpoints/`:

    step_00000100/model.safetensors   model state dict (`mwmae._io.save_weights`, no pickle)
    step_00000100/state.pt            the training state (`save_state`): format, kind, step,
                                      optimiser, RNG states and the job's own fields
    step_00000100/meta.json           summary, and the SHA-256 of every file above ("files")
    latest                            name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, flushed to disk, then renamed into
place with `os.replace`, and `latest` is replaced the same way: a run killed at any moment
leaves either the previous or the new checkpoint, never a partial one. A write that fails
(disk full) removes its temporary folder; stale ones are removed before each save and at
resume. `state.pt` holds only tensors and plain containers, read with `weights_only=True`.
`find_resumable` picks the newest checkpoint that verifies (digests, readable files);
`restore_state` puts a verified checkpoint back into a model and its optimiser.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mwmae._io import (
    atomic_write_text,
    fsync_dir,
    load_weights,
    read_json,
    save_weights,
    sha256_file,
)
from mwmae.errors import IntegrityError, MissingFileError, MwmaeError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST_FILE = "latest"
STATE_FORMAT = 1  # of state.pt, for every kind of training job
_STEP_RE = re.compile(r"^step_(\d+)$")
_STALE_GLOBS = (".tmp-step_*", ".old-step_*")


class CheckpointWriteError(MwmaeError, OSError):
    """A checkpoint could not be written (e.g. the disk is full); nothing partial is left."""


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


def remove_stale(directory: Path) -> None:
    """Remove temporary folders left by a save that was killed or failed."""
    for pattern in _STALE_GLOBS:
        for stale in Path(directory).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _write_files(tmp: Path, step: int, weights: dict, state_bytes: bytes, meta: dict) -> None:
    files = {
        MODEL_FILE: save_weights(
            tmp / MODEL_FILE, weights, {"format": "pt", "step": str(step)}, fsync=True
        )
    }
    with open(tmp / STATE_FILE, "wb") as fh:
        fh.write(state_bytes)
        fh.flush()
        os.fsync(fh.fileno())
    files[STATE_FILE] = hashlib.sha256(state_bytes).hexdigest()
    text = json.dumps({"step": step, **meta, "files": files}, indent=2)
    atomic_write_text(tmp / META_FILE, text, fsync=True)
    fsync_dir(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # the same step saved again (e.g. a finished run resumed): swap it out
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint `step` under `directory` atomically; keep the newest `keep`.

    Raises `CheckpointWriteError` naming the folder and the bytes needed when the write fails
    (its temporary folder is removed first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale(directory)
    final = directory / f"step_{step:08d}"
    tmp = directory / f".tmp-step_{step:08d}-{os.getpid()}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    state_bytes = buffer.getvalue()
    needed = sum(t.numel() * t.element_size() for t in weights.values()) + len(state_bytes)
    try:
        tmp.mkdir()
        _write_files(tmp, step, weights, state_bytes, dict(meta or {}))
        _move_into_place(tmp, final)
        atomic_write_text(directory / LATEST_FILE, final.name + "\n", fsync=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(
            f"{directory}: could not write checkpoint {final.name} "
            f"(about {needed:,} bytes needed): {exc.strerror or exc}"
        ) from exc
    prune(directory, keep)
    return final


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first."""
    return [
        p
        for _, p in _step_dirs(Path(directory))
        if (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file()
    ]


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


@dataclass
class Loaded:
    """A verified checkpoint, read: its folder, weights and training state."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


def _recorded_digests(path: Path) -> dict[str, str]:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return {}  # written before digests were recorded: checked by reading only
    meta = read_json(meta_path)  # malformed: IntegrityError
    try:
        return dict(meta.get("files") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{meta_path}: not a checkpoint record ({exc})") from None


def _load_state(file: Path, expected: str | None) -> dict[str, Any]:
    if not file.is_file():
        raise MissingFileError(f"{file}: missing")
    if expected is not None and sha256_file(file) != expected:
        raise IntegrityError(f"{file}: SHA-256 does not match the one recorded in {META_FILE}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own text suggests weights_only=False: never show it
        raise IntegrityError(
            f"{file}: not a readable training state ({type(exc).__name__}; "
            "truncated, damaged or not written by mwmae)"
        ) from None
    if not isinstance(state, dict):
        raise IntegrityError(f"{file}: not a training state (a {type(state).__name__})")
    return state


def verify_checkpoint(path: str | Path) -> Loaded:
    """Read checkpoint folder `path`, checking every recorded digest; raise `IntegrityError`
    (or `MissingFileError`) naming the file that fails."""
    path = Path(path)
    digests = _recorded_digests(path)
    weights, _ = load_weights(path / MODEL_FILE, digests.get(MODEL_FILE))
    state = _load_state(path / STATE_FILE, digests.get(STATE_FILE))
    return Loaded(path, weights, state)


def find_resumable(directory: str | Path) -> Loaded | None:
    """The newest checkpoint under `directory` that verifies, read; None when there is none.

    Each newer checkpoint that fails is logged with the reason; raises `IntegrityError`
    naming the folder when checkpoints exist but none verifies."""
    directory = Path(directory)
    remove_stale(directory)
    candidates = [p for _, p in reversed(_step_dirs(directory))]
    for candidate in candidates:
        try:
            return verify_checkpoint(candidate)
        except (IntegrityError, MissingFileError) as exc:
            log.warning("skipping checkpoint %s: %s", candidate.name, exc)
    if candidates:
        raise IntegrityError(
            f"{directory}: none of the {len(candidates)} checkpoint(s) verifies "
            "(see the warnings above); move them away to start again"
        )
    return None


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into `model` (strict) and return the training state (no pickle code)."""
    loaded = verify_checkpoint(path)
    model.load_state_dict(loaded.weights, strict=True)
    return loaded.state


def save_state(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    kind: str,
    extra: dict[str, Any],
    meta: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    """`save_checkpoint` of the one training-state format: {format, kind, step, optimizer,
    rng} plus the job's own `extra` fields (counters, best score, ...)."""
    state = {
        "format": STATE_FORMAT,
        "kind": kind,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        **extra,
    }
    return save_checkpoint(directory, step, model, state, meta=meta, keep=keep)


def restore_state(
    loaded: Loaded, model: torch.nn.Module, optimizer: torch.optim.Optimizer, kind: str
) -> dict[str, Any]:
    """Load a verified checkpoint of `kind` into `model` and `optimizer` and restore the RNG
    states; returns the whole state (its "step" and the job's own fields). Pretraining
    checkpoints written before states had a kind are read as pretraining ones."""
    state = loaded.state
    if state.get("format") != STATE_FORMAT:
        raise IntegrityError(f"{loaded.path}: unknown checkpoint format {state.get('format')!r}")
    if state.get("kind", "pretrain") != kind:
        raise IntegrityError(
            f"{loaded.path}: a {state.get('kind', 'pretrain')} checkpoint, not a {kind} one"
        )
    model.load_state_dict(loaded.weights, strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:
        set_rng_state(state["rng"])
    return state


def due(step: int, total: int, every: int) -> bool:
    """Whether something done every `every` steps (0: never) and after the last step is due
    after `step`."""
    return step == total or bool(every and step % every == 0)
