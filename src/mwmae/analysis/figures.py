"""Figures: reconstructions, attention-entropy distributions, PWCCA head-similarity maps.

Built on `matplotlib.figure.Figure` directly (no pyplot): nothing touches global state or the
interactive backend, figures are freed when dropped, and saving PNGs works headless (Agg).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import nn

from mwmae.analysis.probes import (
    AttentionEntropy,
    HeadLabel,
    as_spec_batch,
    eval_no_grad,
    masking_noise,
    unwrap_model,
)

FRAME_SECONDS = 0.01  # 10 ms hop
MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
SPEC_CMAP = "magma"
SIM_CMAP = "viridis"


# --------------------------------------------------------------------------------------------
# Reconstructions
# --------------------------------------------------------------------------------------------
def denormalize_prediction(
    model: nn.Module, spec: torch.Tensor, pred: torch.Tensor
) -> torch.Tensor:
    """Predicted patches in spectrogram units. With `norm_pix_loss` the model predicts each
    patch standardised by its own target mean and std; undo that.

    The per-patch affine map is read off the model's own `target_patches` (scale = std of the
    raw patch / std of the normalised one) instead of repeating its formula, so the variance
    convention and epsilon always match the model. A constant patch maps to its value.
    """
    if not model.config.norm_pix_loss:
        return pred
    raw = model.patchify(spec).float()
    normalised = model.target_patches(spec).float()
    mean = raw.mean(dim=-1, keepdim=True)
    raw_std, norm_std = raw.std(dim=-1, keepdim=True), normalised.std(dim=-1, keepdim=True)
    scale = torch.where(norm_std > 0, raw_std / norm_std.clamp_min(1e-12), 0.0)
    return pred * scale + mean


def reconstruction_arrays(
    model: nn.Module,
    spec_batch: torch.Tensor,
    num_samples: int = 4,
    noise: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Arrays behind the reconstruction figure, for the first `num_samples` clips.

    Returns input, masked_input (NaN where masked), prediction (every patch, spectrogram
    units), reconstruction (prediction on masked patches, input on visible ones), each
    (n, T, F); mask (n, L) with 1 = masked; masked_mse (n,) over masked patches in spectrogram
    units.
    """
    model = unwrap_model(model)
    spec = as_spec_batch(model, spec_batch)[:num_samples]
    n = spec.shape[0]
    if noise is not None:
        noise = torch.as_tensor(noise)[:n]
    noise = masking_noise(model, n, noise, seed)
    with eval_no_grad(model):
        out = model(spec, noise=noise)
        pred = denormalize_prediction(model, spec, out.pred.float())
        patches = model.patchify(spec)
        masked = out.mask.bool()[..., None]  # (n, L, 1)
        masked_input = model.unpatchify(patches.masked_fill(masked, float("nan")))
        reconstruction = model.unpatchify(torch.where(masked, pred, patches))
        per_patch = (pred - patches).square().mean(dim=-1)
        masked_mse = (per_patch * out.mask).sum(1) / out.mask.sum(1).clamp_min(1)
    return {
        "input": spec[:, 0].cpu().numpy(),
        "masked_input": masked_input[:, 0].cpu().numpy(),
        "prediction": model.unpatchify(pred)[:, 0].cpu().numpy(),
        "reconstruction": reconstruction[:, 0].cpu().numpy(),
        "mask": out.mask.cpu().numpy(),
        "masked_mse": masked_mse.cpu().numpy(),
    }


def _show_spec(ax, spec: np.ndarray, vmin: float, vmax: float, cmap):
    """Time on x (seconds), mel bins on y, low frequencies at the bottom."""
    frames, mels = spec.shape
    return ax.imshow(
        spec.T,
        origin="lower",
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=(0.0, frames * FRAME_SECONDS, 0, mels),
        interpolation="nearest",
    )


