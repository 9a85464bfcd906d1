"""Embed a HEAR task folder with any HEAR-API module, cached on disk.

Works with any module exposing the HEAR common API (`get_scene_embeddings(audio, model)`,
`get_timestamp_embeddings(audio, model)`) and a model from its `load_model`, with
`sample_rate` on the model (or the module).

Output layout, one folder per task (no pickle anywhere; `.npy` files hold no objects)::

    OUT/<task>/task_metadata.json, labelvocabulary.csv     copies (vocabulary built if absent)
    OUT/<task>/<split>.embeddings.npy       float32 (rows, D): one row per file (scene) or frame
    OUT/<task>/<split>.labels.json          one list of labels per row
    OUT/<task>/<split>.filenames.json       scene: file per row; event: [file, t_ms] per row
    OUT/<task>/<split>.json                 event only: the reference events of the split
    OUT/<task>/<split>.cache.json           what the split was made from (see `embed_task`)
    OUT/<task>/<split>.done.json            written last: rows, dim, model id, and the size and
                                            SHA-256 of each file above ("outputs")

A split whose `.done.json` exists, whose cache record matches and whose files match their
recorded sizes and digests is skipped on re-runs; every file is written to a temporary name and
renamed, so an interrupted run never leaves a half-written split that looks finished, and a
file truncated or changed later is re-embedded. Embeddings holding NaN or Inf are never written
(the error names the audio file). `embed_tasks` embeds several task folders with one model spec
(weights, 'logmel', or another HEAR module's), holding the output folder's lock (one writer),
as `mwmae embed` and the demo do. Reading a split back and heareval's layout are in
`mwmae.evaluation.stored`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mwmae._io import atomic_save_npy
from mwmae.errors import (
    ConfigError,
    InputError,
    NonFiniteError,
    reraise_as_input_errors,
    reraise_as_output_errors,
)
from mwmae.evaluation.stored import (
    atomic_write_json,
    changed_files,
    file_record,
    recorded_outputs,
    split_done,
)
from mwmae.evaluation.tasks import (
    Task,
    find_task_dirs,
    load_task,
    read_task_json,
    write_label_vocabulary,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------
def _model_device(model: Any) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def _attr(hear_module: ModuleType, model: Any, name: str) -> Any:
    # The HEAR API puts these on the model; some modules expose them at module level.
    if hasattr(model, name):
        return getattr(model, name)
    if hasattr(hear_module, name):
        return getattr(hear_module, name)
    raise AttributeError(f"neither the model nor {hear_module!r} has attribute {name!r}")


def _plan_batches(
    paths: list[Path], fixed: int | None, batch_size: int, sample_rate: int, broken: list[str]
) -> list[list[int]]:
    """Indices per batch. With a fixed length every file is cropped/padded to it (as HEAR does
    with sample_duration); otherwise only files of equal length share a batch, so padding never
    leaks into an embedding. Files whose header cannot be read are appended to `broken` and
    left out."""
    import soundfile as sf

    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        try:
            info = sf.info(str(p))
        except Exception as exc:  # soundfile raises several types for unreadable headers
            broken.append(f"{p} ({type(exc).__name__})")
            continue
        n = fixed if fixed is not None else int(round(info.frames * sample_rate / info.samplerate))
        by_len.setdefault(n, []).append(i)
    batches = []
    for n in sorted(by_len):
        group = by_len[n]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def _load_batch(
    paths: list[Path], sample_rate: int, fixed: int | None, broken: list[str]
) -> torch.Tensor | None:
    """The batch's audio, or None if a file cannot be decoded (each one goes to `broken`)."""
    from mwmae import features

    waves = []
    for p in paths:
        try:
            waves.append(features.load_audio(p, sample_rate))
        except features.AudioError as exc:
            broken.append(f"{p} ({str(exc).removeprefix(str(p) + ': ')})")
    if len(waves) < len(paths):
        return None
    if fixed is not None:
        waves = [np.pad(w[:fixed], (0, max(0, fixed - len(w)))) for w in waves]
    n = min(len(w) for w in waves)  # equal lengths up to resampling rounding
    return torch.from_numpy(np.stack([w[:n] for w in waves]).astype(np.float32))


