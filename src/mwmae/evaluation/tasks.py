"""HEAR task folders as hear-preprocess writes them.

Layout of one task folder::

    TASK/task_metadata.json        task_name, embedding_type, prediction_type, split_mode,
                                   splits, evaluation (metric names; the first one drives early
                                   stopping and model selection), sample_duration, nfolds
    TASK/labelvocabulary.csv       idx,label (built from the labels when absent)
    TASK/<split>.json              scene: {file: [label, ...]}
                                   event: {file: [{"start": ms, "end": ms, "label": l}, ...]}
    TASK/<sample_rate>/<split>/*.wav

Split modes: ``trainvaltest`` (one train/valid/test split) and ``presplit_kfold`` /
``new_split_kfold`` (k folds; as heareval does it, fold i is the test fold once, fold i+1
(mod k) the validation fold and the rest train).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mwmae._io import read_json
from mwmae.errors import TaskLayoutError

EMBEDDING_TYPES = ("scene", "event")
PREDICTION_TYPES = ("multiclass", "multilabel")
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")


class TaskError(TaskLayoutError):
    """A task folder (or an embedding folder) is malformed; the message names the file/field."""


@dataclass(frozen=True)
class DataSplit:
    """Which named splits are used for training, validation and test in one run."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]


@dataclass
class TaskMetadata:
    task_name: str
    embedding_type: str
    prediction_type: str
    split_mode: str
    splits: list[str]
    evaluation: list[str]
    sample_duration: float | None = None
    nfolds: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def primary_metric(self) -> str:
        return self.evaluation[0]

    def data_splits(self) -> list[DataSplit]:
        """Train/valid/test assignments, one per fold (a single one for trainvaltest)."""
        if self.split_mode == "trainvaltest":
            return [DataSplit(("train",), ("valid",), ("test",))]
        folds = sorted(self.splits)  # heareval sorts the fold names first
        k = len(folds)
        out = []
        for i in range(k):
            test, valid = folds[i], folds[(i + 1) % k]
            train = tuple(f for f in folds if f not in (test, valid))
            out.append(DataSplit(train, (valid,), (test,)))
        return out


def _fail(path: Path, msg: str) -> TaskError:
    return TaskError(f"{path}: {msg}")


def read_task_json(path: Path) -> Any:
    """A JSON file of a task or embedding folder; `TaskError` naming it when it is missing,
    malformed or nested absurdly deep (never a traceback)."""
    if not path.is_file():
        raise _fail(path, "file not found")
    return read_json(path, TaskError)


def _field(meta: dict[str, Any], path: Path, name: str, kind: type | tuple[type, ...]) -> Any:
    """A required field of the metadata, of the given type."""
    if name not in meta:
        raise _fail(path, f"missing field '{name}'")
    value = meta[name]
    if not isinstance(value, kind):
        raise _fail(path, f"field '{name}' has the wrong type ({type(value).__name__})")
    return value


def _choice(meta: dict[str, Any], path: Path, name: str, choices: tuple[str, ...]) -> str:
    """A required string field with one of `choices`."""
    value = _field(meta, path, name, str)
    if value not in choices:
        raise _fail(path, f"field '{name}' must be one of {choices}, not {value!r}")
    return value


def _metric_names(meta: dict[str, Any], path: Path, embedding_type: str) -> list[str]:
    """The 'evaluation' field: known metrics that apply to the task's embedding type."""
    # Imported here to keep tasks.py free of the metric code's dependencies.
    from mwmae.evaluation.metrics import METRICS

    evaluation = _field(meta, path, "evaluation", list)
    if not evaluation or not all(isinstance(m, str) for m in evaluation):
        raise _fail(path, "field 'evaluation' must be a non-empty list of metric names")
    for m in evaluation:
        if m not in METRICS:
            raise _fail(
                path, f"field 'evaluation' names unknown metric {m!r} (known: {sorted(METRICS)})"
            )
        if METRICS[m].embedding_type not in ("any", embedding_type):
            raise _fail(
                path, f"field 'evaluation': metric {m!r} does not apply to {embedding_type} tasks"
            )
    return list(evaluation)