def reconstruction_figure(
    model: nn.Module,
    spec_batch: torch.Tensor,
    num_samples: int = 4,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Per clip (rows): input, masked input (masked patches grey), reconstruction (predicted
    masked patches with the visible ones copied from the input), on one colour scale."""
    arrays = reconstruction_arrays(model, spec_batch, num_samples, noise, seed)
    return reconstruction_figure_from_arrays(arrays, title=title)


def reconstruction_figure_from_arrays(
    arrays: Mapping[str, np.ndarray], title: str | None = None
) -> Figure:
    """The reconstruction figure from `reconstruction_arrays` output."""
    n = arrays["input"].shape[0]
    ratio = float(arrays["mask"].mean())
    fig = Figure(figsize=(11.0, 1.75 * n + 0.9), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False, sharex=True, sharey=True)
    # One colour scale for everything, robust to a few extreme bins.
    vmin, vmax = np.percentile(arrays["input"], [1.0, 99.5])
    cmap = _cmap(SPEC_CMAP).with_extremes(bad="0.82")
    columns = [
        ("input", "input"),
        ("masked_input", f"masked input ({ratio:.0%} of patches masked)"),
        ("reconstruction", "reconstruction (visible patches copied)"),
    ]
    image = None
    for row in range(n):
        for col, (key, name) in enumerate(columns):
            ax = axes[row, col]
            image = _show_spec(ax, arrays[key][row], vmin, vmax, cmap)
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.set_ylabel(f"clip {row + 1}\nmel bin", fontsize=9)
            if row == n - 1:
                ax.set_xlabel("time (s)", fontsize=9)
            ax.tick_params(labelsize=8)
        axes[row, 2].text(
            0.99,
            0.96,
            f"masked MSE {arrays['masked_mse'][row]:.3f}",
            transform=axes[row, 2].transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.55, "pad": 2, "edgecolor": "none"},
        )
    fig.colorbar(image, ax=axes, shrink=0.8, label="normalised log-mel")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_reconstruction_figure(
    model: nn.Module, spec_batch: torch.Tensor, path: str | Path, num_samples: int = 4
) -> None:
    """Write the reconstruction figure as an image (format from the suffix, e.g. .png).

    Safe to call from a training loop: the model's train/eval mode and its parameters are left
    as they were, nothing is recorded for autograd, and masking uses a fixed seed so successive
    figures show the same masks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = reconstruction_figure(model, spec_batch, num_samples=num_samples)
    fig.savefig(path, dpi=90)


# --------------------------------------------------------------------------------------------
# Attention entropy
# --------------------------------------------------------------------------------------------
def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _subsample(values: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= max_points:
        return values
    return rng.choice(values, size=max_points, replace=False)


def entropy_figure(
    results: Mapping[str, AttentionEntropy] | AttentionEntropy,
    normalized: bool = False,
    title: str | None = None,
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    """Violins per layer of the per-query attention entropies (pooled over a layer's heads),
    one colour per model side by side, with each head's mean entropy as a dot.

    results: {model name: AttentionEntropy} for the same part (encoder or decoder), or one.
    normalized: plot H / ln(window) instead of nats. Violins use at most `max_points` random
    queries per layer and model (the per-head dots use all of them).
    """
    if isinstance(results, AttentionEntropy):
        results = {"model": results}
    if not results:
        raise ValueError("entropy_figure needs at least one result")
    names = list(results)
    parts = {r.part for r in results.values()}
    part = parts.pop() if len(parts) == 1 else "attention"
    depth = max(r.num_layers for r in results.values())
    n_models = len(names)
    width = 0.8 / n_models
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(max(7.0, 0.75 * depth * n_models + 2.5), 4.6), layout="constrained")
    ax = fig.add_subplot()
    handles = []
    for m, name in enumerate(names):
        res = results[name]
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        positions = np.arange(1, res.num_layers + 1) + (m - (n_models - 1) / 2) * width
        data = [
            _subsample(res.layer_distribution(layer, normalized), max_points, rng)
            for layer in range(res.num_layers)
        ]
        parts_ = ax.violinplot(
            data,
            positions=positions,
            widths=width * 0.92,
            showmedians=True,
            showextrema=False,
        )
        for body in parts_["bodies"]:
            body.set_facecolor(color)
            body.set_edgecolor(color)
            body.set_alpha(0.45)
        parts_["cmedians"].set_color(color)
        head_means = res.normalized if normalized else res.mean
        jitter = np.linspace(-0.25, 0.25, res.num_heads) * width if res.num_heads > 1 else [0.0]
        for layer in range(res.num_layers):
            ax.scatter(
                positions[layer] + np.asarray(jitter),
                head_means[layer],
                s=14,
                zorder=3,
                facecolor="white",
                edgecolor=color,
                linewidth=1.0,
            )
        windows = sorted({int(w) for w in res.window_sizes.ravel()}, key=lambda w: (w == 0, w))
        desc = ", ".join("global" if w == 0 else str(w) for w in windows)
        handles.append(Patch(facecolor=color, alpha=0.6, label=f"{name}: windows {desc}"))
    handles.append(
        ax.scatter([], [], s=14, facecolor="white", edgecolor="0.3", label="one head's mean")
    )
    if not normalized:
        seq_len = max(r.seq_len for r in results.values())
        ax.axhline(np.log(seq_len), color="0.5", linestyle="--", linewidth=0.8)
        ax.text(
            0.45,
            np.log(seq_len),
            f"ln {seq_len}: uniform over all {seq_len} tokens",
            va="bottom",
            fontsize=8,
            color="0.35",
        )
        ax.set_ylabel("attention entropy (nats)")
    else:
        ax.set_ylabel("normalised entropy  H / ln(window)")
        ax.set_ylim(0, 1.08)
    ax.set_xticks(np.arange(1, depth + 1))
    ax.set_xlim(0.4, depth + 0.6)
    ax.set_xlabel(f"{part} layer")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=len(handles))
    kind = "normalised attention entropy" if normalized else "Attention entropy"
    ax.set_title(title or f"{kind.capitalize()} per query, {part} layers", fontsize=11)
    return fig


def entropy_heads_figure(
    results: Mapping[str, AttentionEntropy] | AttentionEntropy,
    normalized: bool = False,
    title: str | None = None,
) -> Figure:
    """Heat map (layers x heads) of each head's mean entropy, one panel per model; head
    columns are labelled with their window size (g = global)."""
    if isinstance(results, AttentionEntropy):
        results = {"model": results}
    names = list(results)
    max_heads = max(r.num_heads for r in results.values())
    depth = max(r.num_layers for r in results.values())
    fig = Figure(
        figsize=(max(4.5, 0.6 * max_heads + 2.0) * len(names), 0.42 * depth + 1.6),
        layout="constrained",
    )
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    vmax = 1.0 if normalized else max(float(np.log(r.seq_len)) for r in results.values())
    image = None
    for ax, name in zip(axes, names, strict=True):
        res = results[name]
        values = res.normalized if normalized else res.mean
        image = ax.imshow(values, cmap=SIM_CMAP, vmin=0.0, vmax=vmax, aspect="auto")
        for (layer, head), v in np.ndenumerate(values):
            ax.text(
                head,
                layer,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v < 0.6 * vmax else "black",
            )
        ax.set_xticks(range(res.num_heads))
        ax.set_xticklabels(
            ["g" if w == 0 else str(int(w)) for w in res.window_sizes[0]], fontsize=8
        )
        ax.set_yticks(range(res.num_layers))
        ax.set_yticklabels([str(i + 1) for i in range(res.num_layers)], fontsize=8)
        ax.set_xlabel("head: window size (g = global)")
        ax.set_ylabel(f"{res.part} layer")
        ax.set_title(name, fontsize=10)
    unit = "H / ln(window)" if normalized else "mean entropy (nats)"
    fig.colorbar(image, ax=axes, shrink=0.9, label=unit)
    fig.suptitle(title or "Mean attention entropy per head", fontsize=11)
    return fig


# --------------------------------------------------------------------------------------------
# PWCCA head similarity
# --------------------------------------------------------------------------------------------
def similarity_figure(
    similarities: Mapping[str, tuple[np.ndarray, Sequence[HeadLabel]]],
    part: str = "decoder",
    title: str | None = None,
) -> Figure:
    """PWCCA heat maps of head outputs, one panel per model.

    similarities: {model name: (matrix, labels)} as returned by `head_similarity`. Rows are
    the weighted (first) argument. Ticks give each head's window size (g = global); white
    lines separate layers, labelled L1, L2, ... along the top and right.
    """
    names = list(similarities)
    if not names:
        raise ValueError("similarity_figure needs at least one matrix")
    max_k = max(m.shape[0] for m, _ in similarities.values())
    side = float(np.clip(0.16 * max_k + 2.2, 4.0, 8.0))
    fig = Figure(figsize=(side * len(names) + 1.2, side + 0.6), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    image = None
    for ax, name in zip(axes, names, strict=True):
        matrix, labels = similarities[name]
        k = matrix.shape[0]
        image = ax.imshow(matrix, cmap=SIM_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
        ticks = [("g" if lab.window == 0 else str(lab.window)) for lab in labels]
        fontsize = 7 if k <= 40 else 5
        ax.set_xticks(range(k))
        ax.set_xticklabels(ticks, fontsize=fontsize, rotation=90)
        ax.set_yticks(range(k))
        ax.set_yticklabels(ticks, fontsize=fontsize)
        layers = [lab.layer for lab in labels]
        bounds = [i for i in range(1, k) if layers[i] != layers[i - 1]]
        for b in bounds:
            ax.axhline(b - 0.5, color="white", linewidth=1.2)
            ax.axvline(b - 0.5, color="white", linewidth=1.2)
        starts = [0, *bounds]
        ends = [*bounds, k]
        centres = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
        names_l = [f"L{layers[s] + 1}" for s in starts]
        top = ax.secondary_xaxis("top")
        top.set_xticks(centres)
        top.set_xticklabels(names_l, fontsize=8)
        top.tick_params(length=0)
        right = ax.secondary_yaxis("right")
        right.set_yticks(centres)
        right.set_yticklabels(names_l, fontsize=8)
        right.tick_params(length=0)
        ax.set_xlabel(f"{part} head Y (window size; g = global)")
        ax.set_ylabel(f"{part} head X, weighted side (window size)")
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.85, label="PWCCA(X, Y)")
    fig.suptitle(title or f"PWCCA similarity between {part} head outputs", fontsize=11)
    return fig
