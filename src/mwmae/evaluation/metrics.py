"""Scores of the HEAR tasks.

Scene metrics take `scores` (n, C) (probabilities or any monotone score) and `targets` (n, C)
multi-hot (one-hot for multiclass). Event metrics take estimated and reference events,
``{file: [{"start": ms, "end": ms, "label": str}, ...]}``, and follow sed_eval's definitions
(the library heareval calls): onset-only event-based F-measure (overall, micro-averaged, optimal
one-to-one matching per file and label) and the segment-based error rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

Events = Mapping[str, Sequence[Mapping[str, Any]]]


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose highest score is at a target class (targets one-hot)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    pred = scores.argmax(axis=1)
    return float(np.mean(targets[np.arange(len(pred)), pred] > 0))


def chroma_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy up to octave errors, as heareval's ChromaAccuracy: predicted and target
    class *indices* (vocabulary order) are compared modulo 12, which is the pitch class when the
    vocabulary is the consecutive MIDI pitches (NSynth pitch)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    return float(np.mean(scores.argmax(axis=1) % 12 == targets.argmax(axis=1) % 12))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of per-class average precision over ALL classes, as heareval
    (sklearn's average_precision_score(average="macro")): a class without a positive row
    counts with sklearn's AP of 0 for it (sklearn warns), so rare classes pull the mean down."""
    import warnings

    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        return float(average_precision_score(targets, scores, average="macro"))


def _per_class_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray | None:
    """Per-class ROC AUC, or None when sklearn cannot compute it for every class (a class
    without positives or negatives): heareval then reports NaN for the whole metric."""
    import warnings

    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Only one class is present in y_true"
            return np.atleast_1d(roc_auc_score(targets, scores, average=None))
    except ValueError:
        return None


def auc_roc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of per-class ROC AUC; NaN if a class has only one kind of row (heareval)."""
    auc = _per_class_auc(scores, targets)
    return float(np.mean(auc)) if auc is not None else float("nan")


def d_prime(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of d' = sqrt(2) * Phi^-1(AUC) (AUC per class, one-vs-rest); NaN if a
    class has only one kind of row (heareval)."""
    auc = _per_class_auc(scores, targets)
    if auc is None:
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(np.mean(math.sqrt(2.0) * norm.ppf(auc)))


def _max_bipartite_matching(adj: list[list[int]], n_right: int) -> int:
    """Size of a maximum matching (Kuhn's augmenting paths); adj[i] = right nodes of left i."""
    match_right = [-1] * n_right

    def augment(i: int, seen: list[bool]) -> bool:
        for j in adj[i]:
            if not seen[j]:
                seen[j] = True
                if match_right[j] < 0 or augment(match_right[j], seen):
                    match_right[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(len(adj)))


