"""Labelled clips for fine-tuning: HEAR scene task folders or CSV/JSONL manifests.

A HEAR folder (`mwmae.evaluation.tasks`) brings its splits, label vocabulary and metrics. A
manifest has one row per clip: CSV columns `path` and `label` (multiclass) or `labels`
(multilabel, `;`-separated), JSONL keys `path` and `label` / `labels` (a list); paths are
relative to the manifest. An optional `split` column names `train`/`valid`/`test`, or k >= 3
fold names (heareval's fold rule); without one, a split is drawn with the run's seed.

Clips become log-mel spectrograms normalised over the whole clip (the rule of
`mwmae.embeddings`, through `features.file_logmel`: long files in bounded memory), all read once
before training (`load_task_spectrograms`); clips that cannot be used are skipped, named and
listed in `FinetuneTask.skipped`. Training crops `unit` frames at random
(`features.finetune_crop`: shorter clips are reflect-padded), inference cuts the clip into the
same `unit`-frame pieces as the embeddings (`features.inference_units`).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mwmae import features
from mwmae._rng import derive_seed
from mwmae.errors import InputError, MissingFileError, TaskLayoutError
from mwmae.evaluation.tasks import DataSplit, TaskError, TaskMetadata, load_task

log = logging.getLogger(__name__)

_TAG_SPLIT = 0x5EED_0F70


@dataclass(frozen=True)
class Clip:
    path: Path
    labels: tuple[str, ...]


@dataclass
class FinetuneTask:
    name: str
    source: Path
    prediction_type: str  # multiclass | multilabel
    split_mode: str
    metrics: list[str]  # the first one selects checkpoints
    vocabulary: list[str]
    splits: dict[str, list[Clip]]
    assignments: list[DataSplit]
    where: dict[str, str]  # split -> the file that defines it (error messages)
    skipped: list[dict[str, str]] = field(default_factory=list)  # bad clips: {path, reason}

    @property
    def multilabel(self) -> bool:
        return self.prediction_type == "multilabel"

    def clips(self, names: tuple[str, ...]) -> list[Clip]:
        return [c for n in names for c in self.splits[n]]

    def targets(self, clips: list[Clip]) -> torch.Tensor:
        index = {lab: i for i, lab in enumerate(self.vocabulary)}
        y = torch.zeros(len(clips), len(self.vocabulary))
        for row, clip in enumerate(clips):
            for lab in clip.labels:
                y[row, index[lab]] = 1.0
        return y


def load_finetune_task(
    source: str | Path, seed: int = 0, valid_fraction: float = 0.1, test_fraction: float = 0.2
) -> FinetuneTask:
    """A HEAR scene task folder or a .csv/.jsonl manifest, checked (see `check_task`)."""
    source = Path(source)
    if source.is_dir():
        task = _from_hear(source)
    elif source.suffix.lower() in (".csv", ".jsonl"):
        if not source.is_file():
            raise MissingFileError(f"{source}: no such manifest")
        task = _from_manifest(source, seed, valid_fraction, test_fraction)
    elif not source.exists():
        raise MissingFileError(f"{source}: no such task folder or manifest")
    else:
        raise TaskLayoutError(f"{source}: expected a HEAR task folder or a .csv/.jsonl manifest")
    check_task(task)
    return task


def _from_hear(folder: Path) -> FinetuneTask:
    try:
        task = load_task(folder)
        meta = task.metadata
        if meta.embedding_type != "scene":
            raise TaskLayoutError(
                f"{folder}: fine-tuning handles scene tasks; this is an {meta.embedding_type} task"
            )
        splits = {
            s: [
                Clip(p, tuple(task.labels[s][p.name]))
                for p in task.audio_files(s, int(meta.raw.get("sample_rate", 16000)))
            ]
            for s in meta.splits
        }
    except TaskError as exc:  # the evaluation module's own type: give it the mwmae one
        raise TaskLayoutError(str(exc)) from None
    return FinetuneTask(
        meta.task_name,
        folder,
        meta.prediction_type,
        meta.split_mode,
        list(meta.evaluation),
        task.vocabulary,
        splits,
        meta.data_splits(),
        {s: str(folder / f"{s}.json") for s in meta.splits},
    )


def _read_rows(path: Path) -> tuple[list[dict], bool]:
    """Rows {path, labels, split} and whether the manifest is multilabel."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            raw = list(reader)
    else:
        raw, fields = [], set()
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except ValueError as exc:
                    raise TaskLayoutError(f"{path}: line {i} is not JSON ({exc})") from None
                fields |= set(raw[-1])
    multilabel = "labels" in fields
    if "path" not in fields or not ({"label", "labels"} & set(fields)):
        raise TaskLayoutError(f"{path}: needs a 'path' and a 'label' (or 'labels') column")
    rows = []
    for i, r in enumerate(raw, start=2 if path.suffix.lower() == ".csv" else 1):
        value = r.get("labels" if multilabel else "label")
        if isinstance(value, str):
            labels = [v.strip() for v in value.split(";")] if multilabel else [value.strip()]
        elif isinstance(value, list):
            labels = [str(v) for v in value]
        else:
            raise TaskLayoutError(f"{path}: row {i} has no label")
        labels = [lab for lab in labels if lab]
        if not labels or not r.get("path"):
            raise TaskLayoutError(f"{path}: row {i} needs a path and at least one label")
        rows.append(
            {"path": path.parent / str(r["path"]), "labels": labels, "split": r.get("split")}
        )
    return rows, multilabel


