"""The full analysis of one or more models on one batch of clips: figures, JSON and arrays.

`run_analysis` is what `mwmae analyze` runs: models and clips in, a folder of figures, arrays
and `analysis.json` out; `analyze_models` is its core on models and clips already loaded.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mwmae import __version__
from mwmae._io import atomic_write_text
from mwmae._progress import progress_bar
from mwmae.analysis import figures
from mwmae.analysis.clips import SpecClips, find_audio_files, load_spec_clips, select_evenly
from mwmae.analysis.probes import (
    PARTS,
    AttentionEntropy,
    HeadLabel,
    attention_entropy,
    head_similarity,
    masking_noise,
    window_similarity_summary,
)
from mwmae.errors import ConfigError, InputError, reraise_as_input_errors
from mwmae.hub import from_pretrained, model_display_name

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


def run_analysis(
    models: Sequence[str | Path],
    audio: str | Path,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    num_clips: int = 16,
    num_reconstructions: int = 4,
    part: str = "both",
    batch_size: int = 8,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    on_skipped: Callable[[Path, str], None] | None = None,
) -> dict[str, Any]:
    """Analyse pretrained models (folders) on `num_clips` clips of `audio`, spread evenly over
    its sorted files: `analyze_models` into `out`, and the record with what produced it (clips,
    padding, skipped files, seed, preprocessing, model paths) written to out/analysis.json.
    Returns the record.

    audio: a folder searched recursively, a HEAR task folder or one file. labels: display
    names per model (default: family and folder name). part: "encoder", "decoder" or "both".
    progress: bars on stderr naming each stage. on_skipped(path, reason): called for each file
    that could not be loaded. Bad input raises ConfigError, InputError or MissingFileError.
    """
    paths = list(models)
    _check_options(len(paths), num_clips, num_reconstructions, part, batch_size)
    names, loaded, clips = _load_inputs(paths, audio, labels, num_clips, seed, device, progress)
    if on_skipped is not None:
        for path, reason in clips.skipped:
            on_skipped(path, reason)
    if clips.spec.shape[0] < 2:
        raise InputError("fewer than 2 clips could be loaded")
    parts = PARTS if part == "both" else (part,)
    total = progress_total(len(loaded), clips.spec.shape[0], batch_size, parts)
    with progress_bar(total=total, desc="analysing", unit="step", disable=not progress) as bar:
        record = analyze_models(
            dict(zip(names, loaded, strict=True)),
            clips.spec,
            out,
            parts=parts,
            num_reconstructions=num_reconstructions,
            batch_size=batch_size,
            seed=seed,
            on_step=bar.update,
            valid_frames=clips.valid_frames,
            steps={name: pretraining_step(p) for name, p in zip(names, paths, strict=True)},
            on_stage=bar.set_description_str,
        )
    for entry, path in zip(record["models"], paths, strict=True):
        entry["path"] = str(path)
    num_frames = loaded[0].config.num_frames
    record = {
        "mwmae_version": __version__,
        "audio": str(audio),
        "clips": [str(p) for p in clips.paths],
        "valid_frames": clips.valid_frames,
        "skipped": [{"path": str(p), "reason": r} for p, r in clips.skipped],
        "num_frames": num_frames,
        "seed": seed,
        "preprocessing": "log-mel, per-clip normalisation over the whole clip, random "
        f"{num_frames}-frame crop (seeded) or zero padding",
        **record,
    }
    write_json(record, Path(out) / "analysis.json")
    return record


def _check_options(
    num_models: int, num_clips: int, num_reconstructions: int, part: str, batch_size: int
) -> None:
    if num_models < 1:
        raise ConfigError("no model to analyse: give at least one model folder")
    if num_clips < 2:
        raise ConfigError("--num-clips must be at least 2 (PWCCA needs several samples)")
    if batch_size < 1 or num_reconstructions < 1:
        raise ConfigError("--batch-size and --num-reconstructions must be >= 1")
    if part not in (*PARTS, "both"):
        raise ConfigError(f"part: expected 'encoder', 'decoder' or 'both', got {part!r}")


def _load_inputs(
    paths: list[str | Path],
    audio: str | Path,
    labels: Sequence[str] | None,
    num_clips: int,
    seed: int,
    device: str,
    progress: bool,
) -> tuple[list[str], list[nn.Module], SpecClips]:
    """Labels, models (all taking the same input size) and the loaded clips."""
    with reraise_as_input_errors():
        with progress_bar(paths, desc="loading models", unit="model", disable=not progress) as bar:
            models = [from_pretrained(p, device=device) for p in bar]
        names = _labels(labels, models, paths)
        files = select_evenly(find_audio_files(audio), num_clips)
    size = (models[0].config.num_frames, models[0].config.num_mels)
    mismatched = [
        name
        for name, m in zip(names, models, strict=True)
        if (m.config.num_frames, m.config.num_mels) != size
    ]
    if mismatched:
        raise InputError(f"models expect different input sizes: {mismatched}")
    with progress_bar(
        total=len(files), desc="loading clips", unit="clip", disable=not progress
    ) as bar:
        with reraise_as_input_errors():
            clips = load_spec_clips(files, size[0], seed=seed, on_clip=bar.update)
    return names, models, clips


def _labels(labels: Sequence[str] | None, models: list[nn.Module], paths: list) -> list[str]:
    if labels:
        if len(labels) != len(paths):
            raise InputError(f"{len(labels)} --label for {len(paths)} --model")
        return list(labels)
    return [
        f"{model_kind(m)} ({model_display_name(p)})" for m, p in zip(models, paths, strict=True)
    ]


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
    run = _Run(
        spec, batch_size, Path(out_dir), on_step or (lambda _n: None), on_stage or (lambda _s: None)
    )
    run.folder.mkdir(parents=True, exist_ok=True)
    steps = steps or {}
    entropies: dict[str, dict[str, Any]] = {p: {} for p in parts}
    similarities: dict[str, dict[str, Any]] = {p: {} for p in parts}
    record: dict[str, Any] = {"models": [], "figures": {}}
    for (label, model), slug in zip(models.items(), _unique_slugs(list(models)), strict=True):
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
            ent, similarity = run.probe(model, part, noise, label, slug)
            entropies[part][label], similarities[part][label] = ent, similarity
            entry["attention_entropy"][part] = ent.to_dict()
            entry["head_similarity"][part] = _similarity_record(*similarity)
        run.stage(f"{label}: reconstructions")
        title = reconstruction_title(label, steps.get(label))
        entry["reconstruction"] = run.reconstructions(
            model, noise, num_reconstructions, slug, title, valid_frames
        )
        record["models"].append(entry)
    for part in parts:
        record["figures"].update(run.part_figures(part, entropies[part], similarities[part], seed))
    np.savez_compressed(run.folder / "analysis_arrays.npz", **run.arrays)
    record["arrays"] = "analysis_arrays.npz"
    return record


@dataclass
class _Run:
    """One analysis in progress: the clips, where figures (a progress unit each) and arrays
    (for `analysis_arrays.npz`) go, and the progress callbacks."""

    spec: torch.Tensor
    batch_size: int
    folder: Path
    step: Callable[[int], None]
    stage: Callable[[str], None]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, fig: Figure, name: str) -> str:
        fig.savefig(self.folder / name, dpi=FIGURE_DPI)
        self.step(1)
        return name

    def probe(
        self, model: nn.Module, part: str, noise: torch.Tensor, label: str, slug: str
    ) -> tuple[AttentionEntropy, tuple[np.ndarray, list[HeadLabel]]]:
        """One model's attention entropy and PWCCA head similarity in one part."""
        on_batch = functools.partial(self.step, 1)
        self.stage(f"{label}: {part} attention entropy")
        ent = attention_entropy(
            model, self.spec, part, noise=noise, batch_size=self.batch_size, on_batch=on_batch
        )
        self.arrays[f"{slug}/{part}/entropy_per_query"] = ent.per_query
        self.stage(f"{label}: {part} PWCCA")
        similarity = head_similarity(
            model, self.spec, part, noise=noise, batch_size=self.batch_size, on_batch=on_batch
        )
        return ent, similarity

    def reconstructions(
        self,
        model: nn.Module,
        noise: torch.Tensor,
        num: int,
        slug: str,
        title: str,
        valid_frames: Sequence[int] | None,
    ) -> dict[str, Any]:
        """The reconstruction figure of the first `num` clips and its record."""
        rec = figures.reconstruction_arrays(model, self.spec, num, noise=noise)
        for key, value in rec.items():
            self.arrays[f"{slug}/reconstruction/{key}"] = value
        fig = figures.reconstruction_figure_from_arrays(rec, title=title, valid_frames=valid_frames)
        return {
            "figure": self.save(fig, f"reconstruction_{slug}.png"),
            "mask_ratio": float(rec["mask"].mean()),
            "masked_mse": rec["masked_mse"].tolist(),
        }

    def part_figures(
        self,
        part: str,
        entropies: Mapping[str, AttentionEntropy],
        similarities: Mapping[str, tuple[np.ndarray, Sequence[HeadLabel]]],
        seed: int,
    ) -> dict[str, str]:
        """The three entropy figures and the PWCCA figure of one part, models side by side."""
        self.stage(f"{part} figures")
        return {
            f"entropy_{part}": self.save(
                figures.entropy_figure(entropies, seed=seed), f"entropy_{part}.png"
            ),
            f"entropy_{part}_normalized": self.save(
                figures.entropy_figure(entropies, normalized=True, seed=seed),
                f"entropy_{part}_normalized.png",
            ),
            f"entropy_heads_{part}": self.save(
                figures.entropy_heads_figure(entropies), f"entropy_heads_{part}.png"
            ),
            f"pwcca_{part}": self.save(
                figures.similarity_figure(similarities, part=part), f"pwcca_{part}.png"
            ),
        }


def _similarity_record(matrix: np.ndarray, heads: Sequence[HeadLabel]) -> dict[str, Any]:
    return {
        "direction": "matrix[i][j] = PWCCA(head i, head j), weighted by head i (row)",
        "labels": [h._asdict() for h in heads],
        "matrix": matrix.tolist(),
        "window_summary": window_similarity_summary(matrix, heads),
    }


def write_json(record: Mapping[str, Any], path: str | Path) -> None:
    """Write atomically (a partial file never replaces a good one)."""
    atomic_write_text(path, json.dumps(record, indent=1))