def _sample_duration(meta: dict[str, Any], path: Path) -> float | None:
    value = meta.get("sample_duration")
    if value is not None and (not isinstance(value, (int, float)) or value <= 0):
        raise _fail(path, "field 'sample_duration' must be a positive number or null")
    return None if value is None else float(value)


def _splits(meta: dict[str, Any], path: Path, split_mode: str) -> list[str]:
    """The split names: train/valid/test, or the k folds (named in 'splits' or fold00, ...)."""
    nfolds = meta.get("nfolds")
    splits_raw = meta.get("splits")
    if split_mode == "trainvaltest":
        splits = ["train", "valid", "test"]
        if splits_raw is not None:
            names = _split_names(splits_raw, path)
            missing = [s for s in splits if s not in names]
            if missing:
                raise _fail(path, f"field 'splits' lacks {missing} required by trainvaltest")
        return splits
    if not isinstance(nfolds, int) or isinstance(nfolds, bool) or nfolds < 3:
        # Test, validation and at least one training fold.
        raise _fail(
            path, f"field 'nfolds' must be an integer >= 3 for {split_mode}, not {nfolds!r}"
        )
    splits = (
        _split_names(splits_raw, path)
        if splits_raw is not None
        else [f"fold{i:02d}" for i in range(nfolds)]
    )
    if len(splits) != nfolds:
        raise _fail(path, f"field 'splits' has {len(splits)} entries but nfolds={nfolds}")
    return splits


def parse_metadata(meta: Any, path: Path) -> TaskMetadata:
    """Validate a task_metadata.json dict; `path` is only used in error messages."""
    if not isinstance(meta, dict):
        raise _fail(path, "expected a JSON object")
    task_name = _field(meta, path, "task_name", str)
    embedding_type = _choice(meta, path, "embedding_type", EMBEDDING_TYPES)
    prediction_type = _choice(meta, path, "prediction_type", PREDICTION_TYPES)
    split_mode = _choice(meta, path, "split_mode", SPLIT_MODES)
    evaluation = _metric_names(meta, path, embedding_type)
    sample_duration = _sample_duration(meta, path)
    return TaskMetadata(
        task_name=task_name,
        embedding_type=embedding_type,
        prediction_type=prediction_type,
        split_mode=split_mode,
        splits=_splits(meta, path, split_mode),
        evaluation=evaluation,
        sample_duration=sample_duration,
        nfolds=meta.get("nfolds"),
        raw=dict(meta),
    )


def _split_names(value: Any, path: Path) -> list[str]:
    # hear-preprocess writes a list of names; a list of {"name": ...} objects is accepted too.
    if not isinstance(value, list):
        raise _fail(path, "field 'splits' must be a list")
    names = []
    for s in value:
        if isinstance(s, dict) and isinstance(s.get("name"), str):
            names.append(s["name"])
        elif isinstance(s, str):
            names.append(s)
        else:
            raise _fail(path, f"field 'splits' has an entry that is not a split name: {s!r}")
    if len(set(names)) != len(names):
        raise _fail(path, "field 'splits' repeats a split name")
    return names


def load_metadata(folder: str | Path) -> TaskMetadata:
    path = Path(folder) / "task_metadata.json"
    return parse_metadata(read_task_json(path), path)


def load_split_labels(folder: str | Path, split: str, embedding_type: str) -> dict[str, Any]:
    """`<split>.json`: file name -> list of labels (scene) or list of events (event).

    Labels are returned as strings; event times as floats in milliseconds.
    """
    path = Path(folder) / f"{split}.json"
    data = read_task_json(path)
    if not isinstance(data, dict):
        raise _fail(path, "expected an object mapping file name -> labels")
    out: dict[str, Any] = {}
    for name, labels in data.items():
        if not isinstance(labels, list):
            raise _fail(path, f"entry {name!r}: expected a list")
        if embedding_type == "scene":
            for lab in labels:
                if not isinstance(lab, (str, int)) or isinstance(lab, bool):
                    raise _fail(path, f"entry {name!r}: label {lab!r} is not a string")
            out[name] = [str(lab) for lab in labels]
        else:
            events = []
            for ev in labels:
                if not isinstance(ev, dict) or not {"start", "end", "label"} <= set(ev):
                    raise _fail(path, f"entry {name!r}: event {ev!r} needs start, end, label")
                start, end = ev["start"], ev["end"]
                if not all(isinstance(t, (int, float)) for t in (start, end)) or end < start:
                    raise _fail(path, f"entry {name!r}: event {ev!r} has bad start/end (ms)")
                events.append({"start": float(start), "end": float(end), "label": str(ev["label"])})
            out[name] = events
    return out