def _from_manifest(
    path: Path, seed: int, valid_fraction: float, test_fraction: float
) -> FinetuneTask:
    rows, multilabel = _read_rows(path)
    if not rows:
        raise InputError(f"{path}: the manifest lists no clips")
    if all(r["split"] in (None, "") for r in rows):
        order = np.random.default_rng(derive_seed(seed, _TAG_SPLIT)).permutation(len(rows))
        n_test = max(1, round(test_fraction * len(rows)))
        n_valid = max(1, round(valid_fraction * len(rows)))
        for rank, i in enumerate(order):
            rows[i]["split"] = (
                "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
            )
    names = sorted({str(r["split"]) for r in rows})
    if set(names) <= {"train", "valid", "test"}:
        mode, names = "trainvaltest", ["train", "valid", "test"]
        assignments = [DataSplit(("train",), ("valid",), ("test",))]
    else:
        if len(names) < 3:
            raise TaskLayoutError(
                f"{path}: split column: train/valid/test or >= 3 folds, got {names}"
            )
        meta = TaskMetadata(path.stem, "scene", "", "new_split_kfold", names, [], nfolds=len(names))
        mode, assignments = "new_split_kfold", meta.data_splits()
    splits = {n: [] for n in names}
    for r in rows:
        splits[str(r["split"])].append(Clip(r["path"], tuple(r["labels"])))
    vocabulary = sorted({lab for r in rows for lab in r["labels"]})
    metrics = ["mAP", "d_prime"] if multilabel else ["top1_acc"]
    kind = "multilabel" if multilabel else "multiclass"
    where = {n: f"{path} (split {n!r})" for n in names}
    return FinetuneTask(
        path.stem, path, kind, mode, metrics, vocabulary, splits, assignments, where
    )


def check_task(task: FinetuneTask) -> None:
    """Every split has clips, a multiclass task has >= 2 classes and one label per clip, and
    every label to be scored has training examples. Raises `InputError` naming file/label."""
    for name, clips in task.splits.items():
        if not clips:
            raise InputError(f"{task.where[name]}: split {name!r} has no clips")
    if not task.multilabel:
        if len(task.vocabulary) < 2:
            raise InputError(
                f"{task.source}: a multiclass task needs at least two classes, found only "
                f"{task.vocabulary}"
            )
        for name, clips in task.splits.items():
            for clip in clips:
                if len(clip.labels) != 1:
                    raise InputError(
                        f"{task.where[name]}: {clip.path.name} has {len(clip.labels)} labels "
                        f"{list(clip.labels)} in a multiclass task"
                    )
    for a in task.assignments:
        seen = {lab for c in task.clips(a.train) for lab in c.labels}
        for name in a.valid + a.test:
            for clip in task.splits[name]:
                unknown = [lab for lab in clip.labels if lab not in seen]
                if unknown:
                    raise InputError(
                        f"{task.where[name]}: label {unknown[0]!r} of {clip.path.name} has no "
                        f"training example (training splits: {', '.join(a.train)})"
                    )


def load_task_spectrograms(task: FinetuneTask) -> dict[Path, torch.Tensor]:
    """Every clip's log-mel, by path (the cache `load_spectrograms` reads).

    Clips that cannot be used (undecodable, empty, NaN/Inf, too short) are skipped as
    pretraining skips them: each logged with its file name, dropped from its split and listed in
    `task.skipped`. The task is then checked again (`check_task`): a split left without clips is
    an `InputError` naming it."""
    cache: dict[Path, torch.Tensor] = {}
    bad: dict[Path, str] = {}
    for clip in task.clips(tuple(task.splits)):
        if clip.path in cache or clip.path in bad:
            continue
        try:
            cache[clip.path] = features.file_logmel(clip.path)
        except features.AudioError as exc:
            log.warning("skipping bad clip: %s", exc)
            bad[clip.path] = str(exc)
    for name, clips in task.splits.items():
        kept = [c for c in clips if c.path not in bad]
        if clips and not kept:
            raise InputError(
                f"{task.where[name]}: split {name!r} has no usable clips: all {len(clips)} "
                f"were skipped as bad audio (first: {bad[clips[0].path]})"
            )
        task.splits[name] = kept
    task.skipped += [{"path": str(p), "reason": why} for p, why in bad.items()]
    check_task(task)
    return cache


def load_spectrograms(clips: list[Clip], cache: dict[Path, torch.Tensor]) -> list[torch.Tensor]:
    """The clips' (T, F) normalised log-mels from the `load_task_spectrograms` cache (which
    holds every clip still in the task's splits, each read in bounded memory)."""
    return [cache[clip.path] for clip in clips]
