"""The batched probe against a plain sequential nn.Sequential loop, and its protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from probe_oracle import train_sequential

from mwmae.evaluation.metrics import top1_accuracy
from mwmae.evaluation.probe import (
    BatchedProbe,
    Member,
    ProbeConfig,
    TrainSettings,
    init_member,
    preset_grid,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed=0, n=300, nv=100, dim=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    xv = rng.normal(size=(nv, dim)).astype(np.float32)
    yv = (xv[:, 0] > 0).astype(int) + (xv[:, 1] > 0)
    return x, y, xv, np.eye(3)[yv]


def _scorer(onehot):
    return lambda p: (top1_accuracy(p, onehot), None)


def test_presets():
    paper = preset_grid("paper")
    assert [(c.hidden_layers, c.hidden_dim, c.dropout, c.lr, c.init) for c in paper] == [
        (1, 1024, 0.1, 1e-4, "xavier_normal"),
        (1, 1024, 0.25, 1e-4, "xavier_normal"),
    ]
    hear = preset_grid("hear")
    assert len(hear) == 16
    assert {c.hidden_layers for c in hear} == {1, 2}
    assert {c.lr for c in hear} == {3.2e-3, 1e-3, 3.2e-4, 1e-4}
    assert {c.init for c in hear} == {"xavier_uniform", "xavier_normal"}
    assert {c.dropout for c in hear} == {0.1}
    with pytest.raises(ValueError):
        preset_grid("nope")


def test_init_is_xavier_with_heareval_gains():
    torch.manual_seed(0)
    layers = init_member(Member(ProbeConfig(2, 512, init="xavier_uniform"), 3), 256, 10)
    (w0, b0), (w1, _), (w2, _) = layers
    # xavier_uniform bound = gain * sqrt(6 / (fan_in + fan_out)); gain 1, then sqrt(2) (ReLU).
    assert w0.abs().max() <= np.sqrt(6 / (256 + 512)) + 1e-7
    assert w0.abs().max() > 0.95 * np.sqrt(6 / (256 + 512))
    assert w1.abs().max() > 1.3 * np.sqrt(6 / (512 + 512))
    assert w2.shape == (10, 512)
    assert b0.abs().max() <= 1 / np.sqrt(256)
    # Same seed, same draws; another seed differs.
    again = init_member(Member(ProbeConfig(2, 512, init="xavier_uniform"), 3), 256, 10)
    assert torch.equal(again[0][0], w0)
    other = init_member(Member(ProbeConfig(2, 512, init="xavier_uniform"), 4), 256, 10)
    assert not torch.equal(other[0][0], w0)


@pytest.mark.parametrize("hidden_layers, shuffle", [(1, True), (2, True), (1, False)])
def test_batched_equals_sequential(hidden_layers, shuffle):
    """Each member of a batched run equals the plain nn.Sequential + torch.optim.Adam loop with
    the same seed (same init, data order and dropout masks): same validation history, best
    epoch and predictions. float64 so that the comparison is tight (see TrainSettings.dtype)."""
    x, y, xv, onehot = _data()
    st = TrainSettings(
        max_epochs=30, batch_size=64, patience=2, check_every=3, dtype="float64", shuffle=shuffle
    )
    members = [
        Member(ProbeConfig(hidden_layers, 32, d, lr, "xavier_normal"), s)
        for s, d, lr in [(0, 0.1, 1e-3), (1, 0.25, 3e-3), (2, 0.0, 1e-2), (3, 0.5, 1e-3)]
    ]
    probe = BatchedProbe(members, 16, 3, multilabel=False, settings=st)
    results = probe.fit(x, y, xv, _scorer(onehot))
    batched = probe.predict(xv)
    stopped_early = 0
    for k, member in enumerate(members):
        model, ref = train_sequential(member, x, y, xv, _scorer(onehot), False, st)
        with torch.no_grad():
            probs = torch.softmax(model(torch.as_tensor(xv, dtype=torch.float64)), -1).numpy()
        assert results[k].history == ref.history
        assert results[k].best_epoch == ref.best_epoch
        assert results[k].epochs_run == ref.epochs_run
        np.testing.assert_allclose(batched[k], probs, atol=1e-6)
        stopped_early += ref.epochs_run < st.max_epochs
    assert stopped_early >= 1  # early stopping was exercised by at least one member
    # Members differ from each other (the comparison is not trivially passing).
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_batched_equals_sequential_multilabel_float32():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, x[:, 2] < 0], 1).astype(np.float32)
    xv = rng.normal(size=(50, 8)).astype(np.float32)
    st = TrainSettings(max_epochs=6, batch_size=50, patience=5, check_every=3)
    members = [Member(ProbeConfig(1, 16, 0.1, 1e-3, "xavier_uniform"), s) for s in (7, 8)]
    probe = BatchedProbe(members, 8, 3, multilabel=True, settings=st)
    probe.fit(x, y, xv, lambda p: (float(-np.abs(p - 0.5).mean()), None))
    model, _ = train_sequential(
        members[1], x, y, xv, lambda p: (float(-np.abs(p - 0.5).mean()), None), True, st
    )
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.as_tensor(xv))).numpy()
    # float32: the hidden bias before BatchNorm picks up Adam-amplified rounding noise.
    np.testing.assert_allclose(probe.predict(xv)[1], probs, atol=5e-3)


def test_member_is_independent_of_its_batch():
    x, y, xv, onehot = _data(1)
    st = TrainSettings(max_epochs=9, batch_size=64, patience=20, dtype="float64", shuffle=True)
    m = Member(ProbeConfig(1, 32, 0.25, 1e-3), 42)
    alone = BatchedProbe([m], 16, 3, False, st)
    alone.fit(x, y, xv, _scorer(onehot))
    crowd = BatchedProbe([Member(ProbeConfig(1, 32, 0.1, 3e-3), 1), m], 16, 3, False, st)
    crowd.fit(x, y, xv, _scorer(onehot))
    np.testing.assert_allclose(alone.predict(xv)[0], crowd.predict(xv)[1], atol=1e-9)


def test_early_stopping_and_best_checkpoint():
    x, y, xv, onehot = _data(2)
    st = TrainSettings(max_epochs=300, batch_size=64, patience=2, check_every=3)
    # A score that peaks at the 2nd check then falls: stop after 2 worse checks, keep check 2.
    calls = {"n": 0}

    def score(p):
        calls["n"] += 1
        return [0.1, 0.5, 0.4, 0.3, 0.2, 0.1][min(calls["n"] - 1, 5)], calls["n"]

    probe = BatchedProbe([Member(ProbeConfig(1, 8, 0.1, 1e-3), 0)], 16, 3, False, st)
    (res,) = probe.fit(x, y, xv, score)
    assert res.best_epoch == 6 and res.best_score == 0.5 and res.best_aux == 2
    assert res.epochs_run == 12 and len(res.history) == 4
    # The kept weights are those of epoch 6, not the last ones.
    st6 = TrainSettings(max_epochs=6, batch_size=64, patience=2, check_every=3)
    probe6 = BatchedProbe([Member(ProbeConfig(1, 8, 0.1, 1e-3), 0)], 16, 3, False, st6)
    probe6.fit(x, y, xv, lambda p: (0.0, None))  # best = first check (epoch 3)...
    probe6b = BatchedProbe([Member(ProbeConfig(1, 8, 0.1, 1e-3), 0)], 16, 3, False, st6)
    up = iter([0.0, 1.0])
    probe6b.fit(x, y, xv, lambda p: (next(up), None))  # ... or the 2nd (epoch 6)
    np.testing.assert_allclose(probe.predict(xv), probe6b.predict(xv), atol=1e-6)
    assert np.abs(probe.predict(xv) - probe6.predict(xv)).max() > 1e-6


def test_learns_separable_data():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 32)) * 3
    y = np.arange(400) % 4
    x = (centres[y] + rng.normal(size=(400, 32))).astype(np.float32)
    yv = np.arange(100) % 4
    xv = (centres[yv] + rng.normal(size=(100, 32))).astype(np.float32)
    st = TrainSettings(max_epochs=30, batch_size=128, patience=20)
    probe = BatchedProbe(
        [Member(ProbeConfig(1, 64, 0.1, 3e-3), s) for s in range(3)], 32, 4, False, st
    )
    res = probe.fit(x, y, xv, _scorer(np.eye(4)[yv]))
    assert min(r.best_score for r in res) > 0.95