def _frame_labels(events: list[dict], t: float) -> list[str]:
    # Labels active at frame centre t; the end is inclusive as in heareval (end + 0.0001 ms).
    return sorted({ev["label"] for ev in events if ev["start"] <= t <= ev["end"] + 1e-4})


def _split_files(task: Task, split: str, sample_rate: int) -> list[Path]:
    # Fall back to the 16 kHz audio (resampled on load) if the task lacks the model's rate.
    file_rate = sample_rate if task.audio_dir(split, sample_rate).is_dir() else 16000
    return task.audio_files(split, file_rate)


def _scene_rows(hear_module: ModuleType, model: Any, audio: torch.Tensor) -> np.ndarray:
    """(n, D) scene embeddings of a batch, checked for shape."""
    emb = hear_module.get_scene_embeddings(audio, model).detach().float().cpu().numpy()
    if emb.shape[0] != len(audio) or emb.ndim != 2:
        raise ValueError(
            f"get_scene_embeddings returned shape {emb.shape} for "
            f"{len(audio)} sounds; expected ({len(audio)}, D)"
        )
    return emb


def _timestamp_rows(
    hear_module: ModuleType, model: Any, audio: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, D) timestamp embeddings and (n, T) timestamps (ms) of a batch, checked for shape."""
    emb, ts = hear_module.get_timestamp_embeddings(audio, model)
    emb = emb.detach().float().cpu().numpy()
    ts = ts.detach().double().cpu().numpy()
    if emb.ndim != 3 or ts.shape != emb.shape[:2] or emb.shape[0] != len(audio):
        raise ValueError(
            f"get_timestamp_embeddings returned shapes {emb.shape}, "
            f"{ts.shape} for {len(audio)} sounds; expected (n, T, D), (n, T)"
        )
    return emb, ts


@torch.no_grad()
def _embed_files(
    hear_module: ModuleType,
    model: Any,
    task: Task,
    split: str,
    paths: list[Path],
    batch_size: int,
    sample_rate: int,
    progress: bool,
    broken: list[str],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per file: its embedding rows (one for scene tasks, one per frame for event tasks) and
    its frame timestamps (event tasks). Unreadable files go to `broken` (all of them: the scan
    goes on, embedding nothing more, once one is found)."""
    from mwmae._progress import progress_bar

    sd = task.metadata.sample_duration
    fixed = int(round(sd * sample_rate)) if sd else None
    batches = _plan_batches(paths, fixed, batch_size, sample_rate, broken)
    device = _model_device(model)
    scene = task.metadata.embedding_type == "scene"
    rows: list[np.ndarray] = [np.empty((0, 0), np.float32)] * len(paths)
    stamps: list[np.ndarray] = [np.empty(0)] * len(paths)
    for batch in progress_bar(
        batches, desc=f"{task.name}/{split}", unit="batch", disable=not progress
    ):
        audio = _load_batch([paths[i] for i in batch], sample_rate, fixed, broken)
        if audio is None or broken:
            continue  # keep scanning, so that every broken file is reported at once
        audio = audio.to(device)
        if scene:
            emb = _scene_rows(hear_module, model, audio)
            for j, i in enumerate(batch):
                rows[i] = emb[j : j + 1]
        else:
            emb, ts = _timestamp_rows(hear_module, model, audio)
            for j, i in enumerate(batch):
                rows[i], stamps[i] = emb[j], ts[j]
        _refuse_non_finite(task, split, [paths[i] for i in batch], [rows[i] for i in batch])
    return rows, stamps


def _refuse_non_finite(task: Task, split: str, paths: list[Path], rows: list[np.ndarray]) -> None:
    """Non-finite embeddings are never written: `NonFiniteError` naming the audio files."""
    bad = [str(p) for p, r in zip(paths, rows, strict=True) if not np.isfinite(r).all()]
    if bad:
        shown = "; ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"{shown}: the model's embedding holds NaN or Inf (task {task.name!r}, split "
            f"{split!r}); the split was not written"
        )


