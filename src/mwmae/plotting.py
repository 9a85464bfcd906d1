"""Reconstruction figures of a masked autoencoder: input, masked input, reconstruction.

A neutral module (matplotlib only, no `mwmae.analysis`), so the pretraining loop can draw
figures while it trains; `mwmae.analysis.figures` re-exports these functions. Built on
`matplotlib.figure.Figure` directly (no pyplot): nothing touches global state or the
interactive backend, and saving PNGs works headless (Agg).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

FRAME_SECONDS = 0.01  # 10 ms hop
SPEC_CMAP = "magma"


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The MaskedAutoencoder inside DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    for _ in range(4):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


@contextmanager
def eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode without autograd for the block; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def as_spec_batch(model: nn.Module, spec_batch: torch.Tensor) -> torch.Tensor:
    """(B, T, F) or (B, 1, T, F) -> float32 (B, 1, T, F) on the model's device."""
    spec = torch.as_tensor(spec_batch)
    if spec.ndim == 3:
        spec = spec[:, None]
    return spec.to(_device(model), torch.float32)


def masking_noise(
    model: nn.Module, batch: int, noise: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """`noise` if given, else the model's own masking noise from a generator seeded by
    `seed`, so successive figures show the same masks."""
    if noise is not None:
        return torch.as_tensor(noise).to(_device(model))
    generator = torch.Generator().manual_seed(seed)
    return model.masking_noise(batch, generator=generator).to(_device(model))


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
    valid_frames: Sequence[int] | None = None,
) -> Figure:
    """Per clip (rows): input, masked input (masked patches grey), reconstruction (predicted
    masked patches with the visible ones copied from the input), on one colour scale.

    title: e.g. "mwmae_tiny, step 1200". valid_frames: per clip of `spec_batch`, the frames of
    real audio before padding; the padded rest is hatched and labelled "padding"."""
    arrays = reconstruction_arrays(model, spec_batch, num_samples, noise, seed)
    return reconstruction_figure_from_arrays(arrays, title=title, valid_frames=valid_frames)


def padded_regions(
    valid_frames: Sequence[int] | None, num_samples: int, num_frames: int
) -> list[tuple[float, float] | None]:
    """Per clip, the (start, end) in seconds of the padded tail, or None when the clip fills
    all `num_frames` frames (or nothing is known)."""
    if valid_frames is None:
        return [None] * num_samples
    if len(valid_frames) < num_samples:
        raise ValueError(f"valid_frames has {len(valid_frames)} entries for {num_samples} clips")
    regions: list[tuple[float, float] | None] = []
    for count in list(valid_frames)[:num_samples]:
        count = int(count)
        if count < 0:
            raise ValueError(f"valid_frames must be >= 0, got {count}")
        full = count >= num_frames
        regions.append(None if full else (count * FRAME_SECONDS, num_frames * FRAME_SECONDS))
    return regions


def _mark_padding(ax, region: tuple[float, float], label: bool) -> None:
    """Hatch the padded time span so a flat stretch is not read as silence the model saw."""
    start, end = region
    ax.axvspan(start, end, facecolor="none", edgecolor="white", hatch="//", linewidth=0.0)
    ax.axvline(start, color="white", linewidth=1.0, linestyle="--")
    if label:
        ax.text(
            (start + end) / 2,
            0.5,
            "padding",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="center",
            fontsize=8,
            color="white",
            bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "edgecolor": "none"},
        )


def reconstruction_figure_from_arrays(
    arrays: Mapping[str, np.ndarray],
    title: str | None = None,
    valid_frames: Sequence[int] | None = None,
) -> Figure:
    """The reconstruction figure from `reconstruction_arrays` output (see
    `reconstruction_figure` for `title` and `valid_frames`)."""
    n = arrays["input"].shape[0]
    padding = padded_regions(valid_frames, n, arrays["input"].shape[1])
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
            if padding[row] is not None:
                _mark_padding(ax, padding[row], label=True)
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
    model: nn.Module,
    spec_batch: torch.Tensor,
    path: str | Path,
    num_samples: int = 4,
    *,
    title: str | None = None,
    valid_frames: Sequence[int] | None = None,
) -> None:
    """Write the reconstruction figure as an image (format from the suffix, e.g. .png).

    title: names what is shown, e.g. "mwmae_tiny, step 1200". valid_frames: per clip, frames
    of real audio before padding (`load_spec_clips(...).valid_frames`); padding is marked.
    Safe to call from a training loop: the model's train/eval mode and its parameters are left
    as they were, nothing is recorded for autograd, and masking uses a fixed seed so successive
    figures show the same masks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = reconstruction_figure(
        model, spec_batch, num_samples=num_samples, title=title, valid_frames=valid_frames
    )
    fig.savefig(path, dpi=90)
