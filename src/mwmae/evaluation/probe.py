"""The HEAR downstream probe: shallow MLPs on frozen embeddings, all members trained at once.

Each member (one seed x one hyper-parameter point) is the MLP heareval builds::

    [Linear(in, 1024) -> BatchNorm1d -> Dropout(p) -> ReLU] x hidden_layers -> Linear(., C)

with xavier init (gain 1 on the first layer, the ReLU gain after a ReLU; biases keep torch's
default uniform(+-1/sqrt(fan_in))), Adam (0.9, 0.999, no weight decay), batches of 1024,
validation every 3 epochs, early stopping after `patience` validation checks without a strict
improvement of the first metric, and the weights of the best validation check kept (heareval's
ModelCheckpoint). Softmax cross-entropy for multiclass, sigmoid BCE for multilabel.

`BatchedProbe` holds S members as stacked weights (S, in, out) and runs them with batched
matmuls: per-member BatchNorm statistics, per-member dropout masks, per-member learning rates,
per-member shuffling (if enabled) and per-member early stopping (a stopped member is removed
from the live tensors, so it costs nothing afterwards). Every random draw of a member comes from
that member's own generators, so a member's trajectory is the same whether it trains alone or
with others, and equals `train_sequential` (a plain `nn.Sequential` + `torch.optim.Adam` loop)
given the same seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INITS = ("xavier_normal", "xavier_uniform")


@dataclass(frozen=True)
class ProbeConfig:
    """One hyper-parameter point of the grid."""

    hidden_layers: int = 1
    hidden_dim: int = 1024
    dropout: float = 0.1
    lr: float = 1e-4
    init: str = "xavier_normal"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.hidden_layers < 0:
            raise ValueError("hidden_layers must be >= 0")


def preset_grid(preset: str) -> list[ProbeConfig]:
    """The hyper-parameter grid of a preset.

    paper: the MW-MAE authors' modified hear-eval-kit (1 hidden layer of 1024, dropout
           {0.1, 0.25}, lr 1e-4, xavier_normal; 2 points).
    hear:  upstream hear-eval-kit 2021.1.3 (hidden layers {1, 2}, dropout 0.1, lr {3.2e-3, 1e-3,
           3.2e-4, 1e-4}, init {xavier_uniform, xavier_normal}; 16 points, of which heareval
           runs 8 sampled ones by default: see `grid_points` in `run.evaluate_embeddings`).
    """
    if preset == "paper":
        return [ProbeConfig(1, 1024, d, 1e-4, "xavier_normal") for d in (0.1, 0.25)]
    if preset == "hear":
        return [
            ProbeConfig(h, 1024, 0.1, lr, init)
            for h, lr, init in itertools.product(
                (1, 2), (3.2e-3, 1e-3, 3.2e-4, 1e-4), ("xavier_uniform", "xavier_normal")
            )
        ]
    raise ValueError(f"unknown preset {preset!r} (paper, hear)")


@dataclass(frozen=True)
class TrainSettings:
    max_epochs: int = 500
    check_every: int = 3  # validation every n epochs (Lightning's check_val_every_n_epoch)
    patience: int = 20  # validation checks, not epochs (Lightning's EarlyStopping)
    batch_size: int = 1024
    # heareval 2021.1.3 never shuffles training rows: its loader shuffles only when the split
    # name == "train", but it is always given a list of split names. So by default each epoch
    # walks the training rows in stored order, and seeds differ by init and dropout only.
    shuffle: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    eval_chunk: int = 2048  # rows per inference chunk (activations: members x rows x hidden)
    # float64 makes batched and sequential runs agree to ~1e-10: in float32 the hidden biases
    # (cancelled by BatchNorm, so their true gradient is 0) get rounding-noise gradients that Adam
    # normalises into steps of size ~lr, which moves the running means by ~1e-3 between runs.
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]


@dataclass(frozen=True)
class Member:
    """One trained network: a config and the seed of its three random streams."""

    config: ProbeConfig
    seed: int


def _generator(seed: int, stream: int) -> torch.Generator:
    # Independent streams (init, data order, dropout) derived from the member seed.
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def init_member(member: Member, in_dim: int, n_out: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight (out, in), bias (out,)) per linear layer, drawn as heareval initialises them."""
    g = _generator(member.seed, 0)
    cfg = member.config
    dims = [in_dim] + [cfg.hidden_dim] * cfg.hidden_layers + [n_out]
    init = nn.init.xavier_normal_ if cfg.init == "xavier_normal" else nn.init.xavier_uniform_
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        w = torch.empty(b, a)
        init(w, gain=nn.init.calculate_gain("linear" if i == 0 else "relu"), generator=g)
        bound = 1.0 / math.sqrt(a)
        bias = torch.empty(b).uniform_(-bound, bound, generator=g)
        layers.append((w, bias))
    return layers