def _by_label(events: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for ev in events:
        out.setdefault(str(ev["label"]), []).append(ev)
    return out


def _matches(
    r: Mapping[str, Any], e: Mapping[str, Any], collar_ms: float, offset_pct: float | None
) -> bool:
    # Compared in seconds exactly as sed_eval does (heareval passes ms / 1000), so that
    # onsets exactly one collar apart fall on the same side of it after float rounding.
    collar = collar_ms / 1000.0
    if abs(r["start"] / 1000.0 - e["start"] / 1000.0) > collar:
        return False
    if offset_pct is None:
        return True
    length = r["end"] / 1000.0 - r["start"] / 1000.0
    return abs(r["end"] / 1000.0 - e["end"] / 1000.0) <= max(collar, offset_pct * length)


def event_onset_counts(
    estimated: Events, reference: Events, collar_ms: float, offset_pct: float | None = None
) -> tuple[int, int, int]:
    """(hits, n_estimated, n_reference): one-to-one matches of same-label events whose onsets
    differ by at most `collar_ms` (and, with `offset_pct`, whose offsets differ by at most
    max(collar, offset_pct * reference length)), maximised per file and label (sed_eval's
    'optimal' matching)."""
    hits = n_est = n_ref = 0
    for f in set(estimated) | set(reference):
        est, ref = _by_label(estimated.get(f, ())), _by_label(reference.get(f, ()))
        n_est += sum(map(len, est.values()))
        n_ref += sum(map(len, ref.values()))
        for label, r_events in ref.items():
            e_events = est.get(label, [])
            adj = [
                [j for j, e in enumerate(e_events) if _matches(r, e, collar_ms, offset_pct)]
                for r in r_events
            ]
            hits += _max_bipartite_matching(adj, len(e_events))
    return hits, n_est, n_ref


_EPS = float(np.spacing(1))  # sed_eval's guard against an empty denominator in the error rate


def event_onset_fmeasure(
    estimated: Events,
    reference: Events,
    collar_ms: float = 200.0,
    offset_pct: float | None = None,
) -> float:
    """Overall (micro) event-based F-measure: onset-only, or onset and offset with
    `offset_pct` (sed_eval's percentage_of_length).

    As sed_eval 0.2.1: precision is NaN without estimated events and recall NaN without
    reference events, so F is NaN then, except 0 when both are 0.
    """
    hits, n_est, n_ref = event_onset_counts(estimated, reference, collar_ms, offset_pct)
    precision = hits / n_est if n_est else math.nan
    recall = hits / n_ref if n_ref else math.nan
    if precision == 0 and recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _event_roll(
    events: Sequence[Mapping[str, Any]], labels: dict[str, int], length: int, resolution_ms: float
) -> np.ndarray:
    roll = np.zeros((length, len(labels)), dtype=bool)
    for ev in events:
        a = int(math.floor(ev["start"] / resolution_ms))
        b = int(math.ceil(ev["end"] / resolution_ms))
        roll[a:b, labels[str(ev["label"])]] = True
    return roll


def segment_error_rate(
    estimated: Events, reference: Events, resolution_ms: float = 1000.0
) -> float:
    """Segment-based error rate (S + D + I) / N_ref over fixed segments, summed over files.

    A segment is active for a label when an event of that label overlaps it
    (floor(start / res) .. ceil(end / res)); per segment S = min(N_ref, N_sys) - N_tp,
    D = max(0, N_ref - N_sys), I = max(0, N_sys - N_ref).
    """
    subs = dels = ins = n_ref = 0
    for f in set(estimated) | set(reference):
        est, ref = list(estimated.get(f, ())), list(reference.get(f, ()))
        labels = {lab: i for i, lab in enumerate(sorted({str(e["label"]) for e in est + ref}))}
        if not labels:
            continue
        length = max(int(math.ceil(e["end"] / resolution_ms)) for e in est + ref)
        r = _event_roll(ref, labels, length, resolution_ms)
        s = _event_roll(est, labels, length, resolution_ms)
        nr, ns, ntp = r.sum(1), s.sum(1), (r & s).sum(1)
        subs += int(np.sum(np.minimum(nr, ns) - ntp))
        dels += int(np.sum(np.maximum(0, nr - ns)))
        ins += int(np.sum(np.maximum(0, ns - nr)))
        n_ref += int(nr.sum())
    return float((subs + dels + ins) / (n_ref + _EPS))


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., float]
    embedding_type: str  # "scene", "event" or "any" (frame-level scores work for both)
    higher_is_better: bool = True

    @property
    def is_event(self) -> bool:
        return self.embedding_type == "event"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("top1_acc", top1_accuracy, "any"),
        Metric("pitch_acc", top1_accuracy, "any"),  # heareval: Top1Accuracy under another name
        Metric("chroma_acc", chroma_accuracy, "any"),
        Metric("mAP", mean_average_precision, "any"),
        Metric("d_prime", d_prime, "any"),
        Metric("aucroc", auc_roc, "any"),
        Metric(
            "event_onset_200ms_fms",
            lambda e, r: event_onset_fmeasure(e, r, collar_ms=200.0),
            "event",
        ),
        Metric(
            "event_onset_50ms_fms", lambda e, r: event_onset_fmeasure(e, r, collar_ms=50.0), "event"
        ),
        Metric(
            "event_onset_offset_50ms_20perc_fms",
            lambda e, r: event_onset_fmeasure(e, r, collar_ms=50.0, offset_pct=0.2),
            "event",
        ),
        Metric(
            "segment_1s_er",
            lambda e, r: segment_error_rate(e, r, resolution_ms=1000.0),
            "event",
            higher_is_better=False,
        ),
    ]
}
