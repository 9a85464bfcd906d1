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
with others, and equals a plain `nn.Sequential` + `torch.optim.Adam` loop given the same seeds
(the tests' oracle, tests/probe_oracle.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
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
    # Training knobs a task's task_specific_param_grid may set per grid point (heareval keeps
    # them in the same grid); None = the run's TrainSettings.
    patience: int | None = None
    max_epochs: int | None = None
    check_every: int | None = None
    batch_size: int | None = None

    def settings(self, base: TrainSettings) -> TrainSettings:
        """`base` with this point's training knobs applied."""
        own = {
            k: getattr(self, k)
            for k in ("patience", "max_epochs", "check_every", "batch_size")
            if getattr(self, k) is not None
        }
        return dataclasses.replace(base, **own) if own else base

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {self.init!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if self.hidden_layers < 0:
            raise ValueError("hidden_layers must be >= 0")


# heareval's grid key -> ProbeConfig field. Keys heareval knows but this probe does not vary
# (hidden_norm, norm_after_activation, embedding_norm, optim) may only keep heareval's default.
KIT_KEYS = {
    "hidden_layers": "hidden_layers",
    "hidden_dim": "hidden_dim",
    "dropout": "dropout",
    "lr": "lr",
    "initialization": "init",
    "patience": "patience",
    "max_epochs": "max_epochs",
    "check_val_every_n_epoch": "check_every",
    "batch_size": "batch_size",
}
KIT_FIXED_KEYS = ("hidden_norm", "norm_after_activation", "embedding_norm", "optim")
KIT_SHUFFLE_SEED = 42  # heareval: seed_everything(42) then random.shuffle(grid)

# The varying part of each preset's grid, with heareval's key names.
PRESET_GRIDS: dict[str, dict[str, list[Any]]] = {
    # upstream hear-eval-kit 2021.1.3 PARAM_GRID ("default")
    "hear": {
        "hidden_layers": [1, 2],
        "hidden_dim": [1024],
        "dropout": [0.1],
        "lr": [3.2e-3, 1e-3, 3.2e-4, 1e-4],
        "initialization": ["xavier_uniform", "xavier_normal"],
    },
    # the MW-MAE authors' modified kit
    "paper": {
        "hidden_layers": [1],
        "hidden_dim": [1024],
        "dropout": [0.1, 0.25],
        "lr": [1e-4],
        "initialization": ["xavier_normal"],
    },
}


def _kit_value(key: str, value: Any, where: str) -> Any:
    from mwmae.errors import ConfigError

    if key == "initialization":
        name = str(value).removeprefix("torch.nn.init.").removesuffix("_")
        if name not in INITS:
            raise ConfigError(f"{where}: initialization {value!r} is not one of {INITS}")
        return name
    if key in ("dropout", "lr"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{where}: {key} must be an integer, not {value!r}")
    return int(value)


def kit_grid(
    preset: str, overrides: dict[str, Any] | None = None, where: str = "grid"
) -> list[ProbeConfig]:
    """The grid points in the order heareval trains them: the preset's grid updated with
    `overrides` (heareval's TASK_SPECIFIC_PARAM_GRID / a task's task_specific_param_grid),
    expanded as sklearn's ParameterGrid does (keys sorted, last key fastest), then shuffled with
    Python's `random` seeded 42. Taking the first k points is `--grid-points k` of the kit."""
    from mwmae.errors import ConfigError

    if preset not in PRESET_GRIDS:
        raise ConfigError(f"unknown preset {preset!r} (paper, hear)")
    grid: dict[str, list[Any]] = dict(PRESET_GRIDS[preset])
    for key, values in (overrides or {}).items():
        if key in KIT_FIXED_KEYS:
            raise ConfigError(f"{where}: {key!r} cannot be varied by this probe (heareval default)")
        if key not in KIT_KEYS:
            raise ConfigError(f"{where}: unknown grid key {key!r} (known: {', '.join(KIT_KEYS)})")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where}: {key!r} has no values")
        grid[key] = [_kit_value(key, v, where) for v in values]
    points = _expand(grid)
    random.Random(KIT_SHUFFLE_SEED).shuffle(points)
    return points


def _expand(grid: dict[str, list[Any]]) -> list[ProbeConfig]:
    # sklearn's ParameterGrid order: keys sorted, the product's last key varies fastest.
    keys = sorted(grid)
    return [
        ProbeConfig(**{KIT_KEYS[k]: v for k, v in zip(keys, combo, strict=True)})
        for combo in itertools.product(*(grid[k] for k in keys))
    ]


def preset_grid(preset: str) -> list[ProbeConfig]:
    """A preset's grid points in ParameterGrid order, unshuffled (see `kit_grid` for the order
    heareval trains them in).

    paper: the MW-MAE authors' modified hear-eval-kit (1 hidden layer of 1024, dropout
           {0.1, 0.25}, lr 1e-4, xavier_normal; 2 points).
    hear:  upstream hear-eval-kit 2021.1.3 (hidden layers {1, 2}, dropout 0.1, lr {3.2e-3, 1e-3,
           3.2e-4, 1e-4}, init {xavier_uniform, xavier_normal}; 16 points, of which heareval
           runs 8 by default: `--grid-points 8`).
    """
    from mwmae.errors import ConfigError

    if preset not in PRESET_GRIDS:
        raise ConfigError(f"unknown preset {preset!r} (paper, hear)")
    return _expand(PRESET_GRIDS[preset])


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


def member_generator(seed: int, stream: int) -> torch.Generator:
    """A member's random stream: 0 init, 1 data order, 2 dropout (independent, from its seed)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def init_member(member: Member, in_dim: int, n_out: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight (out, in), bias (out,)) per linear layer, drawn as heareval initialises them."""
    g = member_generator(member.seed, 0)
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
    stopped_nonfinite: bool = False  # a validation score was NaN/inf: the run ended there


def adam_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    state: _TrainState,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """torch.optim.Adam's update (no weight decay) with a per-member learning rate, in place:
    t -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)."""
    b1, b2 = betas
    state.step += 1
    bc1, bc2 = 1 - b1**state.step, 1 - b2**state.step
    with torch.no_grad():
        for k, (t, g, m, v) in enumerate(zip(params, grads, state.m, state.v, strict=True)):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
            denom.div_(_along(-state.lr / bc1, _member_dim(k), t.ndim))
            t.addcdiv_(m, denom)


def _member_dim(k: int) -> int:
    # The first layer's weight is stored (in, S, out) (one matmul for all members); every
    # other tensor has the member axis first.
    return 1 if k == 0 else 0


def _along(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """Per-member values shaped to broadcast along `dim` of an ndim-tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)


@dataclass
class _TrainState:
    """What changes while training: live members' tensors and Adam moments, per-member."""

    params: list[torch.Tensor]
    running: tuple[list[torch.Tensor], list[torch.Tensor]]
    m: list[torch.Tensor]
    v: list[torch.Tensor]
    p: torch.Tensor
    lr: torch.Tensor
    live: list[int]  # live position -> member index
    step: int = 0

    def keep(self, positions: list[int]) -> None:
        """Drop every live member not at `positions` (stopped members cost nothing after)."""
        kt = torch.tensor(positions, device=self.p.device)

        def sel(ts: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.detach().index_select(_member_dim(k), kt) for k, t in enumerate(ts)]

        self.params = [t.requires_grad_() for t in sel(self.params)]
        self.m, self.v = sel(self.m), sel(self.v)
        self.running = (
            [t[kt] for t in self.running[0]],
            [t[kt] for t in self.running[1]],
        )
        self.p, self.lr = self.p[kt], self.lr[kt]
        self.live = [self.live[pos] for pos in positions]


class BatchedProbe:
    """S MLPs of the same shape and training settings trained as one batched model (see the
    module docstring). The first layer of all members is ONE matrix (in, S * out)."""

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
        # params: [W0, b0, gamma0, beta0, ..., W_out, b_out]; W0 (in, S, out) and the other
        # W (S, in, out), b (S, 1, out)
        self.params: list[torch.Tensor] = []
        for layer in range(self.n_hidden + 1):
            W = torch.stack([ini[layer][0].t() for ini in inits]).to(dev, dt)
            b = torch.stack([ini[layer][1] for ini in inits])[:, None, :].to(dev, dt)
            self.params += [W.transpose(0, 1).contiguous() if layer == 0 else W, b]
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
    @staticmethod
    def _first_linear(x: torch.Tensor, W0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        """x (B, in) shared by all members: one (B, in) @ (in, S * out) product; x (S, B, in)
        (per-member rows): a batched product. -> (S, B, out)."""
        n_in, S, n_out = W0.shape
        if x.ndim == 2:
            h = torch.addmm(b0.reshape(1, S * n_out), x, W0.reshape(n_in, S * n_out))
            return h.view(x.shape[0], S, n_out).transpose(0, 1)
        return torch.baddbmm(b0, x, W0.transpose(0, 1))

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
            h = self._first_linear(h, W, b) if layer == 0 else torch.baddbmm(b, h, W)
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
        return self._first_linear(h, W, b) if self.n_hidden == 0 else torch.baddbmm(b, h, W)

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
    def _initial_state(self) -> _TrainState:
        params = [t.clone().requires_grad_() for t in self.params]
        return _TrainState(
            params=params,
            running=(
                [t.clone() for t in self.running_mean],
                [t.clone() for t in self.running_var],
            ),
            m=[torch.zeros_like(t) for t in params],
            v=[torch.zeros_like(t) for t in params],
            p=self.p.clone(),
            lr=self.lr.clone(),
            live=list(range(self.S)),
        )

    def _check_batches(self, n: int) -> None:
        # heareval's BatchNorm1d raises on a training batch of one row; say so up front
        # instead of training on it or skipping it silently.
        from mwmae.errors import InputError

        bs = self.settings.batch_size
        if self.n_hidden and n % bs == 1:
            raise InputError(
                f"{n} training rows leave a last batch of one row (batch_size {bs}); BatchNorm "
                "cannot train on it (heareval's probe fails there too): change batch_size"
            )

    def _train_epoch(
        self, state: _TrainState, X: torch.Tensor, Y: torch.Tensor, gens: tuple[list, list]
    ) -> None:
        st, N = self.settings, X.shape[0]
        data_gens, drop_gens = gens
        if st.shuffle:
            perms = torch.stack([torch.randperm(N, generator=data_gens[i]) for i in state.live])
            perms = perms.to(X.device)
        for start in range(0, N, st.batch_size):
            stop = min(start + st.batch_size, N)
            if st.shuffle:  # per-member rows: (S, B, in)
                idx = perms[:, start:stop]
                xb, yb = X[idx], Y[idx]
            else:  # the same rows for all members: (B, in), one matmul in the first layer
                xb = X[start:stop]
                yb = Y[start:stop].expand(len(state.live), *Y[start:stop].shape)
            dg = [drop_gens[i] for i in state.live]
            logits = self._forward(state.params, xb, state.running, True, dg, state.p)
            loss = _loss(logits, yb, self.multilabel)
            grads = torch.autograd.grad(loss, state.params)
            adam_step(state.params, grads, state, st.betas, st.adam_eps)

    def _keep_best(self, state: _TrainState, pos: int) -> None:
        i = state.live[pos]
        with torch.no_grad():
            for k, (dst, src) in enumerate(zip(self.params, state.params, strict=True)):
                dst.select(_member_dim(k), i).copy_(src.select(_member_dim(k), pos))
            for dst_l, src_l in zip(
                self.running_mean + self.running_var,
                state.running[0] + state.running[1],
                strict=True,
            ):
                dst_l[i] = src_l[pos]

    def _validate(
        self,
        state: _TrainState,
        epoch: int,
        Xv: torch.Tensor,
        score_fn: Callable[[np.ndarray], tuple[float, Any]],
        sign: float,
        track: tuple[list[MemberResult], list[float], list[int]],
    ) -> list[int]:
        """Score every live member, keep improved weights; returns the positions that stop:
        patience exhausted, or a non-finite score (Lightning's EarlyStopping check_finite)."""
        results, best_key, wait = track
        probs = self._predict_with(state.params, state.running, Xv).float().cpu().numpy()
        stopped = []
        for pos, i in enumerate(state.live):
            score, aux = score_fn(probs[pos])
            results[i].history.append((epoch, float(score)))
            key = sign * score if not math.isnan(score) else -math.inf
            if key > best_key[i] or results[i].best_epoch < 0:
                # Strict improvement, as Lightning's ModelCheckpoint/EarlyStopping; the first
                # check is always kept (ModelCheckpoint saves it even when NaN).
                best_key[i], wait[i] = key, 0
                results[i].best_score, results[i].best_epoch = float(score), epoch
                results[i].best_aux = aux
                self._keep_best(state, pos)
            else:
                wait[i] += 1
            if not math.isfinite(score) or wait[i] >= self.settings.patience:
                results[i].stopped_nonfinite = not math.isfinite(score)
                stopped.append(pos)
        return stopped

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
        from mwmae._progress import progress_bar

        st, dev, dt = self.settings, self.device, self.settings.torch_dtype
        X = torch.as_tensor(np.asarray(x_train)).to(dev, dt)
        Y = torch.as_tensor(np.asarray(y_train)).to(dev, dt if self.multilabel else torch.int64)
        Xv = torch.as_tensor(np.asarray(x_valid)).to(dev, dt)
        self._check_batches(X.shape[0])
        results = [MemberResult(m) for m in self.members]
        track = (results, [-math.inf] * self.S, [0] * self.S)
        gens = (
            [member_generator(m.seed, 1) for m in self.members],
            [member_generator(m.seed, 2) for m in self.members],
        )
        state = self._initial_state()
        validated = False
        bar = progress_bar(
            range(st.max_epochs), desc=desc, unit="epoch", disable=not progress, leave=False
        )
        for epoch in bar:
            self._train_epoch(state, X, Y, gens)
            for i in state.live:
                results[i].epochs_run = epoch + 1
            last = epoch == st.max_epochs - 1
            if (epoch + 1) % st.check_every and not (last and not validated):
                continue
            validated = True
            sign = 1.0 if higher_is_better else -1.0
            stopped = self._validate(state, epoch + 1, Xv, score_fn, sign, track)
            if stopped:
                keep = [pos for pos in range(len(state.live)) if pos not in stopped]
                if not keep:
                    break
                state.keep(keep)
            bar.set_postfix(active=len(state.live))
        bar.close()
        return results
