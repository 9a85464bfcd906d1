"""Probing a model: per-head attention entropy and PWCCA similarity between head outputs.

Both run the model twice-over in the way the paper's analysis does: the encoder on the
unmasked input (`model.forward_features`), the decoder in a masked pretraining pass (`model(spec)`,
with fixed masking noise so results are reproducible).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mwmae.analysis.pwcca import pwcca_matrix
from mwmae.plotting import as_spec_batch, eval_no_grad, masking_noise, unwrap_model

PARTS = ("encoder", "decoder")


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------
def attention_modules(model: nn.Module, part: str) -> list[nn.Module]:
    """The attention module of every block of the encoder or the decoder, in depth order."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    blocks = model.blocks if part == "encoder" else model.decoder_blocks
    return [block.attn for block in blocks]


def attention_probabilities(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The explicit path: softmax(q k^T / sqrt(hd) + bias) of an attention module for its
    input x (B, N, C) -> (B, H, N, N), exactly zero outside each head's window. The module's
    own kernels never materialise this matrix."""
    q, k, _ = module.split_qkv(x)
    logits = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    bias = module.attention_bias(x.shape[1], x.device, q.dtype)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


@contextmanager
def capture_attention(modules: Sequence[nn.Module]) -> Iterator[Sequence[nn.Module]]:
    """Record the attention probabilities of `modules` while active.

    A forward pre-hook on each module computes `attention_probabilities` of its input and
    stores it as `module.last_attention` (read it in a forward hook or after the call);
    `module.capture` says whether capture is on. On exit, even after an error, the hooks are
    removed, the stored probabilities dropped and the flag restored, so the model runs its
    fast kernels with nothing extra."""

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        with torch.no_grad():
            module.last_attention = attention_probabilities(module, args[0]).detach()

    previous = [bool(getattr(m, "capture", False)) for m in modules]
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_pre_hook(record))
            m.capture = True
        yield modules
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(modules, previous, strict=True):
            m.capture = flag
            m.last_attention = None


def _run_part(
    model: nn.Module,
    spec: torch.Tensor,
    part: str,
    noise: torch.Tensor,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> None:
    """Run the encoder (unmasked) or the full masked pass in chunks of `batch_size` clips."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, spec.shape[0], batch_size):
        chunk = spec[start : start + batch_size]
        if part == "encoder":
            model.forward_features(chunk)
        else:
            model(chunk, noise=noise[start : start + batch_size])
        if on_batch is not None:
            on_batch()


def _effective_window(window: int, seq_len: int) -> int:
    """Keys one query can attend to: the window, or the whole sequence for global heads."""
    return window if 0 < window < seq_len else seq_len


class HeadLabel(NamedTuple):
    """Position and window of one attention head (window 0 = global)."""

    layer: int
    head: int
    window: int

    def short(self) -> str:
        return "g" if self.window == 0 else str(self.window)


# --------------------------------------------------------------------------------------------
# Attention entropy
# --------------------------------------------------------------------------------------------
@dataclass
class AttentionEntropy:
    """Attention entropy of every head of one part (encoder or decoder) of a model.

    Entropies are in nats, H = -sum_k p_k ln p_k over a query's attention distribution.
    `normalized` divides by ln(effective window), the most a head of that window can reach
    (1 = uniform over its window), which puts windowed and global heads on one scale.
    """

    part: str
    window_sizes: np.ndarray  # (layers, heads) int, as configured (0 = global)
    effective_windows: np.ndarray  # (layers, heads) int, keys per query (seq_len for global)
    mean: np.ndarray  # (layers, heads) mean over queries and samples, nats
    normalized: np.ndarray  # (layers, heads) mean / ln(effective window)
    per_query: np.ndarray  # (layers, heads, samples * queries) float32, nats
    seq_len: int
    num_samples: int

    @property
    def num_layers(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.mean.shape[1])

    def labels(self) -> list[HeadLabel]:
        return [
            HeadLabel(layer, head, int(self.window_sizes[layer, head]))
            for layer in range(self.num_layers)
            for head in range(self.num_heads)
        ]

    def layer_distribution(self, layer: int, normalized: bool = False) -> np.ndarray:
        """All per-query entropies of one layer, pooled over heads (what the violins show)."""
        values = self.per_query[layer]
        if normalized:
            values = values / np.log(self.effective_windows[layer])[:, None]
        return values.reshape(-1)

    def summary(self, normalized: bool = False) -> list[dict[str, float]]:
        """Per layer: mean, std and quantiles of the pooled per-query entropies."""
        out = []
        for layer in range(self.num_layers):
            v = self.layer_distribution(layer, normalized).astype(np.float64)
            q = np.quantile(v, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
            out.append(
                {
                    "mean": float(v.mean()),
                    "std": float(v.std()),
                    "min": float(q[0]),
                    "q05": float(q[1]),
                    "q25": float(q[2]),
                    "median": float(q[3]),
                    "q75": float(q[4]),
                    "q95": float(q[5]),
                    "max": float(q[6]),
                }
            )
        return out

    def to_dict(self, include_per_query: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "part": self.part,
            "seq_len": self.seq_len,
            "num_samples": self.num_samples,
            "window_sizes": self.window_sizes.tolist(),
            "effective_windows": self.effective_windows.tolist(),
            "mean_entropy": self.mean.tolist(),
            "normalized_entropy": self.normalized.tolist(),
            "layer_summary": self.summary(),
            "layer_summary_normalized": self.summary(normalized=True),
        }
        if include_per_query:
            d["per_query"] = self.per_query.tolist()
        return d


def _attention_entropy_part(
    model: nn.Module,
    spec: torch.Tensor,
    part: str,
    noise: torch.Tensor,
    batch_size: int,
    on_batch: Callable[[], None] | None,
) -> AttentionEntropy:
    modules = attention_modules(model, part)
    per_layer: list[list[torch.Tensor]] = [[] for _ in modules]
    seq_lens: set[int] = set()

    def make_hook(layer: int):
        def hook(module: nn.Module, _args: Any, _output: Any) -> None:
            p = module.last_attention  # (B, H, N, N), zero outside each head's window
            if p is None:
                raise RuntimeError(f"{part} layer {layer}: capture is on but no attention stored")
            seq_lens.add(int(p.shape[-1]))
            # entr(p) = -p ln p with entr(0) = 0: positions outside a window add nothing.
            ent = torch.special.entr(p.float()).sum(-1)  # (B, H, N)
            per_layer[layer].append(ent.transpose(0, 1).reshape(p.shape[1], -1).cpu())
            module.last_attention = None  # free (B, H, N, N) before the next layer runs

        return hook

    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        with capture_attention(modules):
            _run_part(model, spec, part, noise, batch_size, on_batch)
    finally:
        for h in handles:
            h.remove()
    if len(seq_lens) != 1:
        raise RuntimeError(f"{part}: inconsistent attention sizes {sorted(seq_lens)}")
    seq_len = seq_lens.pop()
    per_query = torch.stack([torch.cat(chunks, dim=1) for chunks in per_layer]).numpy()
    windows = np.array([m.window_sizes for m in modules], dtype=np.int64)
    effective = np.vectorize(_effective_window)(windows, seq_len).astype(np.int64)
    mean = per_query.astype(np.float64).mean(axis=-1)
    return AttentionEntropy(
        part=part,
        window_sizes=windows,
        effective_windows=effective,
        mean=mean,
        normalized=mean / np.log(effective),
        per_query=per_query.astype(np.float32),
        seq_len=seq_len,
        num_samples=int(spec.shape[0]),
    )


def attention_entropy(
    model: nn.Module,
    spec_batch: torch.Tensor,
    part: str = "encoder",
    noise: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
    on_batch: Callable[[], None] | None = None,
) -> AttentionEntropy | dict[str, AttentionEntropy]:
    """Per layer and head, the mean entropy of the attention distributions.

    spec_batch: normalised log-mel (B, [1,] T, F). part: "encoder" (unmasked input through
    `forward_features`), "decoder" (masked pretraining pass, masking from `noise` or `seed`) or
    "both" (returns {"encoder": ..., "decoder": ...}). Clips run `batch_size` at a time so
    the captured (B, heads, N, N) probabilities stay small; `on_batch` is called after each.
    """
    model = unwrap_model(model)
    parts = PARTS if part == "both" else (part,)
    if any(p not in PARTS for p in parts):
        raise ValueError(f"part must be 'encoder', 'decoder' or 'both', got {part!r}")
    spec = as_spec_batch(model, spec_batch)
    mask_noise = masking_noise(model, spec.shape[0], noise, seed)
    with eval_no_grad(model):
        results = {
            p: _attention_entropy_part(model, spec, p, mask_noise, batch_size, on_batch)
            for p in parts
        }
    return results if part == "both" else results[part]


# --------------------------------------------------------------------------------------------
# Head outputs and their PWCCA similarity
# --------------------------------------------------------------------------------------------
def head_outputs(
    model: nn.Module,
    spec_batch: torch.Tensor,
    part: str = "decoder",
    noise: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
    on_batch: Callable[[], None] | None = None,
) -> tuple[list[np.ndarray], list[HeadLabel]]:
    """Each head's attention-weighted values, (samples * tokens, head_dim) float32, ordered by
    layer then head: channel slice [h * hd, (h + 1) * hd) of the input to `attn.proj`."""
    model = unwrap_model(model)
    modules = attention_modules(model, part)
    spec = as_spec_batch(model, spec_batch)
    mask_noise = masking_noise(model, spec.shape[0], noise, seed)
    captured: list[list[torch.Tensor]] = [[] for _ in modules]

    def make_hook(layer: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]  # (B, N, heads * hd): heads concatenated before the output projection
            captured[layer].append(x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float32))

        return hook

    handles = [m.proj.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(modules)]
    try:
        with eval_no_grad(model):
            _run_part(model, spec, part, mask_noise, batch_size, on_batch)
    finally:
        for h in handles:
            h.remove()
    outputs: list[np.ndarray] = []
    labels: list[HeadLabel] = []
    for layer, module in enumerate(modules):
        x = torch.cat(captured[layer]).numpy()
        hd = module.head_dim
        for head, window in enumerate(module.window_sizes):
            outputs.append(x[:, head * hd : (head + 1) * hd])
            labels.append(HeadLabel(layer, head, int(window)))
    return outputs, labels


def head_similarity(
    model: nn.Module,
    spec_batch: torch.Tensor,
    part: str = "decoder",
    noise: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 8,
    keep_variance: float = 0.99,
    on_batch: Callable[[], None] | None = None,
) -> tuple[np.ndarray, list[HeadLabel]]:
    """PWCCA between the outputs of every pair of heads of the encoder or the decoder.

    Returns (matrix (K, K), labels) with K = layers * heads ordered by layer then head, and
    matrix[i, j] = pwcca(head_i, head_j): weighted by head i (the row), so the matrix is not
    symmetric. Samples are the tokens of all clips (encoder: unmasked input; decoder: masked
    pass with noise from `noise` or `seed`).
    """
    outputs, labels = head_outputs(model, spec_batch, part, noise, seed, batch_size, on_batch)
    return pwcca_matrix(outputs, keep_variance), labels


def window_similarity_summary(matrix: np.ndarray, labels: Sequence[HeadLabel]) -> dict[str, Any]:
    """The paper's PWCCA reading in numbers: mean similarity between heads of DIFFERENT
    layers with the same window size vs with different window sizes (per window too).
    Entries are None where a group is empty (e.g. "different" when all heads are global)."""

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    same: list[float] = []
    different: list[float] = []
    per_window: dict[int, dict[str, list[float]]] = {}
    for i, a in enumerate(labels):
        group = per_window.setdefault(a.window, {"same": [], "different": []})
        for j, b in enumerate(labels):
            if a.layer == b.layer:
                continue  # within a layer, heads share their input; compare across depth only
            key = "same" if a.window == b.window else "different"
            (same if key == "same" else different).append(matrix[i, j])
            group[key].append(matrix[i, j])
    return {
        "cross_layer_same_window": mean(same),
        "cross_layer_different_window": mean(different),
        "per_window": {
            str(w): {"same_window": mean(g["same"]), "different_window": mean(g["different"])}
            for w, g in sorted(per_window.items(), key=lambda kv: (kv[0] == 0, kv[0]))
        },
    }
