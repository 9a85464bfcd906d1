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
`export_heareval` writes the layout heareval's runner reads.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from mwmae._io import atomic_write_bytes, atomic_writer
from mwmae.evaluation.tasks import (
    Task,
    TaskError,
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


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


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
    paths: list[Path], fixed: int | None, batch_size: int, sample_rate: int
) -> list[list[int]]:
    """Indices per batch. With a fixed length every file is cropped/padded to it (as HEAR does
    with sample_duration); otherwise only files of equal length share a batch, so padding never
    leaks into an embedding."""
    if fixed is not None:
        idx = list(range(len(paths)))
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    import soundfile as sf

    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        info = sf.info(str(p))
        n = int(round(info.frames * sample_rate / info.samplerate))
        by_len.setdefault(n, []).append(i)
    batches = []
    for n in sorted(by_len):
        group = by_len[n]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def _load_batch(paths: list[Path], sample_rate: int, fixed: int | None) -> torch.Tensor:
    from mwmae import features

    waves = [features.load_audio(p, sample_rate) for p in paths]
    if fixed is not None:
        waves = [np.pad(w[:fixed], (0, max(0, fixed - len(w)))) for w in waves]
    n = min(len(w) for w in waves)  # equal lengths up to resampling rounding
    return torch.from_numpy(np.stack([w[:n] for w in waves]).astype(np.float32))


def _frame_labels(events: list[dict], t: float) -> list[str]:
    # Labels active at frame centre t; the end is inclusive as in heareval (end + 0.0001 ms).
    return sorted({ev["label"] for ev in events if ev["start"] <= t <= ev["end"] + 1e-4})


def split_done(task_out: Path, split: str) -> bool:
    return (task_out / f"{split}.done.json").is_file()


@torch.no_grad()
def _embed_split(
    hear_module: ModuleType,
    model: Any,
    task: Task,
    split: str,
    out: Path,
    batch_size: int,
    sample_rate: int,
    progress: bool,
    model_id: str | None,
) -> None:
    from tqdm.auto import tqdm

    audio_dir = task.audio_dir(split, sample_rate)
    # Fall back to the 16 kHz audio (resampled on load) if the task lacks the model's rate.
    file_rate = sample_rate if audio_dir.is_dir() else 16000
    paths = task.audio_files(split, file_rate)
    names = list(task.labels[split])
    sd = task.metadata.sample_duration
    fixed = int(round(sd * sample_rate)) if sd else None
    batches = _plan_batches(paths, fixed, batch_size, sample_rate)
    device = _model_device(model)
    scene = task.metadata.embedding_type == "scene"

    rows: list[np.ndarray] = [np.empty((0, 0), np.float32)] * len(paths)
    stamps: list[np.ndarray] = [np.empty(0)] * len(paths)
    for batch in tqdm(batches, desc=f"{task.name}/{split}", unit="batch", disable=not progress):
        audio = _load_batch([paths[i] for i in batch], sample_rate, fixed).to(device)
        if scene:
            emb = hear_module.get_scene_embeddings(audio, model)
            emb = emb.detach().float().cpu().numpy()
            if emb.shape[0] != len(batch) or emb.ndim != 2:
                raise ValueError(
                    f"get_scene_embeddings returned shape {emb.shape} for "
                    f"{len(batch)} sounds; expected ({len(batch)}, D)"
                )
            for j, i in enumerate(batch):
                rows[i] = emb[j : j + 1]
        else:
            emb, ts = hear_module.get_timestamp_embeddings(audio, model)
            emb = emb.detach().float().cpu().numpy()
            ts = ts.detach().double().cpu().numpy()
            if emb.ndim != 3 or ts.shape != emb.shape[:2] or emb.shape[0] != len(batch):
                raise ValueError(
                    f"get_timestamp_embeddings returned shapes {emb.shape}, "
                    f"{ts.shape} for {len(batch)} sounds; expected (n, T, D), (n, T)"
                )
            for j, i in enumerate(batch):
                rows[i], stamps[i] = emb[j], ts[j]

    embeddings = np.concatenate(rows, axis=0).astype(np.float32)
    if scene:
        labels = [task.labels[split][n] for n in names]
        filenames: list[Any] = names
    else:
        labels, filenames = [], []
        for n, ts in zip(names, stamps, strict=True):
            events = task.labels[split][n]
            labels += [_frame_labels(events, float(t)) for t in ts]
            filenames += [[n, float(t)] for t in ts]
        _atomic_write_json(out / f"{split}.json", task.labels[split])
    _atomic_save_npy(out / f"{split}.embeddings.npy", embeddings)
    _atomic_write_json(out / f"{split}.labels.json", labels)
    _atomic_write_json(out / f"{split}.filenames.json", filenames)
    # The marker goes last: its presence means every other file of the split is complete.
    _atomic_write_json(
        out / f"{split}.done.json",
        {
            "rows": int(embeddings.shape[0]),
            "dim": int(embeddings.shape[1]),
            "files": len(names),
            "model_id": model_id,
            "sample_rate": sample_rate,
        },
    )


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

    Finished splits are skipped unless `overwrite`. `model_id` (e.g. the weights path) is
    recorded; re-running into a folder made with a different `model_id` raises TaskError.
    """
    task = load_task(task_dir)
    out = Path(out_dir) / Path(task_dir).name
    out.mkdir(parents=True, exist_ok=True)
    sample_rate = int(_attr(hear_module, model, "sample_rate"))
    shutil.copyfile(task.folder / "task_metadata.json", out / "task_metadata.json")
    write_label_vocabulary(out / "labelvocabulary.csv", task.vocabulary)
    for split in task.metadata.splits:
        marker = out / f"{split}.done.json"
        if marker.is_file() and not overwrite:
            previous = json.loads(marker.read_text()).get("model_id")
            if model_id is not None and previous is not None and previous != model_id:
                raise TaskError(
                    f"{marker}: embedded with model {previous!r}, not {model_id!r}; "
                    "use another output folder or overwrite=True"
                )
            log.info("%s/%s: cached, skipped", task.name, split)
            continue
        marker.unlink(missing_ok=True)
        _embed_split(
            hear_module, model, task, split, out, batch_size, sample_rate, progress, model_id
        )
    return out


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


def load_split_embeddings(task_out: str | Path, split: str) -> SplitEmbeddings:
    task_out = Path(task_out)
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
    lists: the only pickle this project writes, and it never reads one) and, for event tasks,
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
