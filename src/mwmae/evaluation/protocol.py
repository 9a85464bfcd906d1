"""The downstream protocol on embedded HEAR tasks: fit probes, select grid points, score.

Protocol per task (heareval's, as the MW-MAE authors ran it): for every seed, train the probe at
every grid point on the first train/valid/test assignment, keep the grid point with the best
validation score, report its test score; for k-fold tasks train that grid point on the remaining
folds too and report the mean test score over folds. All seeds x grid points train at once in
`BatchedProbe`s (one per network depth). Aggregation over seeds (mean +- 95% CI), results.json,
tables and s(m) are in `mwmae.evaluation.report`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mwmae._io import read_json
from mwmae.evaluation.embed import check_device
from mwmae.evaluation.events import EVENT_POSTPROCESSING_GRID, group_rows_by_file, predict_events
from mwmae.evaluation.metrics import METRICS
from mwmae.evaluation.probe import (
    PRESET_GRIDS,
    BatchedProbe,
    Member,
    MemberResult,
    ProbeConfig,
    TrainSettings,
    kit_grid,
)
from mwmae.evaluation.report import jsonable, summarize, write_run
from mwmae.evaluation.stored import SplitEmbeddings, iter_embedded_tasks, load_split_embeddings
from mwmae.evaluation.tasks import TaskError, TaskMetadata, load_metadata, read_label_vocabulary

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Data of one train/valid/test assignment
# --------------------------------------------------------------------------------------------
@dataclass
class SplitData:
    x: np.ndarray
    targets: np.ndarray  # (N, C) multi-hot
    filenames: list[str]
    timestamps: np.ndarray | None
    events: dict[str, list[dict]] | None


def _combine(parts: list[SplitEmbeddings], vocabulary: list[str], where: str) -> SplitData:
    index = {lab: i for i, lab in enumerate(vocabulary)}
    x = np.concatenate([p.embeddings for p in parts]).astype(np.float32)
    targets = np.zeros((len(x), len(vocabulary)), dtype=np.float32)
    row = 0
    for p in parts:
        for labels in p.labels:
            for lab in labels:
                if lab not in index:
                    raise TaskError(f"{where}: label {lab!r} not in labelvocabulary.csv")
                targets[row, index[lab]] = 1.0
            row += 1
    filenames = [f for p in parts for f in p.filenames]
    if parts[0].timestamps is None:
        return SplitData(x, targets, filenames, None, None)
    ts = np.concatenate([p.timestamps for p in parts if p.timestamps is not None])
    events: dict[str, list[dict]] = {}
    for p in parts:
        events.update(p.events or {})
    return SplitData(x, targets, filenames, ts, events)


class Scorer:
    """Scores of one split's probabilities; event tasks pick the post-processing on validation."""

    def __init__(self, meta: TaskMetadata, vocabulary: list[str], data: SplitData):
        self.meta, self.vocabulary, self.data = meta, vocabulary, data
        self.primary = METRICS[meta.primary_metric]
        self.post_grid = postprocessing_grid(meta)
        if data.timestamps is not None:
            self.file_rows = group_rows_by_file(data.filenames, data.timestamps)
        # heareval: with use_scoring_for_early_stopping false, early stopping, checkpointing
        # and grid selection use the validation loss (lower is better) and event tasks use
        # their single post-processing option.
        self.use_scoring = bool(meta.raw.get("use_scoring_for_early_stopping", True))
        if not self.use_scoring and self.primary.is_event and len(self.post_grid) != 1:
            raise TaskError(
                f"{meta.task_name}: use_scoring_for_early_stopping is false, so the "
                f"event_postprocessing_grid must have exactly one option, not {len(self.post_grid)}"
            )

    @property
    def higher_is_better(self) -> bool:
        """Direction of the validation criterion (the first metric, or the loss)."""
        return self.primary.higher_is_better if self.use_scoring else False

    def loss(self, probs: np.ndarray) -> float:
        """The probe's training loss on this split, from probabilities (clipped to float32's
        resolution, so it equals the loss on logits except where a probability saturates)."""
        t = self.data.targets.astype(np.float64)
        p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
        if self.meta.prediction_type == "multilabel":
            return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
        return float(-np.mean(np.log(p[np.arange(len(t)), t.argmax(1)])))

    def _metric(self, name: str, probs: np.ndarray, post: dict | None) -> float:
        m = METRICS[name]
        if not m.is_event:
            return m.fn(probs, self.data.targets)
        assert post is not None and self.data.events is not None
        est = predict_events(
            probs,
            self.file_rows,
            self.data.timestamps,
            self.vocabulary,
            post["median_filter_ms"],
            post["min_duration_ms"],
        )
        return m.fn(est, {f: self.data.events.get(f, []) for f in self.file_rows})

    def validation(self, probs: np.ndarray) -> tuple[float, dict | None]:
        """(validation criterion, chosen post-processing or None)."""
        if not self.use_scoring:
            return self.loss(probs), (self.post_grid[0] if self.primary.is_event else None)
        if not self.primary.is_event:
            return self._metric(self.primary.name, probs, None), None
        sign = 1 if self.primary.higher_is_better else -1
        scored = []
        for post in self.post_grid:
            value = self._metric(self.primary.name, probs, post)
            scored.append((0.0 if math.isnan(value) else value, post))  # heareval: NaN -> 0
        # heareval sorts (score, post-processing) descending: ties go to the larger option.
        return max(
            scored,
            key=lambda sp: (sign * sp[0], sp[1]["median_filter_ms"], sp[1]["min_duration_ms"]),
        )

    def test(self, probs: np.ndarray, post: dict | None) -> dict[str, float]:
        if self.primary.is_event and post is None:
            post = self.post_grid[0]
        return {name: self._metric(name, probs, post) for name in self.meta.evaluation}


