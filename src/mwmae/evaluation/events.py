"""Frame-level predictions -> events, as heareval post-processes event tasks.

Per file (frames in timestamp order): a median filter of `median_filter_ms` over time on the
probabilities (width round(median_filter_ms / mean frame step) frames), threshold > 0.5, then each
run of consecutive active frames of a label becomes an event from the first to the last active
frame's timestamp, kept if it lasts at least `min_duration_ms`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import median_filter

# heareval's EVENT_POSTPROCESSING_GRID: the best option on validation is kept for test.
EVENT_POSTPROCESSING_GRID: list[dict[str, float]] = [
    {"median_filter_ms": 250.0, "min_duration_ms": 125.0},
    {"median_filter_ms": 250.0, "min_duration_ms": 250.0},
]


def group_rows_by_file(filenames: Sequence[str], timestamps: np.ndarray) -> dict[str, np.ndarray]:
    """file -> row indices sorted by timestamp."""
    rows: dict[str, list[int]] = {}
    for i, f in enumerate(filenames):
        rows.setdefault(f, []).append(i)
    return {f: np.array(sorted(r, key=lambda i: timestamps[i])) for f, r in rows.items()}


def frames_to_events(
    probs: np.ndarray,
    timestamps: np.ndarray,
    vocabulary: Sequence[str],
    median_filter_ms: float,
    min_duration_ms: float,
    threshold: float = 0.5,
) -> list[dict]:
    """Events of ONE file from its frame probabilities (T, C) at sorted timestamps (T,) ms."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(timestamps) > 1 and median_filter_ms:
        step = float(np.mean(np.diff(timestamps)))
        width = int(round(median_filter_ms / step)) if step > 0 else 0
        if width > 1:
            probs = median_filter(probs, size=(width, 1))
    active = probs > threshold
    events = []
    for c in range(active.shape[1]):
        on = np.flatnonzero(active[:, c])
        if not len(on):
            continue
        # Split the active frame indices into runs of consecutive indices.
        breaks = np.flatnonzero(np.diff(on) > 1)
        for first, last in zip(
            np.r_[on[0], on[breaks + 1]], np.r_[on[breaks], on[-1]], strict=True
        ):
            start, end = float(timestamps[first]), float(timestamps[last])
            if end - start >= min_duration_ms:
                events.append({"label": vocabulary[c], "start": start, "end": end})
    return sorted(events, key=lambda e: (e["start"], e["label"]))


def predict_events(
    probs: np.ndarray,
    file_rows: dict[str, np.ndarray],
    timestamps: np.ndarray,
    vocabulary: Sequence[str],
    median_filter_ms: float,
    min_duration_ms: float,
) -> dict[str, list[dict]]:
    """file -> events, for all files of a split (`file_rows` from `group_rows_by_file`)."""
    return {
        f: frames_to_events(
            probs[rows], timestamps[rows], vocabulary, median_filter_ms, min_duration_ms
        )
        for f, rows in file_rows.items()
    }