def _write_split(
    task: Task,
    split: str,
    out: Path,
    embedded: tuple[list[np.ndarray], list[np.ndarray]],
    record: dict[str, Any],
    sample_rate: int,
) -> None:
    """Write one embedded split (rows per file, timestamps per file), its cache record and,
    last, its `.done.json` marker with the size and SHA-256 of each file written before it."""
    rows, stamps = embedded
    names = list(task.labels[split])
    embeddings = np.concatenate(rows, axis=0).astype(np.float32)
    if task.metadata.embedding_type == "scene":
        labels = [task.labels[split][n] for n in names]
        filenames: list[Any] = names
    else:
        labels, filenames = [], []
        for n, ts in zip(names, stamps, strict=True):
            events = task.labels[split][n]
            labels += [_frame_labels(events, float(t)) for t in ts]
            filenames += [[n, float(t)] for t in ts]
        atomic_write_json(out / f"{split}.json", task.labels[split])
    atomic_save_npy(out / f"{split}.embeddings.npy", embeddings)
    atomic_write_json(out / f"{split}.labels.json", labels)
    atomic_write_json(out / f"{split}.filenames.json", filenames)
    # What the split was made from, then the marker last: its presence means every other file
    # of the split is complete, and its records tell whether they still are.
    atomic_write_json(out / f"{split}.cache.json", record)
    written = [f"{split}.{s}" for s in ("embeddings.npy", "labels.json", "filenames.json")]
    written.append(f"{split}.cache.json")
    if task.metadata.embedding_type != "scene":
        written.append(f"{split}.json")
    atomic_write_json(
        out / f"{split}.done.json",
        {
            "rows": int(embeddings.shape[0]),
            "dim": int(embeddings.shape[1]),
            "files": len(names),
            "model_id": record["model"].get("id"),
            "sample_rate": sample_rate,
            "outputs": {name: file_record(out / name) for name in written},
        },
    )


def _embed_split(
    hear_module: ModuleType,
    model: Any,
    task: Task,
    split: str,
    out: Path,
    batch_size: int,
    sample_rate: int,
    progress: bool,
    record: dict[str, Any],
    paths: list[Path],
) -> list[str]:
    """Embed one split's audio `paths` and write it; returns its broken files (then nothing
    is written)."""
    broken: list[str] = []
    embedded = _embed_files(
        hear_module, model, task, split, paths, batch_size, sample_rate, progress, broken
    )
    if not broken:
        with reraise_as_output_errors(out):  # a read-only folder, a full disk
            _write_split(task, split, out, embedded, record, sample_rate)
    return broken


# Instance attributes that change embeddings (the HEAR API's and mwmae.hear's precision);
# other instance scalars (counters, batch sizes) do not, and are left out of the key.
_KEY_ATTRS = ("sample_rate", "scene_embedding_size", "timestamp_embedding_size", "precision")


