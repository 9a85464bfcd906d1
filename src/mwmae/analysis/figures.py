"""Figures: reconstructions, attention-entropy distributions, PWCCA head-similarity maps.

Built on `matplotlib.figure.Figure` directly (no pyplot): nothing touches global state or the
interactive backend, figures are freed when dropped, and saving PNGs works headless (Agg).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mwmae.analysis.probes import AttentionEntropy, HeadLabel
from mwmae.plotting import (  # noqa: F401 (the reconstruction figures live in mwmae.plotting)
    FRAME_SECONDS,
    SPEC_CMAP,
    denormalize_prediction,
    reconstruction_arrays,
    reconstruction_figure,
    reconstruction_figure_from_arrays,
    save_reconstruction_figure,
)

MODEL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
SIM_CMAP = "viridis"
GLOBAL_LABEL = "global"  # not "g": at tick size it reads like "9"


def window_label(window: int) -> str:
    """Tick label of a head: its window size, or "global" for full attention (window 0)."""
    return GLOBAL_LABEL if int(window) == 0 else str(int(window))


def data_limits(values: np.ndarray) -> tuple[float, float]:
    """Colour limits spanning the finite values (widened a little if they are all equal), so
    a colour scale shows the differences between cells instead of the theoretical range."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if high - low < 1e-9:
        pad = max(abs(low) * 1e-3, 1e-3)
        return low - pad, high + pad
    return low, high


# --------------------------------------------------------------------------------------------
# Attention entropy
# --------------------------------------------------------------------------------------------
def _subsample(values: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= max_points:
        return values
    return rng.choice(values, size=max_points, replace=False)


def _uniform_line(ax, value: float, text: str) -> None:
    """Dashed reference line for uniform attention; the y range stays the data's own (so
    differences near the top are not squashed) with room above for the line's label."""
    ax.axhline(value, color="0.5", linestyle="--", linewidth=0.8)
    ax.text(0.45, value, text, va="bottom", fontsize=8, color="0.35")
    low, high = ax.get_ylim()
    top = max(high, value)
    ax.set_ylim(low, top + 0.08 * (top - low))


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
    parts = {r.part for r in results.values()}
    part = parts.pop() if len(parts) == 1 else "attention"
    depth = max(r.num_layers for r in results.values())
    n_models = len(results)
    width = 0.8 / n_models
    rng = np.random.default_rng(seed)
    # One legend row per model (+ the dot): long window lists never run off the edges.
    height = 4.6 + 0.22 * (n_models + 1)
    fig = Figure(figsize=(max(7.0, 0.75 * depth * n_models + 2.5), height), layout="constrained")
    ax = fig.add_subplot()
    handles = []
    for m, (name, res) in enumerate(results.items()):
        color = MODEL_COLORS[m % len(MODEL_COLORS)]
        positions = np.arange(1, res.num_layers + 1) + (m - (n_models - 1) / 2) * width
        data = [
            _subsample(res.layer_distribution(layer, normalized), max_points, rng)
            for layer in range(res.num_layers)
        ]
        _draw_violins(ax, data, positions, width, color)
        _draw_head_means(ax, res.normalized if normalized else res.mean, positions, width, color)
        windows = sorted({int(w) for w in res.window_sizes.ravel()}, key=lambda w: (w == 0, w))
        desc = ", ".join(window_label(w) for w in windows)
        handles.append(Patch(facecolor=color, alpha=0.6, label=f"{name}: windows {desc}"))
    handles.append(
        ax.scatter([], [], s=14, facecolor="white", edgecolor="0.3", label="one head's mean")
    )
    if not normalized:
        seq_len = max(r.seq_len for r in results.values())
        _uniform_line(ax, np.log(seq_len), f"ln {seq_len}: uniform over all {seq_len} tokens")
        ax.set_ylabel("attention entropy (nats)")
    else:
        _uniform_line(ax, 1.0, "1: uniform over the window")
        ax.set_ylabel("normalised entropy  H / ln(window)")
    ax.set_xticks(np.arange(1, depth + 1))
    ax.set_xlim(0.4, depth + 0.6)
    ax.set_xlabel(f"{part} layer")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=1)
    kind = "normalised attention entropy" if normalized else "Attention entropy"
    ax.set_title(title or f"{kind.capitalize()} per query, {part} layers", fontsize=11)
    return fig