# heareval's TASK_SPECIFIC_PARAM_GRID: sed_eval is slow, so DCASE 2016 validates less often.
TASK_SPECIFIC_PARAM_GRID: dict[str, dict[str, list[Any]]] = {
    "dcase2016_task2": {"check_val_every_n_epoch": [10]},
}


def task_param_grid(meta: TaskMetadata) -> dict[str, Any]:
    """heareval's grid overrides of a task: the global table, then the task metadata's
    evaluation_params.task_specific_param_grid (later keys win, as dict.update)."""
    grid = dict(TASK_SPECIFIC_PARAM_GRID.get(meta.task_name, {}))
    grid.update(meta.raw.get("evaluation_params", {}).get("task_specific_param_grid", {}))
    return grid


def postprocessing_grid(meta: TaskMetadata) -> list[dict[str, float]]:
    """The event post-processing options: the task metadata's
    evaluation_params.event_postprocessing_grid if given, else heareval's default grid."""
    grid = meta.raw.get("evaluation_params", {}).get("event_postprocessing_grid")
    if not grid:
        return EVENT_POSTPROCESSING_GRID
    return [
        {"median_filter_ms": float(m), "min_duration_ms": float(d)}
        for m in grid["median_filter_ms"]
        for d in grid["min_duration"]
    ]


def task_check_every(meta: TaskMetadata, default: int) -> int:
    """Validation interval after heareval's task-specific overrides."""
    value = task_param_grid(meta).get("check_val_every_n_epoch")
    if isinstance(value, list):
        value = value[0]
    return int(value) if value else default


def _member_seed(seed: int, fold: int, grid_index: int) -> int:
    return int(np.random.SeedSequence([seed, fold, grid_index]).generate_state(1)[0])


def _training_targets(meta: TaskMetadata, train: SplitData) -> np.ndarray:
    """What the probe fits: multi-hot rows (multilabel) or class indices (multiclass, which
    must have exactly one label per row)."""
    if meta.prediction_type == "multilabel":
        return train.targets
    counts = train.targets.sum(1)
    if np.any(counts != 1):
        raise TaskError(
            f"{meta.task_name}: a multiclass training row has {int(counts[counts != 1][0])} labels"
        )
    return train.targets.argmax(1)


Trained = tuple[int, int, Member]  # (seed, grid index, member)


def _by_shape(
    members: list[Trained], settings: TrainSettings
) -> dict[tuple[int, int, TrainSettings], list[Trained]]:
    """Members grouped by what one BatchedProbe needs in common: depth, width, settings."""
    groups: dict[tuple[int, int, TrainSettings], list[Trained]] = {}
    for item in members:
        cfg = item[2].config
        key = (cfg.hidden_layers, cfg.hidden_dim, cfg.settings(settings))
        groups.setdefault(key, []).append(item)
    return groups


