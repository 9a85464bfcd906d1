"""The full analysis of one or more models on one batch of clips: figures, JSON and arrays.

This is what `mwmae analyze` runs; it writes into a folder and returns the JSON-ready record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mwmae._io import atomic_write_text
from mwmae.analysis import figures
from mwmae.analysis.probes import (
    PARTS,
    attention_entropy,
    head_similarity,
    masking_noise,
    window_similarity_summary,
)

FIGURE_DPI = 90


def model_kind(model: nn.Module) -> str:
    """A short family name for labels: MW-MAE, MAE-AST, SSAST or MAE."""
    c = model.config
    name = str(getattr(c, "name", "") or "").lower()
    windows = [*(c.decoder_window_sizes or []), *(c.encoder_window_sizes or [])]
    if any(w for w in windows):
        return "MW-MAE"
    if name.startswith("maeast") or c.contrastive_weight > 0:
        return "MAE-AST"
    if name.startswith("ssast") or c.encoder_sees_all:
        return "SSAST"
    return "MAE"


def slugify(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "model"


def _unique_slugs(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        slug = slugify(label)
        seen[slug] = seen.get(slug, 0) + 1
        out.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return out


def num_batches(num_clips: int, batch_size: int) -> int:
    return -(-num_clips // batch_size)


def progress_total(num_models: int, num_clips: int, batch_size: int, parts: tuple[str, ...]) -> int:
    """Units `analyze_models` reports through `on_step`: batches run plus one per figure."""
    per_model = 2 * len(parts) * num_batches(num_clips, batch_size) + 1  # + reconstruction
    return num_models * per_model + 4 * len(parts)  # 3 entropy figures + 1 PWCCA per part


def pretraining_step(model_dir: str | Path) -> int | None:
    """The step a `<run>/final` export was taken at (the run's summary.json), else None."""
    folder = Path(model_dir).resolve()
    try:
        summary = json.loads((folder.parent / "summary.json").read_text())
        step, final = summary.get("step"), summary.get("final")
    except (OSError, ValueError, AttributeError):
        return None
    if final is None or Path(final).resolve() != folder:
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def reconstruction_title(label: str, step: int | None = None) -> str:
    """Names the model and, where known, its pretraining step."""
    where = label if step is None else f"{label}, step {step}"
    return f"{where}: reconstructions"


def analyze_models(
    models: Mapping[str, nn.Module],
    spec: torch.Tensor,
    out_dir: str | Path,
    parts: tuple[str, ...] = PARTS,
    num_reconstructions: int = 4,
    batch_size: int = 8,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
    valid_frames: Sequence[int] | None = None,
    steps: Mapping[str, int | None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every measure on every model and write figures + `analysis_arrays.npz` to out_dir.

    models: {label: model}. spec: (n, 1, T, F) normalised log-mel clips. Returns the record
    that `mwmae analyze` writes as JSON: for each model the per-head entropies, the PWCCA
    matrices with head labels and the reconstruction errors; file names of all figures.
    valid_frames: per clip, frames of real audio (padding is marked in the reconstructions).
    steps: {label: pretraining step} named in the reconstruction titles where known.
    Progress: `on_stage(description)` before each stage, `on_step(units)` as units finish
    (`progress_total` of them in all).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = on_step or (lambda _n: None)
    stage = on_stage or (lambda _s: None)
    steps = steps or {}
    labels = list(models)
    slugs = _unique_slugs(labels)
    entropies: dict[str, dict[str, Any]] = {p: {} for p in parts}
    similarities: dict[str, dict[str, Any]] = {p: {} for p in parts}
    arrays: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"models": [], "figures": {}}

    def save(fig, name: str) -> str:
        fig.savefig(out_dir / name, dpi=FIGURE_DPI)
        step(1)
        return name

    for label, slug in zip(labels, slugs, strict=True):
        model = models[label]
        # One masking draw per model, shared by the decoder probes and the reconstructions.
        noise = masking_noise(model, spec.shape[0], seed=seed)
        entry: dict[str, Any] = {
            "label": label,
            "kind": model_kind(model),
            "step": steps.get(label),
            "config": model.config.to_dict(),
            "attention_entropy": {},
            "head_similarity": {},
        }
        for part in parts:
            stage(f"{label}: {part} attention entropy")
            ent = attention_entropy(
                model, spec, part, noise=noise, batch_size=batch_size, on_batch=lambda: step(1)
            )
            entropies[part][label] = ent
            entry["attention_entropy"][part] = ent.to_dict()
            arrays[f"{slug}/{part}/entropy_per_query"] = ent.per_query
            stage(f"{label}: {part} PWCCA")
            matrix, heads = head_similarity(
                model, spec, part, noise=noise, batch_size=batch_size, on_batch=lambda: step(1)
            )
            similarities[part][label] = (matrix, heads)
            entry["head_similarity"][part] = {
                "direction": "matrix[i][j] = PWCCA(head i, head j), weighted by head i (row)",
                "labels": [h._asdict() for h in heads],
                "matrix": matrix.tolist(),
                "window_summary": window_similarity_summary(matrix, heads),
            }
        stage(f"{label}: reconstructions")
        rec = figures.reconstruction_arrays(model, spec, num_reconstructions, noise=noise)
        for key, value in rec.items():
            arrays[f"{slug}/reconstruction/{key}"] = value
        name = save(
            figures.reconstruction_figure_from_arrays(
                rec, title=reconstruction_title(label, steps.get(label)), valid_frames=valid_frames
            ),
            f"reconstruction_{slug}.png",
        )
        entry["reconstruction"] = {
            "figure": name,
            "mask_ratio": float(rec["mask"].mean()),
            "masked_mse": rec["masked_mse"].tolist(),
        }
        record["models"].append(entry)

    for part in parts:
        stage(f"{part} figures")
        figs = record["figures"]
        figs[f"entropy_{part}"] = save(
            figures.entropy_figure(entropies[part], seed=seed), f"entropy_{part}.png"
        )
        figs[f"entropy_{part}_normalized"] = save(
            figures.entropy_figure(entropies[part], normalized=True, seed=seed),
            f"entropy_{part}_normalized.png",
        )
        figs[f"entropy_heads_{part}"] = save(
            figures.entropy_heads_figure(entropies[part]), f"entropy_heads_{part}.png"
        )
        figs[f"pwcca_{part}"] = save(
            figures.similarity_figure(similarities[part], part=part), f"pwcca_{part}.png"
        )
    np.savez_compressed(out_dir / "analysis_arrays.npz", **arrays)
    record["arrays"] = "analysis_arrays.npz"
    return record


def write_json(record: Mapping[str, Any], path: str | Path) -> None:
    """Write atomically (a partial file never replaces a good one)."""
    atomic_write_text(path, json.dumps(record, indent=1))
