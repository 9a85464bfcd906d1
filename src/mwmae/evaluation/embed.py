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
    OUT/<task>/<split>.done.json            written last: rows, dim, model id

A split whose `.done.json` exists is skipped on re-runs; every file is written to a temporary
name and renamed, so an interrupted run never leaves a half-written split that looks finished.
`embed_tasks` embeds several task folders with one model spec (weights, 'logmel', or another
HEAR module's), as `mwmae embed` and the demo do. `export_heareval` writes the layout heareval's
runner reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import pickle
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mwmae._io import atomic_save_npy, atomic_write_bytes
from mwmae.evaluation.tasks import (
    Task,
    TaskError,
    find_task_dirs,
    load_metadata,
    load_task,
    read_label_vocabulary,
    write_label_vocabulary,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode())


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


def split_done(task_out: Path, split: str) -> bool:
    return (task_out / f"{split}.done.json").is_file()


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
    from tqdm.auto import tqdm

    sd = task.metadata.sample_duration
    fixed = int(round(sd * sample_rate)) if sd else None
    batches = _plan_batches(paths, fixed, batch_size, sample_rate, broken)
    device = _model_device(model)
    scene = task.metadata.embedding_type == "scene"
    rows: list[np.ndarray] = [np.empty((0, 0), np.float32)] * len(paths)
    stamps: list[np.ndarray] = [np.empty(0)] * len(paths)
    for batch in tqdm(batches, desc=f"{task.name}/{split}", unit="batch", disable=not progress):
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
    return rows, stamps


def _write_split(
    task: Task,
    split: str,
    out: Path,
    embedded: tuple[list[np.ndarray], list[np.ndarray]],
    record: dict[str, Any],
    sample_rate: int,
) -> None:
    """Write one embedded split (rows per file, timestamps per file), its cache record and,
    last, its `.done.json` marker."""
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
        _atomic_write_json(out / f"{split}.json", task.labels[split])
    atomic_save_npy(out / f"{split}.embeddings.npy", embeddings)
    _atomic_write_json(out / f"{split}.labels.json", labels)
    _atomic_write_json(out / f"{split}.filenames.json", filenames)
    # What the split was made from, then the marker last: its presence means every other file
    # of the split is complete.
    _atomic_write_json(out / f"{split}.cache.json", record)
    _atomic_write_json(
        out / f"{split}.done.json",
        {
            "rows": int(embeddings.shape[0]),
            "dim": int(embeddings.shape[1]),
            "files": len(names),
            "model_id": record["model"].get("id"),
            "sample_rate": sample_rate,
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
) -> list[str]:
    """Embed one split and write it; returns its broken files (then nothing is written)."""
    paths = _split_files(task, split, sample_rate)
    broken: list[str] = []
    embedded = _embed_files(
        hear_module, model, task, split, paths, batch_size, sample_rate, progress, broken
    )
    if not broken:
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


def _split_record(task: Task, split: str, fingerprint: dict, sample_rate: int) -> dict:
    return {
        "model": fingerprint,
        "sample_rate": sample_rate,
        "sample_duration": task.metadata.sample_duration,
        "embedding_type": task.metadata.embedding_type,
        "files": split_files_record(task, split, _split_files(task, split, sample_rate)),
    }


def _cached(out: Path, split: str, record: dict) -> bool:
    # Reused only if finished AND made from exactly this model, settings and file list.
    cache = out / f"{split}.cache.json"
    if not (split_done(out, split) and cache.is_file()):
        return False
    try:
        return json.loads(cache.read_text()) == json.loads(json.dumps(record))
    except json.JSONDecodeError:
        return False


def embed_task(
    hear_module: ModuleType,
    model: Any,
    task_dir: str | Path,
    out_dir: str | Path,
    batch_size: int = 16,
    progress: bool = False,
    model_id: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Embed every split of one task into `out_dir/<task folder name>/`; returns that folder.

    A split is reused only if its `<split>.cache.json` matches what it would be made from now:
    the model (`model_fingerprint`: module, `model_id` and the SHA-256 of the weights it names,
    the loaded model's settings), the sample rate and duration, and the split's file list
    (names, sizes, modification times). Anything else re-embeds that split; `overwrite`
    re-embeds all. Splits with undecodable audio are not written; after every split was tried,
    InputError lists every broken file (the good splits stay embedded).
    """
    from mwmae.errors import InputError

    task = load_task(task_dir)
    out = Path(out_dir) / Path(task_dir).name
    out.mkdir(parents=True, exist_ok=True)
    sample_rate = int(_attr(hear_module, model, "sample_rate"))
    fingerprint = model_fingerprint(hear_module, model, model_id)
    shutil.copyfile(task.folder / "task_metadata.json", out / "task_metadata.json")
    write_label_vocabulary(out / "labelvocabulary.csv", task.vocabulary)
    broken: list[str] = []
    for split in task.metadata.splits:
        record = _split_record(task, split, fingerprint, sample_rate)
        if not overwrite and _cached(out, split, record):
            log.info("%s/%s: cached, skipped", task.name, split)
            continue
        (out / f"{split}.done.json").unlink(missing_ok=True)
        broken += _embed_split(
            hear_module, model, task, split, out, batch_size, sample_rate, progress, record
        )
    if broken:
        raise InputError(
            f"{task.folder}: {len(broken)} audio file(s) cannot be read, their splits were not "
            f"embedded (the others were): {'; '.join(broken)}"
        )
    return out


def load_hear_model(
    model: str, hear_module: str | None = None, device: str = "cpu"
) -> tuple[ModuleType, Any]:
    """(HEAR-API module, loaded model in eval mode on `device`) for a model spec: weights for
    `mwmae.hear.load_model`, 'logmel' for the log-mel baseline (`mwmae.builtin.logmel`), or
    with `hear_module` (an import path) weights for that module's `load_model`."""
    # Imported here: the HEAR modules are heavy, and another one may not be installed.
    if hear_module is not None:
        module = importlib.import_module(hear_module)
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
    `out_dir/<task folder name>/`, each by `embed_task` (cached per split).

    tasks: a task folder, a folder of them, or a list of task folders. model_id: the model's id
    in the cache records (default: `model`; a path there also keys the cache on the weights'
    SHA-256). Returns per task {"task" (folder name), "out", "seconds", "splits" (split ->
    its `.done.json`: rows, dim, files, model_id, sample_rate)}.
    """
    module, loaded = load_hear_model(model, hear_module, device)
    task_dirs = (
        find_task_dirs(tasks) if isinstance(tasks, (str, Path)) else [Path(t) for t in tasks]
    )
    rows = []
    for task_dir in task_dirs:
        t0 = time.perf_counter()
        task_out = embed_task(
            module,
            loaded,
            task_dir,
            out_dir,
            batch_size=batch_size,
            progress=progress,
            model_id=model if model_id is None else model_id,
            overwrite=overwrite,
        )
        splits = {
            p.name.removesuffix(".done.json"): json.loads(p.read_text())
            for p in sorted(task_out.glob("*.done.json"))
        }
        rows.append(
            {
                "task": task_dir.name,
                "out": str(task_out),
                "seconds": round(time.perf_counter() - t0, 2),
                "splits": splits,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Reading embeddings back
# --------------------------------------------------------------------------------------------
@dataclass
class SplitEmbeddings:
    embeddings: np.ndarray  # (rows, D) float32
    labels: list[list[str]]  # per row
    filenames: list[str]  # per row (the file the row/frame belongs to)
    timestamps: np.ndarray | None  # (rows,) ms, event tasks only
    events: dict[str, list[dict]] | None  # reference events per file, event tasks only


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TaskError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not valid JSON ({e})") from e


class _LabelsOnlyUnpickler(pickle.Unpickler):
    """Reads heareval's target-labels.pkl (lists of label strings/numbers) and nothing else:
    any class or function reference in the pickle is refused, so loading it runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        raise TaskError(f"target-labels.pkl refers to {module}.{name}; only plain lists allowed")


def is_kit_split(task_out: Path, split: str) -> bool:
    """True if `split` is in heareval's embedding layout (see `export_heareval`)."""
    return all(
        (task_out / f"{split}.{suffix}").is_file()
        for suffix in ("embedding-dimensions.json", "embeddings.npy", "target-labels.pkl")
    )


def _load_kit_split(task_out: Path, split: str, event: bool) -> SplitEmbeddings:
    dims = _read_json(task_out / f"{split}.embedding-dimensions.json")
    path = task_out / f"{split}.embeddings.npy"
    n, d = (int(v) for v in dims)
    if path.stat().st_size != n * d * 4:
        raise TaskError(f"{path}: {path.stat().st_size} bytes, expected {n} x {d} float32 (raw)")
    emb = np.fromfile(path, dtype=np.float32).reshape(n, d)
    with (task_out / f"{split}.target-labels.pkl").open("rb") as f:
        labels = [[str(lab) for lab in row] for row in _LabelsOnlyUnpickler(f).load()]
    if len(labels) != n:
        raise TaskError(f"{task_out}/{split}.target-labels.pkl: {len(labels)} rows, expected {n}")
    if not event:  # heareval keeps no file names for scene rows
        return SplitEmbeddings(emb, labels, [f"{split}#{i}" for i in range(n)], None, None)
    events = _read_json(task_out / f"{split}.json")
    stamps = _read_json(task_out / f"{split}.filename-timestamps.json")
    # heareval writes the path of its per-file embedding ("<dir>/<file>"): match by name.
    names = [f if f in events else Path(f).name for f, _ in stamps]
    ts = np.array([t for _, t in stamps], dtype=np.float64)
    return SplitEmbeddings(emb, labels, names, ts, events)


def load_split_embeddings(task_out: str | Path, split: str) -> SplitEmbeddings:
    """One split, from mwmae's layout or heareval's (what its embedding runner writes)."""
    task_out = Path(task_out)
    if not split_done(task_out, split) and is_kit_split(task_out, split):
        return _load_kit_split(task_out, split, load_metadata(task_out).embedding_type == "event")
    if not split_done(task_out, split):
        raise TaskError(
            f"{task_out / (split + '.done.json')}: split {split!r} was not (completely) embedded"
        )
    meta = load_metadata(task_out)
    emb = np.load(task_out / f"{split}.embeddings.npy", allow_pickle=False)
    labels = _read_json(task_out / f"{split}.labels.json")
    names = _read_json(task_out / f"{split}.filenames.json")
    if emb.ndim != 2 or len(labels) != len(emb) or len(names) != len(emb):
        raise TaskError(
            f"{task_out}: split {split!r} has {emb.shape} embeddings, "
            f"{len(labels)} label rows, {len(names)} file rows"
        )
    if meta.embedding_type == "scene":
        return SplitEmbeddings(emb, labels, list(names), None, None)
    events = _read_json(task_out / f"{split}.json")
    return SplitEmbeddings(
        emb,
        labels,
        [n for n, _ in names],
        np.array([t for _, t in names], dtype=np.float64),
        events,
    )


def iter_embedded_tasks(root: str | Path) -> Iterator[Path]:
    """`root` if it is an embedded task folder, else its embedded task sub-folders."""
    root = Path(root)
    if (root / "task_metadata.json").is_file():
        yield root
        return
    if not root.is_dir():
        raise TaskError(f"{root}: folder not found")
    found = False
    for p in sorted(root.iterdir()):
        if (p / "task_metadata.json").is_file():
            found = True
            yield p
    if not found:
        raise TaskError(f"{root}: no embedded task folder (with task_metadata.json) found")


def export_heareval(task_out: str | Path, dest: str | Path) -> Path:
    """Write one embedded task in the layout `heareval.predictions.runner` reads.

    heareval wants `<split>.embeddings.npy` as raw float32 bytes without a header,
    `<split>.embedding-dimensions.json`, `<split>.target-labels.pkl` (a pickled list of label
    lists: the only pickle this project writes; it reads one only through
    `_LabelsOnlyUnpickler`, which refuses every class or function reference) and, for event tasks,
    `<split>.filename-timestamps.json` and `<split>.json`.
    """
    task_out, dest = Path(task_out), Path(dest)
    meta = load_metadata(task_out)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(task_out / "task_metadata.json", dest / "task_metadata.json")
    vocab = read_label_vocabulary(task_out / "labelvocabulary.csv")
    write_label_vocabulary(dest / "labelvocabulary.csv", vocab)
    for split in meta.splits:
        s = load_split_embeddings(task_out, split)
        atomic_write_bytes(
            dest / f"{split}.embeddings.npy",
            np.ascontiguousarray(s.embeddings, dtype=np.float32).tobytes(),
        )
        _atomic_write_json(dest / f"{split}.embedding-dimensions.json", list(s.embeddings.shape))
        atomic_write_bytes(dest / f"{split}.target-labels.pkl", pickle.dumps(s.labels))
        if s.events is not None:
            assert s.timestamps is not None
            _atomic_write_json(
                dest / f"{split}.filename-timestamps.json",
                [[f, float(t)] for f, t in zip(s.filenames, s.timestamps, strict=True)],
            )
            _atomic_write_json(dest / f"{split}.json", s.events)
    return dest