def _keep_best_per_seed(
    items: list[Trained],
    results: list[MemberResult],
    test_probs: np.ndarray,
    sign: int,
    best: dict[int, tuple[tuple[float, int], dict[str, Any], np.ndarray]],
) -> None:
    """Update `best` (seed -> (key, info, test probabilities)) with one probe's members: the
    best validation score wins, the lowest grid index on ties."""
    for k, ((seed, g, _), res) in enumerate(zip(items, results, strict=True)):
        key = (_nan_low(sign * res.best_score), -g)  # NaN loses in either direction
        if seed not in best or key > best[seed][0]:
            info = {
                "grid_point": g,
                "validation_score": res.best_score,
                "epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
                "stopped_nonfinite": res.stopped_nonfinite,
                "postprocessing": res.best_aux,
            }
            best[seed] = (key, info, test_probs[k].copy())


def _fit_and_select(
    members: list[Trained],
    meta: TaskMetadata,
    train: SplitData,
    valid: Scorer,
    test: Scorer,
    settings: TrainSettings,
    device: str,
    progress: bool,
    desc: str,
) -> tuple[dict[int, dict[str, Any]], dict[tuple[int, int], float]]:
    """Train (seed, grid index, Member) triples, batched per network shape, and keep per seed
    the member with the best validation score (lowest grid index on ties).

    Returns (seed -> {"grid_point", "validation_score", "epoch", "epochs_run",
    "postprocessing", "test"}, (seed, grid index) -> validation score). Only the selected
    members are scored on test, and only their test probabilities are held in memory.
    """
    y = _training_targets(meta, train)
    multilabel = meta.prediction_type == "multilabel"
    sign = 1 if valid.higher_is_better else -1
    best: dict[int, tuple[tuple[float, int], dict[str, Any], np.ndarray]] = {}
    val_scores: dict[tuple[int, int], float] = {}
    for shape, items in _by_shape(members, settings).items():
        n_in, n_out = train.x.shape[1], train.targets.shape[1]
        probe = BatchedProbe([m for _, _, m in items], n_in, n_out, multilabel, shape[2], device)
        results = probe.fit(
            train.x,
            y,
            valid.data.x,
            valid.validation,
            valid.higher_is_better,
            progress=progress,
            desc=f"{desc} h{shape[0]}",
        )
        for (seed, g, _), res in zip(items, results, strict=True):
            val_scores[(seed, g)] = res.best_score
        _keep_best_per_seed(items, results, probe.predict(test.data.x), sign, best)
        del probe
    selected = {}
    for seed, (_, info, probs) in best.items():
        selected[seed] = {**info, "test": test.test(probs, info["postprocessing"])}
    return selected, val_scores


