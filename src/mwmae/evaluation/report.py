"""Results of evaluation runs: per-seed aggregation, results.json, tables, s(m), comparisons.

A run (what `protocol.evaluate_embeddings` returns and `write_run` stores as results.json) is
{"model", ..., "tasks": {task_name: result}}, a task result holding the per-seed test scores of
its first metric ("scores") with their "mean", "std" (ddof=1) and "ci95". The paper reports
mean +- the half-width of the 95% Student-t interval over seeds:
t_{0.975, n-1} * std(ddof=1) / sqrt(n).

Overall score (the paper's s(m)): for a set of compared models M and tasks T,

    s(m) = 100 / |T| * sum_t (x_t(m) - min_t) / (max_t - min_t)

where x_t(m) is model m's score on task t and min_t / max_t are the lowest and highest score on
task t among the models compared (a min-max normalisation per task; error-rate metrics are
flipped so that 1 is best). The paper's tables fit this form exactly: a least-squares fit of
s(m) as an affine function of the ten task scores over all 32 rows of its ablation tables
(Tables 4-7) leaves residuals <= 0.04 (rounding) with per-task ranges of 41-94 points, i.e. the
min/max come from its whole comparison set (HEAR baselines included), not from the rows shown.
So `compare` uses the compared runs' task means for min_t/max_t unless `bounds` are given (pass
the bounds of a wider comparison set to reproduce paper-style numbers). With two models the
normalisation is 0/100 per task, which says little: prefer bounds then. s(m) is computed per seed
(with fixed bounds) and reported as mean +- 95% CI like the task scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mwmae._io import atomic_write_bytes, read_json
from mwmae.errors import ConfigError, reraise_as_output_errors
from mwmae.evaluation.tasks import TaskError

Bounds = dict[str, tuple[float, float]]

PERCENT_METRICS = {
    "top1_acc",
    "pitch_acc",
    "chroma_acc",
    "mAP",
    "aucroc",
    "event_onset_200ms_fms",
    "event_onset_50ms_fms",
    "event_onset_offset_50ms_20perc_fms",
}


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------
def ci95_half_width(scores: Sequence[float]) -> float:
    """t_{0.975, n-1} * std(ddof=1) / sqrt(n); NaN for fewer than two scores."""
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def summarize(scores: Sequence[float]) -> dict[str, float]:
    """{"mean", "std" (ddof=1), "ci95" (Student-t half-width), "n"} of per-seed scores."""
    x = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # d' is inf for a perfectly separated class
        return {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
            "ci95": ci95_half_width(x),
            "n": len(x),
        }


# --------------------------------------------------------------------------------------------
# results.json
# --------------------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """`obj` as JSON can hold it: NaN and +-inf (d' of a perfectly separated class) -> None,
    tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


def write_run(run: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write results.json and results.md (its table) into `out_dir`; returns their paths."""
    out = Path(out_dir)
    jp, mp = out / "results.json", out / "results.md"
    with reraise_as_output_errors(out):  # a read-only folder, a full disk
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(jp, json.dumps(jsonable(run), indent=1).encode())
        atomic_write_bytes(mp, results_table([run]).encode())
    return jp, mp


def load_run(path: str | Path) -> dict[str, Any]:
    """A results.json (or the folder holding one); TaskError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: malformed or not UTF-8
        raise TaskError(f"{path}: cannot read a results JSON ({e})") from e
    if not isinstance(run, dict) or "tasks" not in run:
        raise TaskError(f"{path}: not a results JSON (no 'tasks')")
    return run


# --------------------------------------------------------------------------------------------
# s(m)
# --------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    """A finite int or float (not a bool): an undefined score (NaN, inf, null) is not one."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _normalisation_bounds(runs: Sequence[dict[str, Any]], bounds: Bounds | None) -> Bounds:
    """task -> (min, max) for the tasks s(m) uses: those every run has with defined scores,
    bounded by `bounds` or else by the runs' task means, and with max > min."""

    def defined(t: str) -> bool:
        return all(
            _is_number(x) for r in runs for x in [r["tasks"][t]["mean"], *r["tasks"][t]["scores"]]
        )

    names = (
        [t for t in runs[0]["tasks"] if all(t in r["tasks"] for r in runs) and defined(t)]
        if runs
        else []
    )
    lo_hi: Bounds = {}
    for t in names:
        if bounds is not None and t in bounds:
            lo, hi = bounds[t]
        else:
            means = [r["tasks"][t]["mean"] for r in runs]
            lo, hi = min(means), max(means)
        if hi > lo:
            lo_hi[t] = (lo, hi)
    return lo_hi


def _per_seed_overall(run: dict[str, Any], lo_hi: Bounds) -> list[float]:
    """s(m) of each seed every used task has."""
    n = min(len(run["tasks"][t]["scores"]) for t in lo_hi)
    per_seed = []
    for i in range(n):
        vals = []
        for t, (lo, hi) in lo_hi.items():
            norm = (run["tasks"][t]["scores"][i] - lo) / (hi - lo)
            vals.append(norm if run["tasks"][t].get("higher_is_better", True) else 1 - norm)
        per_seed.append(100.0 * float(np.mean(vals)))
    return per_seed


def overall_scores(
    runs: Sequence[dict[str, Any]], bounds: Bounds | None = None
) -> list[dict[str, Any]]:
    """s(m) per run (see the module docstring) over the tasks every run has.

    bounds: task -> (min, max) of the primary metric (as fractions, like the results); default:
    min/max of the runs' task means. Tasks with max == min, and tasks where a run has an
    undefined score (NaN, stored as null), are left out. Returns per run
    {"mean", "ci95", "scores" (per seed), "tasks" (the tasks used)}.
    """
    lo_hi = _normalisation_bounds(runs, bounds)
    used = list(lo_hi)
    if not used:
        nan = float("nan")
        return [{"mean": nan, "ci95": nan, "scores": [], "tasks": [], "seeds": 0} for _ in runs]
    out = []
    for r in runs:
        per_seed = _per_seed_overall(r, lo_hi)
        n = len(per_seed)
        mean, hw = float(np.mean(per_seed)), ci95_half_width(per_seed)
        out.append(
            {
                "mean": mean,
                "ci95": hw,
                # The interval, clipped to s(m)'s range [0, 100]; no interval with one seed.
                "ci_low": max(0.0, mean - hw) if n > 1 else float("nan"),
                "ci_high": min(100.0, mean + hw) if n > 1 else float("nan"),
                "scores": per_seed,
                "seeds": n,
                "tasks": used,
                "bounds": {t: list(lo_hi[t]) for t in used},
                "normalised_over": "given bounds" if bounds else [r.get("model") for r in runs],
            }
        )
    return out


def format_overall(s: dict[str, Any]) -> str:
    """'mean ± half-width', or 'mean [low, high]' where the interval is clipped to [0, 100]."""
    if not s["tasks"]:
        return "—"
    text = f"{s['mean']:.1f}"
    if math.isnan(s.get("ci_low", float("nan"))):
        return text
    if s["ci_low"] > s["mean"] - s["ci95"] or s["ci_high"] < s["mean"] + s["ci95"]:
        return f"{text} [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"
    return f"{text} ± {s['ci95']:.1f}"


# --------------------------------------------------------------------------------------------
# Tables and comparisons
# --------------------------------------------------------------------------------------------
def _fmt(value: float | None, ci: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    scale, digits = (100.0, 1) if metric in PERCENT_METRICS else (1.0, 3)
    text = f"{value * scale:.{digits}f}"
    if ci is None or math.isnan(ci):
        return text
    if metric in PERCENT_METRICS and (value - ci < 0 or value + ci > 1):
        # An interval never leaves the score's range: show it clipped to [0, 100].
        lo, hi = max(0.0, value - ci) * scale, min(1.0, value + ci) * scale
        return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text + f" ± {ci * scale:.{digits}f}"


def _overall_note(runs: Sequence[dict[str, Any]], overall: list, bounds: Any) -> str:
    used = next((s["tasks"] for s in overall if s and s["tasks"]), [])
    if not used:
        return ""
    over = (
        "the given per-task bounds"
        if bounds
        else f"the lowest and highest task mean among the {len(runs)} compared models ("
        + ", ".join(str(r.get("model", "?")) for r in runs)
        + ")"
    )
    seeds = min(s["seeds"] for s in overall if s and s["tasks"])
    return (
        f" s(m) = 100 x mean over {len(used)} task(s) ({', '.join(used)}) of the score min-max "
        f"normalised between {over} (error rates flipped); computed per seed ({seeds} seeds), "
        "± = 95% Student-t half-width over seeds, shown as [low, high] where clipped to [0, 100]."
    )


def results_table(runs: Sequence[dict[str, Any]], bounds: Bounds | None = None) -> str:
    """Markdown: one row per model, one column per task (mean ± 95% CI, percent for
    accuracy/mAP/F-measure), and s(m) (with a single run only if `bounds` are given)."""
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in r["tasks"] if t not in tasks]
    show_s = len(runs) > 1 or bounds is not None
    overall = overall_scores(runs, bounds) if show_s else [None] * len(runs)
    head = ["Model"] + tasks + ["s(m)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, s in zip(runs, overall, strict=True):
        cells = [str(r.get("model", "?"))]
        for t in tasks:
            res = r["tasks"].get(t)
            cells.append(_fmt(res["mean"], res.get("ci95"), res["metric"]) if res else "—")
        cells.append("—" if s is None else format_overall(s))
        lines.append("| " + " | ".join(cells) + " |")
    metrics = {r["tasks"][t]["metric"] for r in runs for t in r["tasks"]}
    lines.append("")
    lines.append(
        f"Mean ± half-width of the 95% Student-t interval over seeds; metrics: "
        f"{', '.join(sorted(metrics))}." + (_overall_note(runs, overall, bounds) if show_s else "")
    )
    return "\n".join(lines) + "\n"


def load_bounds(path: str | Path) -> Bounds:
    """A JSON file {task: [min, max]} of s(m) normalisation bounds; `ConfigError` naming it
    when it is missing or not of that form."""
    bounds = read_json(path, ConfigError)
    pair = (list, tuple)
    if not isinstance(bounds, dict) or not all(
        isinstance(v, pair) and len(v) == 2 and all(_is_number(x) for x in v)
        for v in bounds.values()
    ):
        raise ConfigError(f"{path}: expected {{task: [min, max]}} with numbers")
    return {k: (float(v[0]), float(v[1])) for k, v in bounds.items()}


def compare_summary(
    runs: Sequence[dict[str, Any]], run_paths: Sequence[str | Path], bounds: Bounds | None = None
) -> list[dict[str, Any]]:
    """Per run (compare.json): its model, where it was read, each task's metric, mean and ci95,
    and its s(m) among `runs`."""
    overall = overall_scores(runs, bounds)
    return [
        {
            "model": r.get("model"),
            "run": str(p),
            "tasks": {
                t: {k: v[k] for k in ("metric", "mean", "ci95")} for t, v in r["tasks"].items()
            },
            "s_m": {"mean": s["mean"], "ci95": s["ci95"], "tasks": s["tasks"]},
        }
        for r, s, p in zip(runs, overall, run_paths, strict=True)
    ]


def compare(
    run_paths: Sequence[str | Path],
    bounds: Bounds | None = None,
    out_dir: str | Path | None = None,
) -> str:
    """Markdown table of several runs (results.json files or their folders) side by side; with
    `out_dir`, also written there as compare.md beside compare.json (`compare_summary`)."""
    if not run_paths:
        raise ValueError("compare needs at least one run")
    runs = [load_run(p) for p in run_paths]
    table = results_table(runs, bounds)
    if out_dir is not None:
        out = Path(out_dir)
        summary = compare_summary(runs, run_paths, bounds)
        with reraise_as_output_errors(out):
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / "compare.md", table.encode())
            # jsonable: a single-seed ci95 is NaN, which plain json.dumps writes as invalid JSON
            atomic_write_bytes(
                out / "compare.json", json.dumps(jsonable(summary), indent=1).encode()
            )
    return table
