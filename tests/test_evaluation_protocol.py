"""Protocol parity with hear-eval-kit 2021.1.3 (issue #13): grid order, NaN stopping,
task-specific grids, loss-based early stopping, batches of one row."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from independent_references import reference
from probe_oracle import train_sequential
from test_evaluation_helpers import blobs, write_embedded_scene_task

from mwmae.errors import ConfigError, InputError
from mwmae.evaluation.probe import (
    BatchedProbe,
    Member,
    ProbeConfig,
    TrainSettings,
    kit_grid,
)
from mwmae.evaluation.protocol import EvalOptions, Scorer, SplitData, evaluate_task, task_grid
from mwmae.evaluation.tasks import load_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_kit_order(grid: dict) -> list[dict]:
    # The kit's documented procedure, with sklearn's own ParameterGrid: seed_everything(42)
    # (random.seed(42)), then random.shuffle(list(ParameterGrid(grid))).
    from sklearn.model_selection import ParameterGrid

    confs = list(ParameterGrid(grid))
    state = random.getstate()
    try:
        random.seed(42)
        random.shuffle(confs)
    finally:
        random.setstate(state)
    return confs


def _as_tuple(conf: dict) -> tuple:
    init = conf["initialization"]
    init = init if isinstance(init, str) else init.__name__.rstrip("_")
    return (conf["hidden_layers"], conf["hidden_dim"], conf["dropout"], conf["lr"], init)


def _ours(points: list[ProbeConfig]) -> list[tuple]:
    return [(c.hidden_layers, c.hidden_dim, c.dropout, c.lr, c.init) for c in points]


KIT_DEFAULT = {  # heareval 2021.1.3's PARAM_GRID, with strings for the torch objects
    "hidden_layers": [1, 2],
    "hidden_dim": [1024],
    "dropout": [0.1],
    "lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4],
    "patience": [20],
    "max_epochs": [500],
    "check_val_every_n_epoch": [3],
    "batch_size": [1024],
    "hidden_norm": ["BatchNorm1d"],
    "norm_after_activation": [False],
    "embedding_norm": ["Identity"],
    "initialization": ["xavier_uniform", "xavier_normal"],
    "optim": ["Adam"],
}


@pytest.mark.parametrize("k", [1, 3, 8, 16])
def test_hear_grid_points_are_the_kits(k):
    ref = [_as_tuple(c) for c in _reference_kit_order(KIT_DEFAULT)][:k]
    assert _ours(kit_grid("hear")[:k]) == ref
    assert len(set(ref)) == k


def test_hear_grid_matches_the_kits_own_grid():
    tp = reference("heareval.predictions.task_predictions")
    ref = [_as_tuple(c) for c in _reference_kit_order(tp.PARAM_GRID)]
    assert _ours(kit_grid("hear")) == ref


def test_task_specific_grid_keys_expand_like_the_kit():
    over = {"check_val_every_n_epoch": [1, 5], "lr": [1e-2, 1e-3], "patience": [4]}
    ref = _reference_kit_order({**KIT_DEFAULT, **over})
    ours = kit_grid("hear", over)
    assert len(ours) == len(ref) == 16
    assert [(c.check_every, c.lr, c.patience) for c in ours] == [
        (c["check_val_every_n_epoch"], c["lr"], c["patience"]) for c in ref
    ]
    with pytest.raises(ConfigError, match="optim"):
        kit_grid("hear", {"optim": ["SGD"]})
    with pytest.raises(ConfigError, match="lrr"):
        kit_grid("hear", {"lrr": [1e-3]})


def test_task_specific_grid_is_honoured_by_evaluate_task(tmp_path):
    rng = np.random.default_rng(0)
    x, y = blobs(300, 8, 3, rng)
    parts = {"train": x[:180], "valid": x[180:240], "test": x[240:]}
    labels = {
        s: [[f"c{k}"] for k in yy] for s, yy in zip(parts, np.split(y, [180, 240]), strict=True)
    }
    grid = {"hidden_dim": [32], "max_epochs": [4, 7], "check_val_every_n_epoch": [2]}
    folder = write_embedded_scene_task(
        tmp_path, "t", parts, labels, evaluation_params={"task_specific_param_grid": grid}
    )
    opts = EvalOptions(seeds=1, settings=TrainSettings(batch_size=64))
    points = task_grid(load_metadata(folder), opts)
    assert len(points) == 4  # paper preset (2 dropouts) x 2 max_epochs
    res = evaluate_task(folder, opts)
    for g in res["seeds"][0]["grid"]:
        assert g["validation_score"] is not None
    runs = res["seeds"][0]["folds"][0]
    assert runs["epochs_run"] == points[runs["grid_point"]].max_epochs
    assert runs["epoch"] % 2 == 0 or runs["epoch"] == runs["epochs_run"]


def _data(n=200, nv=60, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    xv = rng.normal(size=(nv, dim)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(int), xv


def test_nan_validation_score_ends_the_run_as_lightning_does():
    x, y, xv = _data()
    st = TrainSettings(max_epochs=30, batch_size=64, patience=5, check_every=3, dtype="float64")
    calls = {"n": 0}

    def score(p):  # 0.5, then NaN at the second check
        calls["n"] += 1
        return (0.5 if calls["n"] % 2 == 1 else math.nan), None

    m = Member(ProbeConfig(1, 16, 0.1, 1e-3), seed=1)
    (res,) = BatchedProbe([m], 8, 2, False, st).fit(x, y, xv, score)
    assert res.epochs_run == 6 and res.stopped_nonfinite  # stopped at the 2nd check
    assert res.best_epoch == 3 and res.best_score == 0.5
    calls["n"] = 0
    _, seq = train_sequential(m, x, y, xv, score, False, st)
    assert (seq.epochs_run, seq.best_epoch, seq.stopped_nonfinite) == (6, 3, True)


def test_loss_criterion_equals_torch_loss_on_logits():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(50, 4)))
    targets = np.eye(4)[rng.integers(0, 4, 50)].astype(np.float32)
    meta_raw = {"use_scoring_for_early_stopping": False}

    class Meta:
        task_name, primary_metric, evaluation = "t", "top1_acc", ["top1_acc"]
        raw, prediction_type = meta_raw, "multiclass"

    data = SplitData(np.zeros((50, 1), np.float32), targets, [], None, None)
    scorer = Scorer(Meta, ["a", "b", "c", "d"], data)
    assert not scorer.higher_is_better
    ce = F.cross_entropy(logits, torch.tensor(targets.argmax(1))).item()
    assert scorer.validation(torch.softmax(logits, -1).numpy())[0] == pytest.approx(ce, rel=1e-6)
    Meta.prediction_type = "multilabel"
    multi = (rng.random((50, 4)) < 0.4).astype(np.float32)
    scorer = Scorer(Meta, ["a", "b", "c", "d"], SplitData(data.x, multi, [], None, None))
    bce = F.binary_cross_entropy_with_logits(logits, torch.tensor(multi, dtype=logits.dtype))
    assert scorer.loss(torch.sigmoid(logits).numpy()) == pytest.approx(bce.item(), rel=1e-6)


def test_a_training_batch_of_one_row_is_an_error_not_skipped():
    x, y, xv = _data(n=129)
    st = TrainSettings(max_epochs=3, batch_size=64)
    m = Member(ProbeConfig(1, 16, 0.1, 1e-3), seed=1)
    with pytest.raises(InputError, match="129 training rows"):
        BatchedProbe([m], 8, 2, False, st).fit(x, y, xv, lambda p: (0.0, None))
    # torch's BatchNorm1d (what heareval trains) refuses it too.
    with pytest.raises(ValueError, match="more than 1 value"):
        train_sequential(m, x, y, xv, lambda p: (0.0, None), False, st)


def test_fold_assignment_is_the_kits(tmp_path):
    from test_evaluation_helpers import write_task_metadata

    tp = reference("heareval.predictions.task_predictions")
    folds = ["fold03", "fold00", "fold04", "fold01", "fold02"]
    write_task_metadata(tmp_path / "k", split_mode="presplit_kfold", nfolds=5, splits=folds)
    ours = [
        {"train": list(d.train), "valid": list(d.valid), "test": list(d.test)}
        for d in load_metadata(tmp_path / "k").data_splits()
    ]
    assert ours == tp.data_splits_from_folds(folds)