def _simple_settings(obj: Any) -> dict[str, Any]:
    """Class-level scalar settings (outside torch), the HEAR attributes and every dataclass
    attribute (a model config) of an object."""
    out: dict[str, Any] = {}
    own = [c for c in type(obj).__mro__ if c.__module__.split(".")[0] not in ("torch", "builtins")]
    for name in sorted(set().union(*(vars(c) for c in own)) | set(vars(obj))):
        if name.startswith("_"):
            continue
        value = getattr(obj, name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[name] = json.loads(json.dumps(dataclasses.asdict(value), default=str))
        elif isinstance(value, (bool, int, float, str)) and (
            name in _KEY_ATTRS or name not in vars(obj)
        ):
            out[name] = value
    return out


def weights_digest(path: str | Path) -> dict[str, str] | None:
    """SHA-256 of a weights file, or of every file under a weights folder (relative names);
    None if `path` is not a file or folder (e.g. 'logmel')."""
    from mwmae._io import sha256_file

    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {str(p.relative_to(path)): sha256_file(p) for p in files}
    return None


def model_fingerprint(hear_module: ModuleType, model: Any, model_ref: str | None) -> dict:
    """What a split's embeddings depend on, model side: the module, the weights' digest, and
    the settings (model config, front end) found on the loaded model and its submodules."""
    settings = _simple_settings(model)
    if isinstance(model, torch.nn.Module):
        for name, child in model.named_children():
            settings[name] = _simple_settings(child)
    from mwmae import features

    front_end = {
        k: v for k, v in vars(features).items() if k.isupper() and isinstance(v, (int, float, str))
    }
    return {
        "id": model_ref,
        "module": hear_module.__name__,
        "front_end": front_end,
        "weights_sha256": weights_digest(model_ref) if model_ref else None,
        "settings": settings,
    }


def split_files_record(task: Task, split: str, files: list[Path]) -> list[list[Any]]:
    """[name, size, mtime_ns] of a split's audio files and its label file."""
    rows = []
    for p in [task.folder / f"{split}.json", *files]:
        st = p.stat()
        rows.append([str(p.relative_to(task.folder)), st.st_size, st.st_mtime_ns])
    return rows


def _split_record(
    task: Task, split: str, fingerprint: dict, sample_rate: int, paths: list[Path]
) -> dict:
    return {
        "model": fingerprint,
        "sample_rate": sample_rate,
        "sample_duration": task.metadata.sample_duration,
        "embedding_type": task.metadata.embedding_type,
        "files": split_files_record(task, split, paths),
    }


def _cached(out: Path, split: str, record: dict) -> bool:
    """Reused only if finished, made from exactly this model, settings and file list, and its
    files still match the sizes and digests recorded when they were written."""
    cache = out / f"{split}.cache.json"
    if not (split_done(out, split) and cache.is_file()):
        return False
    try:
        if json.loads(cache.read_text()) != json.loads(json.dumps(record)):
            return False
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return False
    outputs = recorded_outputs(out, split)
    changed = changed_files(out, outputs) if outputs else ["(no record of its files)"]
    if changed:
        log.warning(
            "%s/%s: changed after it was embedded, re-embedding: %s", out, split, "; ".join(changed)
        )
    return not changed


def embed_task(
    hear_module: ModuleType,
    model: Any,
    task_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 16,
    progress: bool = False,
    model_id: str | None = None,
    overwrite: bool = False,
    fingerprint: dict | None = None,
) -> Path:
    """Embed every split of one task into `out_dir/<task folder name>/`; returns that folder.

    A split is reused only if its `<split>.cache.json` matches what it would be made from now:
    the model (`model_fingerprint`: module, `model_id` and the SHA-256 of the weights it names,
    the loaded model's settings), the sample rate and duration, and the split's file list
    (names, sizes, modification times), and its output files match the sizes and SHA-256
    recorded in its `.done.json`. Anything else re-embeds that split; `overwrite` re-embeds
    all. `fingerprint`: `model_fingerprint(hear_module, model, model_id)` when the caller has
    it (`embed_tasks` hashes the weights once for all its tasks). Splits with undecodable
    audio are not written; after every split was tried, InputError lists every broken file
    (the good splits stay embedded). A batch whose embeddings hold NaN or Inf stops the run
    (`NonFiniteError` naming its files); a folder that cannot be written is an `OutputError`
    naming it.
    """
    task = load_task(task_dir)
    out = Path(out_dir) / Path(task_dir).name
    sample_rate = int(_attr(hear_module, model, "sample_rate"))
    fingerprint = fingerprint or model_fingerprint(hear_module, model, model_id)
    with reraise_as_output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(task.folder / "task_metadata.json", out / "task_metadata.json")
        write_label_vocabulary(out / "labelvocabulary.csv", task.vocabulary)
    broken: list[str] = []
    for split in task.metadata.splits:
        paths = _split_files(task, split, sample_rate)
        record = _split_record(task, split, fingerprint, sample_rate, paths)
        if not overwrite and _cached(out, split, record):
            log.info("%s/%s: cached, skipped", task.name, split)
            continue
        (out / f"{split}.done.json").unlink(missing_ok=True)
        broken += _embed_split(
            hear_module, model, task, split, out, batch_size, sample_rate, progress, record, paths
        )
    if broken:
        raise InputError(
            f"{task.folder}: {len(broken)} audio file(s) cannot be read, their splits were not "
            f"embedded (the others were): {'; '.join(broken)}"
        )
    return out


def check_device(device: str) -> torch.device:
    """The torch device `device` names, if this machine has it: a `ConfigError` naming it
    otherwise (`cuda` on a machine without CUDA used to end in a traceback)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= (dev.index or 0):
            raise ConfigError(
                f"device {device!r}: this machine has {count or 'no usable'} CUDA device(s) "
                f"(torch {torch.__version__}); use device 'cpu'"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: this machine has no usable MPS device")
    return dev


def _import_hear_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"HEAR module {name!r} cannot be imported ({exc})") from exc


def load_hear_model(
    model: str, hear_module: str | None = None, device: str = "cpu"
) -> tuple[ModuleType, Any]:
    """(HEAR-API module, loaded model in eval mode on `device`) for a model spec: weights for
    `mwmae.hear.load_model`, 'logmel' for the log-mel baseline (`mwmae.builtin.logmel`), or
    with `hear_module` (an import path) weights for that module's `load_model`. A device this
    machine lacks, a module that cannot be imported and a model the loader refuses (a
    missing path, non-finite weights) are `MwmaeError`s: one line on the command line."""
    check_device(device)
    # Imported here: the HEAR modules are heavy, and another one may not be installed.
    with reraise_as_input_errors():
        if hear_module is not None:
            module = _import_hear_module(hear_module)
            loaded = module.load_model(model)
        elif model == "logmel":
            module = importlib.import_module("mwmae.builtin.logmel")
            loaded = module.load_model()
        else:
            module = importlib.import_module("mwmae.hear")
            loaded = module.load_model(model, device=device)
    if hasattr(loaded, "to"):
        loaded = loaded.to(device)
    if hasattr(loaded, "eval"):
        loaded.eval()
    return module, loaded


def embed_tasks(
    model: str,
    tasks: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    hear_module: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    model_id: str | None = None,
) -> list[dict[str, Any]]:
    """Embed HEAR tasks with one model (`load_hear_model(model, hear_module, device)`) into
    `out_dir/<task folder name>/`, each by `embed_task` (cached per split), holding the lock of
    `out_dir` (`mwmae.training.run_lock`: one writer per output folder).

    tasks: a task folder, a folder of them, or a list of task folders. model_id: the model's id
    in the cache records (default: `model`; a path there also keys the cache on the weights'
    SHA-256). Returns per task {"task" (folder name), "out", "seconds", "splits" (split ->
    its `.done.json`: rows, dim, files, model_id, sample_rate, outputs)}.
    """
    from mwmae.training import run_lock

    module, loaded = load_hear_model(model, hear_module, device)
    task_dirs = (
        find_task_dirs(tasks) if isinstance(tasks, (str, Path)) else [Path(t) for t in tasks]
    )
    model_id = model if model_id is None else model_id
    options = {
        "batch_size": batch_size,
        "progress": progress,
        "model_id": model_id,
        "overwrite": overwrite,
        "fingerprint": model_fingerprint(module, loaded, model_id),  # the weights hashed once
    }
    with contextlib.ExitStack() as held:
        with reraise_as_output_errors(out_dir):  # a folder that cannot be created or locked
            held.enter_context(run_lock(out_dir))
        return [_embed_with_summary(module, loaded, d, out_dir, options) for d in task_dirs]


def _embed_with_summary(
    module: ModuleType, loaded: Any, task_dir: Path, out_dir: str | Path, options: dict
) -> dict[str, Any]:
    """`embed_task`, and the row `embed_tasks` returns for it."""
    t0 = time.perf_counter()
    task_out = embed_task(module, loaded, task_dir, out_dir, **options)
    splits = {
        p.name.removesuffix(".done.json"): read_task_json(p)
        for p in sorted(task_out.glob("*.done.json"))
    }
    return {
        "task": task_dir.name,
        "out": str(task_out),
        "seconds": round(time.perf_counter() - t0, 2),
        "splits": splits,
    }
