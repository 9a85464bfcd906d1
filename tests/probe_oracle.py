"""Test oracle of the batched probe: one member at a time with stock torch modules.

`train_sequential` trains one `Member` as heareval would, with a plain `nn.Sequential` and
`torch.optim.Adam`, drawing its initial weights, data order and dropout masks from the same
per-member random streams as `mwmae.evaluation.probe.BatchedProbe` (`init_member`,
`member_generator`), so the two must agree. Used by the tests and by benchmarks/bench_evaluate.py
and benchmarks/device_check.py (which put this folder on sys.path).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mwmae.evaluation.probe import (
    Member,
    MemberResult,
    TrainSettings,
    init_member,
    member_generator,
)


class _GeneratorDropout(nn.Module):
    """Dropout whose masks come from a given generator (the same draws BatchedProbe makes)."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        r = torch.rand(x.shape, generator=self.generator).to(x)
        return x * (r >= self.p).to(x.dtype) / (1 - self.p)


def build_sequential(
    member: Member, in_dim: int, n_out: int, settings: TrainSettings | None = None
) -> nn.Sequential:
    st = settings or TrainSettings()
    drop_gen = member_generator(member.seed, 2)
    layers: list[nn.Module] = []
    inits = init_member(member, in_dim, n_out)
    for w, b in inits[:-1]:
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers += [
            lin,
            nn.BatchNorm1d(w.shape[0], eps=st.bn_eps, momentum=st.bn_momentum),
            _GeneratorDropout(member.config.dropout, drop_gen),
            nn.ReLU(),
        ]
    w, b = inits[-1]
    out = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    layers.append(out)
    return nn.Sequential(*layers)


def train_sequential(
    member: Member,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    score_fn: Callable[[np.ndarray], tuple[float, Any]],
    multilabel: bool,
    settings: TrainSettings | None = None,
    higher_is_better: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Sequential, MemberResult]:
    """Train one member with nn.Sequential + torch.optim.Adam; returns the best-validation model
    (in eval mode) and its MemberResult. Same protocol and random streams as BatchedProbe."""
    st = settings or TrainSettings()
    n_out = y_train.shape[1] if multilabel else int(np.max(y_train)) + 1
    dt = st.torch_dtype
    model = build_sequential(member, x_train.shape[1], n_out, st).to(device, dt)
    opt = torch.optim.Adam(model.parameters(), lr=member.config.lr, betas=st.betas, eps=st.adam_eps)
    X = torch.as_tensor(np.asarray(x_train)).to(device, dt)
    Y = torch.as_tensor(np.asarray(y_train)).to(device, dt if multilabel else torch.int64)
    Xv = torch.as_tensor(np.asarray(x_valid)).to(device, dt)
    data_gen = member_generator(member.seed, 1)
    res = MemberResult(member)
    best_state, best_key, wait, validated = None, -math.inf, 0, False
    sign = 1.0 if higher_is_better else -1.0
    for epoch in range(st.max_epochs):
        model.train()
        perm = (
            torch.randperm(X.shape[0], generator=data_gen)
            if st.shuffle
            else torch.arange(X.shape[0])
        ).to(device)
        for start in range(0, X.shape[0], st.batch_size):
            idx = perm[start : start + st.batch_size]
            logits = model(X[idx])
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, Y[idx])
            else:
                loss = F.cross_entropy(logits, Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        res.epochs_run = epoch + 1
        last = epoch == st.max_epochs - 1
        if (epoch + 1) % st.check_every and not (last and not validated):
            continue
        validated = True
        model.eval()
        with torch.no_grad():
            logits = model(Xv)
            probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)
        score, aux = score_fn(probs.float().cpu().numpy())
        res.history.append((epoch + 1, float(score)))
        key = sign * score if not math.isnan(score) else -math.inf
        if key > best_key or best_state is None:
            best_key, wait = key, 0
            res.best_score, res.best_epoch, res.best_aux = float(score), epoch + 1, aux
            best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
        if not math.isfinite(score) or wait >= st.patience:
            res.stopped_nonfinite = not math.isfinite(score)
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, res