def _labels_of(entries: dict[str, Any], embedding_type: str) -> set[str]:
    if embedding_type == "scene":
        return {lab for labels in entries.values() for lab in labels}
    return {ev["label"] for events in entries.values() for ev in events}


def read_label_vocabulary(path: str | Path) -> list[str]:
    """labelvocabulary.csv (`idx,label`) -> labels ordered by idx (which must be 0..n-1)."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise _fail(path, f"not a readable CSV file ({e})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["idx", "label"]:
        raise _fail(path, "first row must be the header 'idx,label'")
    by_idx: dict[int, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2:
            raise _fail(path, f"row {i}: expected idx,label")
        try:
            idx = int(row[0])
        except ValueError as e:
            raise _fail(path, f"row {i}: idx {row[0]!r} is not an integer") from e
        if idx in by_idx:
            raise _fail(path, f"row {i}: idx {idx} repeated")
        by_idx[idx] = row[1]
    if sorted(by_idx) != list(range(len(by_idx))):
        raise _fail(path, "idx values must be 0..n-1")
    labels = [by_idx[i] for i in range(len(by_idx))]
    if len(set(labels)) != len(labels):
        raise _fail(path, "a label appears twice")
    return labels


def write_label_vocabulary(path: str | Path, labels: list[str]) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        for i, lab in enumerate(labels):
            w.writerow([i, lab])


@dataclass
class Task:
    """A loaded task folder: metadata, labels per split and the label vocabulary."""

    folder: Path
    metadata: TaskMetadata
    labels: dict[str, dict[str, Any]]  # split -> file -> labels / events
    vocabulary: list[str]

    @property
    def name(self) -> str:
        return self.metadata.task_name

    def audio_dir(self, split: str, sample_rate: int = 16000) -> Path:
        return self.folder / str(sample_rate) / split

    def audio_files(self, split: str, sample_rate: int = 16000) -> list[Path]:
        """The split's audio files in label-file order; errors name what is missing."""
        d = self.audio_dir(split, sample_rate)
        if not d.is_dir():
            raise _fail(d, f"audio folder missing (split {split!r} at {sample_rate} Hz)")
        paths = [d / name for name in self.labels[split]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise _fail(
                d, f"{len(missing)} file(s) listed in {split}.json are missing, e.g. {missing[:3]}"
            )
        return paths


def load_task(folder: str | Path) -> Task:
    """Load and validate a hear-preprocess task folder (labels only; audio is read lazily)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"{folder}: task folder not found")
    meta = load_metadata(folder)
    labels = {s: load_split_labels(folder, s, meta.embedding_type) for s in meta.splits}
    used = set().union(*(_labels_of(v, meta.embedding_type) for v in labels.values()))
    vocab_path = folder / "labelvocabulary.csv"
    if vocab_path.is_file():
        vocabulary = read_label_vocabulary(vocab_path)
        unknown = sorted(used - set(vocabulary))
        if unknown:
            raise _fail(vocab_path, f"labels used in the split files are missing: {unknown[:5]}")
    else:
        vocabulary = sorted(used)
    if not vocabulary:
        raise _fail(folder, "no labels in any split")
    return Task(folder=folder, metadata=meta, labels=labels, vocabulary=vocabulary)


def find_task_dirs(root: str | Path) -> list[Path]:
    """`root` itself if it is a task folder, else its sub-folders that hold task_metadata.json."""
    root = Path(root)
    if (root / "task_metadata.json").is_file():
        return [root]
    if not root.is_dir():
        raise TaskError(f"{root}: folder not found")
    found = sorted(p for p in root.iterdir() if (p / "task_metadata.json").is_file())
    if not found:
        raise TaskError(f"{root}: no task folder (with task_metadata.json) found")
    return found
