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


def _scorable_classes(targets: np.ndarray) -> np.ndarray:
    # A class without positives (or without negatives) has no AP / AUC: leave it out of the mean.
    pos = targets.sum(axis=0)
    return np.flatnonzero((pos > 0) & (pos < len(targets)))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of per-class average precision (sklearn), over classes with a positive."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    classes = np.flatnonzero(targets.sum(axis=0) > 0)
    if len(classes) == 0:
        return float("nan")
    ap = average_precision_score(targets[:, classes], scores[:, classes], average=None)
    return float(np.mean(ap))


def _per_class_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    classes = _scorable_classes(targets)
    if len(classes) == 0:
        return np.array([])
    return np.atleast_1d(roc_auc_score(targets[:, classes], scores[:, classes], average=None))


def auc_roc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mean of per-class ROC AUC."""
    auc = _per_class_auc(scores, targets)
    return float(np.mean(auc)) if len(auc) else float("nan")


def d_prime(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of d' = sqrt(2) * Phi^-1(AUC) (AUC per class, one-vs-rest)."""
    auc = _per_class_auc(scores, targets)
    if not len(auc):
        return float("nan")
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


def event_onset_counts(
    estimated: Events, reference: Events, collar_ms: float
) -> tuple[int, int, int]:
    """(hits, n_estimated, n_reference): one-to-one matches of same-label events whose onsets
    differ by at most `collar_ms`, maximised per file and label (sed_eval's 'optimal')."""
    hits = n_est = n_ref = 0
    for f in set(estimated) | set(reference):
        est, ref = _by_label(estimated.get(f, ())), _by_label(reference.get(f, ()))
        n_est += sum(map(len, est.values()))
        n_ref += sum(map(len, ref.values()))
        for label, r_events in ref.items():
            e_events = est.get(label, [])
            # Compared in seconds exactly as sed_eval does (heareval passes ms / 1000), so that
            # onsets exactly one collar apart fall on the same side of it after float rounding.
            adj = [
                [
                    j
                    for j, e in enumerate(e_events)
                    if abs(r["start"] / 1000.0 - e["start"] / 1000.0) <= collar_ms / 1000.0
                ]
                for r in r_events
            ]
            hits += _max_bipartite_matching(adj, len(e_events))
    return hits, n_est, n_ref


_EPS = float(np.spacing(1))  # sed_eval's guard against an empty denominator in the error rate


def event_onset_fmeasure(estimated: Events, reference: Events, collar_ms: float = 200.0) -> float:
    """Overall (micro) onset-only F-measure.

    As sed_eval 0.2.1: precision is NaN without estimated events and recall NaN without
    reference events, so F is NaN then, except 0 when both are 0.
    """
    hits, n_est, n_ref = event_onset_counts(estimated, reference, collar_ms)
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
            "segment_1s_er",
            lambda e, r: segment_error_rate(e, r, resolution_ms=1000.0),
            "event",
            higher_is_better=False,
        ),
    ]
}
