"""A quick sanity probe of a HEAR-layout task: log-mel baseline embeddings + logistic regression.

This is not the HEAR evaluation (see `mwmae.evaluation` for the MLP probe and HEAR metrics); it
checks that a task is learnable but not trivial, with a linear model on fixed features:

- multiclass scene: top-1 accuracy on the test split (k-fold: each fold tested once, the next
  fold validates, the rest train, as heareval does; the mean is reported);
- multilabel scene: macro mean average precision;
- event: frame-level (40 ms) macro F1 at threshold 0.5, a proxy for the event metrics.

Each result also gives `chance`: 1 / classes (multiclass), the mean label frequency (the mAP
of random scores), or the F1 of marking every frame active (event).

The regularisation strength C is picked on the validation split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mwmae import features
from mwmae.builtin import logmel

log = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0)


def _load_split(task_dir: Path, split: str, samples: int) -> tuple[list[str], torch.Tensor, dict]:
    labels = json.loads((task_dir / f"{split}.json").read_text(encoding="utf-8"))
    names = sorted(labels)
    waves = []
    for name in names:
        wave = features.load_audio(task_dir / str(features.SAMPLE_RATE) / split / name)
        wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
        waves.append(torch.from_numpy(wave.astype(np.float32)))
    return names, torch.stack(waves), labels


def _scene_xy(task_dir: Path, split: str, samples: int, model, vocab: list[str]):
    names, audio, labels = _load_split(task_dir, split, samples)
    x = logmel.get_scene_embeddings(audio, model).numpy()
    y = np.zeros((len(names), len(vocab)), dtype=np.int64)
    for i, name in enumerate(names):
        for lab in labels[name]:
            y[i, vocab.index(lab)] = 1
    return x, y


def _event_xy(task_dir: Path, split: str, samples: int, model, vocab: list[str]):
    names, audio, labels = _load_split(task_dir, split, samples)
    emb, ts = logmel.get_timestamp_embeddings(audio, model)
    x = emb.reshape(-1, emb.shape[-1]).numpy()
    y = np.zeros((len(names), emb.shape[1], len(vocab)), dtype=np.int64)
    for i, name in enumerate(names):
        for ev in labels[name]:
            active = (ts[i] >= ev["start"]) & (ts[i] <= ev["end"])
            y[i, active.numpy(), vocab.index(ev["label"])] = 1
    return x, y.reshape(-1, len(vocab))


def _fit(x: np.ndarray, y: np.ndarray, c: float, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if multilabel:
        clf = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000))
        target = y
    else:
        clf = LogisticRegression(C=c, max_iter=2000)
        target = y.argmax(axis=1)
    return make_pipeline(StandardScaler(), clf).fit(x, target)


def _score(model, x: np.ndarray, y: np.ndarray, kind: str) -> float:
    from sklearn.metrics import average_precision_score, f1_score

    if kind == "multiclass":
        return float(np.mean(model.predict(x) == y.argmax(axis=1)))
    if kind == "multilabel":
        scores = model.predict_proba(x)
        present = y.sum(axis=0) > 0  # AP is undefined for a label with no positives
        return float(average_precision_score(y[:, present], scores[:, present], average="macro"))
    pred = model.predict_proba(x) >= 0.5
    return float(f1_score(y, pred, average="macro", zero_division=0))


def _select_and_test(train, valid, test, kind: str) -> tuple[float, float, float]:
    from threadpoolctl import threadpool_limits

    multilabel = kind != "multiclass"
    best = None
    # one BLAS thread: these fits are small, and on a busy machine threads only contend
    with threadpool_limits(limits=1):
        for c in C_GRID:
            model = _fit(*train, c, multilabel)
            val = _score(model, *valid, kind)
            if best is None or val > best[0]:
                best = (val, c, model)
    val, c, model = best
    return _score(model, *test, kind), val, c


def probe_task(task_dir: str | Path) -> dict:
    """Log-mel + logistic-regression score of one task folder (see the module docstring)."""
    task_dir = Path(task_dir)
    meta = json.loads((task_dir / "task_metadata.json").read_text(encoding="utf-8"))
    vocab_lines = (task_dir / "labelvocabulary.csv").read_text(encoding="utf-8").splitlines()
    vocab = [line.split(",", 1)[1] for line in vocab_lines[1:]]
    samples = int(round(meta["sample_duration"] * features.SAMPLE_RATE))
    model = logmel.load_model()
    event = meta["embedding_type"] == "event"
    kind = "event" if event else meta["prediction_type"]
    load = _event_xy if event else _scene_xy
    data = {s: load(task_dir, s, samples, model, vocab) for s in meta["splits"]}
    if meta["split_mode"].endswith("kfold"):
        folds = list(meta["splits"])
        results = []
        for i, test_fold in enumerate(folds):
            valid_fold = folds[(i + 1) % len(folds)]
            train_folds = [f for f in folds if f not in (test_fold, valid_fold)]
            train = tuple(np.concatenate([data[f][j] for f in train_folds]) for j in (0, 1))
            results.append(_select_and_test(train, data[valid_fold], data[test_fold], kind))
        test_score = float(np.mean([r[0] for r in results]))
        valid_score = float(np.mean([r[1] for r in results]))
    else:
        test_score, valid_score, _ = _select_and_test(
            data["train"], data["valid"], data["test"], kind
        )
    metric = {"multiclass": "top1_acc", "multilabel": "mAP", "event": "frame_macro_f1"}[kind]
    chance = None
    if kind == "multiclass":
        chance = 1.0 / len(vocab)
    else:
        y = np.concatenate([data[s][1] for s in meta["splits"]])
        prevalence = y.mean(axis=0)
        if kind == "multilabel":  # AP of random scores = label frequency
            chance = float(prevalence.mean())
        else:  # F1 of marking every frame active
            chance = float(np.mean(2 * prevalence / (1 + prevalence)))
    return {
        "task": meta["task_name"],
        "metric": metric,
        "test": round(test_score, 4),
        "valid": round(valid_score, 4),
        "chance": None if chance is None else round(chance, 4),
    }


def probe_tasks(tasks_dir: str | Path, progress: bool = False) -> list[dict]:
    """`probe_task` for every task folder (one holding task_metadata.json) under `tasks_dir`."""
    dirs = sorted(p.parent for p in Path(tasks_dir).glob("*/task_metadata.json"))
    if progress:
        from mwmae._progress import progress_bar

        dirs = progress_bar(dirs, desc="probe", unit="task", leave=False)
    return [probe_task(d) for d in dirs]