def _draw_violins(
    ax: Axes, data: list[np.ndarray], positions: np.ndarray, width: float, color: str
) -> None:
    """One model's violins (one per layer) in its colour."""
    violins = ax.violinplot(
        data, positions=positions, widths=width * 0.92, showmedians=True, showextrema=False
    )
    for body in violins["bodies"]:
        body.set_facecolor(color)
        body.set_edgecolor(color)
        body.set_alpha(0.45)
    violins["cmedians"].set_color(color)


def _draw_head_means(
    ax: Axes, head_means: np.ndarray, positions: np.ndarray, width: float, color: str
) -> None:
    """Each head's mean entropy as a dot beside its layer's violin, heads spread sideways."""
    layers, heads = head_means.shape
    jitter = np.linspace(-0.25, 0.25, heads) * width if heads > 1 else [0.0]
    for layer in range(layers):
        ax.scatter(
            positions[layer] + np.asarray(jitter),
            head_means[layer],
            s=14,
            zorder=3,
            facecolor="white",
            edgecolor=color,
            linewidth=1.0,
        )


def entropy_heads_figure(
    results: Mapping[str, AttentionEntropy] | AttentionEntropy,
    normalized: bool = False,
    title: str | None = None,
) -> Figure:
    """Heat map (layers x heads) of each head's mean entropy, one panel per model; head
    columns are labelled with their window size ("global" = full attention).

    Each panel has its own colour bar spanning that model's values, so heads that differ by a
    tenth of a nat are still told apart; the numbers in the cells compare across panels.
    """
    if isinstance(results, AttentionEntropy):
        results = {"model": results}
    names = list(results)
    max_heads = max(r.num_heads for r in results.values())
    depth = max(r.num_layers for r in results.values())
    fig = Figure(
        figsize=(max(5.0, 0.7 * max_heads + 2.8) * len(names), 0.42 * depth + 1.8),
        layout="constrained",
    )
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    unit = "H / ln(window)" if normalized else "mean entropy (nats)"
    for ax, name in zip(axes, names, strict=True):
        res = results[name]
        values = res.normalized if normalized else res.mean
        vmin, vmax = data_limits(values)
        image = ax.imshow(values, cmap=SIM_CMAP, vmin=vmin, vmax=vmax, aspect="auto")
        for (layer, head), v in np.ndenumerate(values):
            dark = (v - vmin) < 0.6 * (vmax - vmin)  # viridis is dark at the low end
            color = "white" if dark else "black"
            ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(res.num_heads))
        ax.set_xticklabels([window_label(w) for w in res.window_sizes[0]], fontsize=8)
        ax.set_yticks(range(res.num_layers))
        ax.set_yticklabels([str(i + 1) for i in range(res.num_layers)], fontsize=8)
        ax.set_xlabel("head: attention window size")
        ax.set_ylabel(f"{res.part} layer")
        ax.set_title(name, fontsize=10)
        bar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        bar.set_label(f"{unit}\n(this panel: {vmin:.2f} to {vmax:.2f})", fontsize=8)
        bar.ax.tick_params(labelsize=7)
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
    the weighted (first) argument. Ticks give each head's window size ("global" = full
    attention); white
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
        ticks = [window_label(lab.window) for lab in labels]
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
        ax.set_xlabel(f"{part} head Y (attention window size)")
        ax.set_ylabel(f"{part} head X, weighted side (window size)")
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.85, label="PWCCA(X, Y)")
    fig.suptitle(title or f"PWCCA similarity between {part} head outputs", fontsize=11)
    return fig