def _linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-member affine map as one batched matmul: x (B, in) shared by all members or
    (S, B, in) per member, W (S, in, out), b (S, 1, out) -> (S, B, out)."""
    if x.ndim == 2:
        x = x.expand(W.shape[0], *x.shape)
    return torch.baddbmm(b, x, W)


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-member mean loss, summed over members (so each member gets its own gradient)."""
    if multilabel:
        return (
            F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=(-2, -1)).sum()
        )
    S, B, C = logits.shape
    return (
        F.cross_entropy(logits.reshape(S * B, C), y.reshape(S * B), reduction="none")
        .view(S, B)
        .mean(1)
        .sum()
    )


def _activate(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)


@dataclass
class MemberResult:
    member: Member
    best_score: float = float("nan")
    best_epoch: int = -1
    best_aux: Any = None
    epochs_run: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)


class BatchedProbe:
    """S MLPs of the same depth trained as one batched model (see the module docstring)."""

    def __init__(
        self,
        members: Sequence[Member],
        in_dim: int,
        n_out: int,
        multilabel: bool,
        settings: TrainSettings | None = None,
        device: str | torch.device = "cpu",
    ):
        depths = {m.config.hidden_layers for m in members}
        hidden = {m.config.hidden_dim for m in members}
        if len(depths) != 1 or len(hidden) != 1:
            raise ValueError("a BatchedProbe needs members of one depth and hidden size")
        self.members = list(members)
        self.S = len(members)
        self.multilabel = multilabel
        self.settings = settings or TrainSettings()
        self.device = torch.device(device)
        self.n_hidden = depths.pop()
        inits = [init_member(m, in_dim, n_out) for m in members]
        dev, dt = self.device, self.settings.torch_dtype
        # params: [W0, b0, gamma0, beta0, ..., W_out, b_out]; W (S, in, out), b (S, 1, out)
        self.params: list[torch.Tensor] = []
        for layer in range(self.n_hidden + 1):
            W = torch.stack([ini[layer][0].t() for ini in inits]).to(dev, dt)
            b = torch.stack([ini[layer][1] for ini in inits])[:, None, :].to(dev, dt)
            self.params += [W, b]
            if layer < self.n_hidden:
                H = W.shape[-1]
                self.params += [
                    torch.ones(self.S, 1, H, device=dev, dtype=dt),
                    torch.zeros(self.S, 1, H, device=dev, dtype=dt),
                ]
        H = hidden.pop()
        self.running_mean = [
            torch.zeros(self.S, 1, H, device=dev, dtype=dt) for _ in range(self.n_hidden)
        ]
        self.running_var = [
            torch.ones(self.S, 1, H, device=dev, dtype=dt) for _ in range(self.n_hidden)
        ]
        self.p = torch.tensor([m.config.dropout for m in members], device=dev, dtype=dt)
        self.lr = torch.tensor([m.config.lr for m in members], device=dev, dtype=dt)

    # -- forward ------------------------------------------------------------------------------
    def _forward(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        running: tuple,
        train: bool,
        dropout_gens: Sequence[torch.Generator] = (),
        p: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, in) shared by all members or (S, B, in) per member -> logits (S, B, C)."""
        st = self.settings
        h = x
        for layer in range(self.n_hidden):
            W, b, gamma, beta = params[4 * layer : 4 * layer + 4]
            h = _linear(h, W, b)
            rm, rv = running[0][layer], running[1][layer]
            # Per-member BatchNorm as ONE fused F.batch_norm over (B, S * H): the members'
            # units are just separate channels (batch statistics over rows, biased variance to
            # normalise, unbiased for the running estimate, updated in place through the views).
            S, B, Hd = h.shape
            h = F.batch_norm(
                h.transpose(0, 1).reshape(B, S * Hd),
                rm.view(-1),
                rv.view(-1),
                gamma.reshape(-1),
                beta.reshape(-1),
                training=train,
                momentum=st.bn_momentum,
                eps=st.bn_eps,
            )
            h = h.view(B, S, Hd).transpose(0, 1)
            if train:
                assert p is not None
                # One draw per member from its own generator: independent of the batch's members.
                r = torch.stack([torch.rand(B, Hd, generator=g) for g in dropout_gens]).to(h)
                h = h * ((r >= p[:, None, None]) * (1 / (1 - p))[:, None, None])
            h = torch.relu(h)
        W, b = params[-2], params[-1]
        return _linear(h, W, b)

    @torch.no_grad()
    def _predict_with(
        self, params: Sequence[torch.Tensor], running: tuple, x: torch.Tensor
    ) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], self.settings.eval_chunk):
            chunk = x[i : i + self.settings.eval_chunk]
            outs.append(
                _activate(self._forward(params, chunk, running, train=False), self.multilabel)
            )
        return torch.cat(outs, dim=1)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities (S, N, C) of every member's kept (best-validation) weights."""
        x = torch.as_tensor(np.asarray(x)).to(self.device, self.settings.torch_dtype)
        return (
            self._predict_with(self.params, (self.running_mean, self.running_var), x)
            .float()
            .cpu()
            .numpy()
        )

    # -- training -----------------------------------------------------------------------------
    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_valid: np.ndarray,
        score_fn: Callable[[np.ndarray], tuple[float, Any]],
        higher_is_better: bool = True,
        progress: bool = False,
        desc: str = "probe",
    ) -> list[MemberResult]:
        """Train all members; afterwards `self.params` hold each member's best weights.

        y_train: (N,) class indices (multiclass) or (N, C) multi-hot (multilabel).
        score_fn(probabilities (N_valid, C)) -> (score, aux), called per member per check;
        aux (e.g. the chosen event post-processing) is kept for the best check.
        """
        from tqdm.auto import tqdm

        st, dev, dt = self.settings, self.device, self.settings.torch_dtype
        X = torch.as_tensor(np.asarray(x_train)).to(dev, dt)
        Y = torch.as_tensor(np.asarray(y_train)).to(dev, dt if self.multilabel else torch.int64)
        Xv = torch.as_tensor(np.asarray(x_valid)).to(dev, dt)
        N = X.shape[0]
        sign = 1.0 if higher_is_better else -1.0

        results = [MemberResult(m) for m in self.members]
        live = list(range(self.S))  # live position -> member index
        params = [t.clone().requires_grad_() for t in self.params]
        running = ([t.clone() for t in self.running_mean], [t.clone() for t in self.running_var])
        m_state = [torch.zeros_like(t) for t in params]
        v_state = [torch.zeros_like(t) for t in params]
        p, lr = self.p.clone(), self.lr.clone()
        data_gens = [_generator(m.seed, 1) for m in self.members]
        drop_gens = [_generator(m.seed, 2) for m in self.members]
        best_key = [-math.inf] * self.S
        wait = [0] * self.S
        b1, b2 = st.betas
        step = 0
        validated = False

        bar = tqdm(range(st.max_epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            if st.shuffle:
                perms = torch.stack([torch.randperm(N, generator=data_gens[i]) for i in live]).to(
                    dev
                )
            for start in range(0, N, st.batch_size):
                stop = min(start + st.batch_size, N)
                if stop - start < 2:
                    continue  # BatchNorm cannot train on one row (train_sequential agrees)
                if st.shuffle:  # per-member rows: (S, B, in)
                    idx = perms[:, start:stop]
                    xb, yb = X[idx], Y[idx]
                else:  # the same rows for all members: (B, in), broadcast in the matmul
                    xb = X[start:stop]
                    yb = Y[start:stop].expand(len(live), *Y[start:stop].shape)
                logits = self._forward(params, xb, running, True, [drop_gens[i] for i in live], p)
                loss = _loss(logits, yb, self.multilabel)
                grads = torch.autograd.grad(loss, params)
                step += 1
                bc1, bc2 = 1 - b1**step, 1 - b2**step
                with torch.no_grad():
                    for t, g, m, v in zip(params, grads, m_state, v_state, strict=True):
                        # torch.optim.Adam's update with a per-member learning rate:
                        # t -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), in place.
                        m.mul_(b1).add_(g, alpha=1 - b1)
                        v.mul_(b2).addcmul_(g, g, value=1 - b2)
                        denom = v.sqrt().div_(math.sqrt(bc2)).add_(st.adam_eps)
                        denom.div_((-lr / bc1).view(-1, *([1] * (t.ndim - 1))))
                        t.addcdiv_(m, denom)
            for i in live:
                results[i].epochs_run = epoch + 1

            last = epoch == st.max_epochs - 1
            if (epoch + 1) % st.check_every and not (last and not validated):
                continue
            validated = True
            probs = self._predict_with(params, running, Xv).float().cpu().numpy()
            stopped = []
            for pos, i in enumerate(live):
                score, aux = score_fn(probs[pos])
                results[i].history.append((epoch + 1, float(score)))
                key = sign * score if not math.isnan(score) else -math.inf
                if key > best_key[i] or results[i].best_epoch < 0:
                    # Strict improvement, as Lightning's ModelCheckpoint/EarlyStopping (mode max).
                    best_key[i], wait[i] = key, 0
                    results[i].best_score, results[i].best_epoch = float(score), epoch + 1
                    results[i].best_aux = aux
                    with torch.no_grad():
                        for dst, src in zip(self.params, params, strict=True):
                            dst[i] = src[pos]
                        for dst_l, src_l in zip(
                            self.running_mean + self.running_var,
                            running[0] + running[1],
                            strict=True,
                        ):
                            dst_l[i] = src_l[pos]
                else:
                    wait[i] += 1
                    if wait[i] >= st.patience:
                        stopped.append(pos)
            if stopped:
                keep = [pos for pos in range(len(live)) if pos not in stopped]
                if not keep:
                    break
                kt = torch.tensor(keep, device=dev)
                params = [t.detach()[kt].requires_grad_() for t in params]
                running = ([t[kt] for t in running[0]], [t[kt] for t in running[1]])
                m_state = [t[kt] for t in m_state]
                v_state = [t[kt] for t in v_state]
                p, lr = p[kt], lr[kt]
                live = [live[pos] for pos in keep]
            bar.set_postfix(active=len(live))
        bar.close()
        return results


# --------------------------------------------------------------------------------------------
# Reference: one member at a time with stock torch modules (tests and benchmarks)
# --------------------------------------------------------------------------------------------
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
    drop_gen = _generator(member.seed, 2)
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
    import copy

    st = settings or TrainSettings()
    n_out = y_train.shape[1] if multilabel else int(np.max(y_train)) + 1
    dt = st.torch_dtype
    model = build_sequential(member, x_train.shape[1], n_out, st).to(device, dt)
    opt = torch.optim.Adam(model.parameters(), lr=member.config.lr, betas=st.betas, eps=st.adam_eps)
    X = torch.as_tensor(np.asarray(x_train)).to(device, dt)
    Y = torch.as_tensor(np.asarray(y_train)).to(device, dt if multilabel else torch.int64)
    Xv = torch.as_tensor(np.asarray(x_valid)).to(device, dt)
    data_gen = _generator(member.seed, 1)
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
            if len(idx) < 2:
                continue
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
            if wait >= st.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, res