def _standardize(train: SplitData, *others: SplitData) -> None:
    mean = train.x.mean(0, keepdims=True)
    std = train.x.std(0, keepdims=True) + 1e-8
    for d in (train, *others):
        d.x = (d.x - mean) / std


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate_task` / `evaluate_embeddings` run.

    preset: the grid ("paper" or "hear"; see probe.PRESET_GRIDS), after the task's heareval
    overrides, in heareval's shuffled order. grid_points: train only the first k points of that
    order, exactly heareval's --grid-points k (None = all). grid: explicit points instead of the
    preset's (used in the given order). standardize: z-score embeddings with training
    statistics (off: heareval uses embedding_norm=Identity). max_epochs: overrides
    settings.max_epochs. grid_overrides: heareval-style grid keys -> value lists that replace
    the preset's before each task's own overrides (as editing the kit's PARAM_GRID would),
    e.g. {"hidden_dim": [256]}.
    """

    preset: str = "paper"
    seeds: int = 10
    grid_points: int | None = None
    device: str = "cpu"
    standardize: bool = False
    settings: TrainSettings = field(default_factory=TrainSettings)
    grid: tuple[ProbeConfig, ...] | None = None
    max_epochs: int | None = None
    progress: bool = False
    grid_overrides: dict[str, list[Any]] | None = None

    def __post_init__(self) -> None:
        from mwmae.errors import ConfigError

        if self.preset not in PRESET_GRIDS:
            raise ConfigError(
                f"preset: expected one of {sorted(PRESET_GRIDS)}, not {self.preset!r}"
            )
        if self.seeds < 1:
            raise ConfigError(f"seeds: expected >= 1, not {self.seeds}")
        if self.grid_points is not None and self.grid_points < 1:
            raise ConfigError(f"grid_points: expected >= 1, not {self.grid_points}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"max_epochs: expected >= 1, not {self.max_epochs}")
        check_device(self.device)
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(self.grid))
        if self.max_epochs is not None:
            settings = dataclasses.replace(self.settings, max_epochs=self.max_epochs)
            object.__setattr__(self, "settings", settings)


def _options(options: EvalOptions | None, overrides: dict[str, Any]) -> EvalOptions:
    return dataclasses.replace(options or EvalOptions(), **overrides)


def task_grid(meta: TaskMetadata, opts: EvalOptions) -> list[ProbeConfig]:
    """The grid points this task trains, in heareval's order, cut to opts.grid_points."""
    if opts.grid is not None:
        grid = list(opts.grid)
    else:
        overrides = {**(opts.grid_overrides or {}), **task_param_grid(meta)}
        grid = kit_grid(opts.preset, overrides, f"{meta.task_name} grid")
    return grid[: opts.grid_points] if opts.grid_points else grid


def evaluate_task(
    task_out: str | Path, options: EvalOptions | None = None, **overrides: Any
) -> dict[str, Any]:
    """Evaluate one embedded task folder; returns its result dict (see `evaluate_embeddings`).
    `overrides` replace fields of `options` (e.g. ``seeds=3``)."""
    opts = _options(options, overrides)
    task_out = Path(task_out)
    meta = load_metadata(task_out)
    settings = opts.settings
    if opts.grid is not None:  # explicit points: only the validation interval is overridden
        settings = dataclasses.replace(
            settings, check_every=task_check_every(meta, settings.check_every)
        )
    vocabulary = read_label_vocabulary(task_out / "labelvocabulary.csv")
    grid = task_grid(meta, opts)
    grid_ids = list(range(len(grid)))
    seeds = opts.seeds
    cache: dict[str, SplitEmbeddings] = {}

    def data_of(names: Sequence[str]) -> SplitData:
        for n in names:
            if n not in cache:
                cache[n] = load_split_embeddings(task_out, n)
        return _combine([cache[n] for n in names], vocabulary, f"{task_out}/{'+'.join(names)}")

    assignments = meta.data_splits()
    per_seed: list[dict[str, Any]] = [{"seed": s, "folds": []} for s in range(seeds)]
    best_g: dict[int, int] = {}
    for fold, assignment in enumerate(assignments):
        train, valid, test = (
            data_of(assignment.train),
            data_of(assignment.valid),
            data_of(assignment.test),
        )
        if opts.standardize:
            _standardize(train, valid, test)
        v_scorer, t_scorer = Scorer(meta, vocabulary, valid), Scorer(meta, vocabulary, test)
        # Grid selection on the first fold only; the other folds retrain the chosen point.
        chosen = (lambda s: grid_ids) if fold == 0 else (lambda s: [best_g[s]])
        members = [
            (s, g, Member(grid[g], _member_seed(s, fold, g)))
            for s in range(seeds)
            for g in chosen(s)
        ]
        desc = f"{meta.task_name} {assignment.test[0]}"
        selected, val_scores = _fit_and_select(
            members, meta, train, v_scorer, t_scorer, settings, opts.device, opts.progress, desc
        )
        for s in range(seeds):
            if fold == 0:
                best_g[s] = selected[s]["grid_point"]
                per_seed[s]["grid_point"] = best_g[s]
                per_seed[s]["config"] = dataclasses.asdict(grid[best_g[s]])
                per_seed[s]["grid"] = [
                    {"grid_point": g, "validation_score": val_scores[(s, g)]} for g in grid_ids
                ]
            per_seed[s]["folds"].append({"test_split": assignment.test[0], **selected[s]})
    return _task_result(meta, per_seed)


def _task_result(meta: TaskMetadata, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    # heareval's aggregate over folds: the mean of each metric's fold test scores.
    for s in per_seed:
        s["test"] = {m: float(np.mean([f["test"][m] for f in s["folds"]])) for m in meta.evaluation}
    primary = meta.primary_metric
    scores = [s["test"][primary] for s in per_seed]
    return {
        "task": meta.task_name,
        "embedding_type": meta.embedding_type,
        "prediction_type": meta.prediction_type,
        "split_mode": meta.split_mode,
        "metric": primary,
        "higher_is_better": METRICS[primary].higher_is_better,
        "scores": scores,
        **summarize(scores),
        "metrics": {
            m: {
                "scores": [s["test"][m] for s in per_seed],
                **summarize([s["test"][m] for s in per_seed]),
            }
            for m in meta.evaluation
        },
        "seeds": per_seed,
    }


def _nan_low(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def _settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()
    }


# What a task's stored result depends on: the protocol and the embeddings it was scored on.
_REUSE_KEYS = (
    "preset",
    "seeds",
    "grid_points",
    "standardize",
    "settings",
    "grid",
    "grid_overrides",
    "embeddings_digest",
)


def embeddings_digest(emb_dir: str | Path) -> str:
    """SHA-256 over every file of the embedded tasks (names and bytes), so that a stored result
    is reused only for the very embeddings, labels and metadata it was computed from. Only the
    task folders count: what else lies beside them (`embed.json`, rewritten with new timings by
    every `embed`; the lock file naming its holder) is not what a result depends on."""
    import hashlib

    from mwmae._io import sha256_file

    digest = hashlib.sha256()
    root = Path(emb_dir)
    for task in iter_embedded_tasks(root):
        for path in sorted(p for p in task.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def evaluate_embeddings(
    emb_dir: str | Path,
    options: EvalOptions | None = None,
    *,
    model_name: str | None = None,
    out_dir: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate every embedded task under `emb_dir` (or the task folder itself).

    `options` (an EvalOptions; `overrides` replace its fields, e.g. ``seeds=3``) say how.
    Returns {"model", "preset", "seeds", "settings", ..., "tasks": {task_name: result}} where a
    task result holds per-seed test scores of the first metric ("scores"), their "mean", "std"
    (ddof=1) and "ci95" (Student-t half-width), every metric likewise under "metrics", and the
    per-seed details (chosen grid point, validation score, epoch, per-fold test scores).
    With `out_dir`, results.json (rewritten after each task; tasks already in it with the same
    settings are not re-run) and results.md are written there.
    """
    opts = _options(options, overrides)
    emb_dir = Path(emb_dir)
    run: dict[str, Any] = {
        "model": model_name or emb_dir.resolve().name,
        "preset": opts.preset,
        "seeds": opts.seeds,
        "grid_points": opts.grid_points,
        "standardize": opts.standardize,
        "grid": [dataclasses.asdict(g) for g in opts.grid] if opts.grid is not None else None,
        "grid_overrides": opts.grid_overrides,
        "settings": _settings_dict(opts.settings),
        "embeddings": str(emb_dir),
        "embeddings_digest": embeddings_digest(emb_dir),
        "tasks": {},
    }
    json_path = Path(out_dir) / "results.json" if out_dir is not None else None
    if json_path is not None and json_path.is_file():
        old = read_json(json_path, TaskError)
        same = isinstance(old, dict) and all(old.get(k) == jsonable(run[k]) for k in _REUSE_KEYS)
        if same:
            run["tasks"] = old.get("tasks", {})
    from mwmae._progress import progress_bar

    folders = list(iter_embedded_tasks(emb_dir))
    for folder in progress_bar(folders, desc="tasks", unit="task", disable=not opts.progress):
        name = load_metadata(folder).task_name
        if tasks is not None and name not in tasks and folder.name not in tasks:
            continue
        if name in run["tasks"]:
            log.info("%s: already in %s, skipped", name, json_path)
            continue
        run["tasks"][name] = evaluate_task(folder, opts)
        if out_dir is not None:
            write_run(run, out_dir)
    run["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if out_dir is not None:
        write_run(run, out_dir)
    return run
