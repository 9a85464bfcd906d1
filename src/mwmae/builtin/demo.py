"""The main job: built-in data -> pretrain a tiny MAE and MW-MAE -> HEAR evaluation -> table.

Everything runs on a CPU with the defaults (under 20 minutes on 2 cores), and every number in
the table comes from the run. Beside each pretrained model the table has its random-initialised
twin: the same run's weights at step 0 (same architecture, same initialisation), so a row pair
says what pretraining added. Intermediate snapshots of the same runs give the learning curve.
`run_demo` reports its stages through a callback (the CLI prints them with an ETA); it writes
into `out_dir`:

    data/                  the generated corpus and HEAR-layout tasks
    cache/mel/             log-mels of the corpus, keyed by file content (shared by the runs)
    runs/<model>/          pretraining runs (log.jsonl, TensorBoard, snapshots/, final/)
    embeddings/<model>/    per-task embeddings (<model>@<step> for learning-curve snapshots)
    results/<model>/       results.json + results.md per evaluated model
    results.md, results.json   the paper-style table (all table models) and its numbers
    curve.json             learning-curve scores per snapshot
    figures/               loss curves, learning curve, reconstructions
    summary.json           timings, settings, the twin comparison and where everything is
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Relative cost of each stage for the ETA: seconds measured with the defaults on 2 CPU cores.
_STAGE_WEIGHTS = {"data": 40.0, "pretrain": 480.0, "embed": 90.0, "evaluate": 300.0, "report": 5.0}
RANDOM_PREFIX = "random_"  # table name of a model's step-0 twin


@dataclass
class DemoSettings:
    """Knobs of the demo; the defaults fit in under 20 minutes on 2 CPU cores (docs/demo.md
    has the sweep they were chosen from)."""

    out_dir: str = "demo_out"
    data_size: str = "small"  # tiny | small | medium
    seed: int = 0
    models: tuple[str, ...] = ("mae_tiny_cpu", "mwmae_tiny_cpu")  # pretraining presets
    steps: int = 1600  # pretraining steps per model (same budget for each)
    batch_size: int = 32
    curve_points: int = 4  # learning-curve points per model: steps 0, ..., steps (>= 2)
    eval_seeds: int = 3  # probe seeds of the table's rows
    curve_seeds: int = 1  # probe seeds of the intermediate learning-curve points
    eval_preset: str = "paper"
    max_epochs: int = 500  # probe epochs at most (the paper's 500, early stopping as the kit)
    probe_hidden_dim: int = 1024  # the paper's probe width
    threads: int = 0  # torch threads (0: leave as is)
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)


StageCallback = Callable[[str, str, float], None]  # (stage, message, fraction of work done)


def _notify(callback: StageCallback | None, stage: str, message: str, done: float) -> None:
    if callback is not None:
        callback(stage, message, done)


def curve_steps(steps: int, points: int) -> list[int]:
    """`points` snapshot steps from 0 to `steps`, evenly spaced (0 and `steps` included)."""
    if points < 2:
        raise ValueError(f"curve_points must be >= 2, got {points}")
    return sorted({round(k * steps / (points - 1)) for k in range(points)})


# ---- figures --------------------------------------------------------------------------------
def _loss_curves_figure(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mwmae.pretraining.loop import load_log

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, run_dir in runs.items():
        records = [r for r in load_log(run_dir) if r.get("event") == "train"]
        if records:
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("masked reconstruction loss (MSE)")
    ax.set_title("Pretraining loss, same budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _learning_curve_figure(curve: dict[str, Any], path: Path) -> None:
    """One panel per task (score vs pretraining step, log-mel floor dashed) and one for s(m)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = curve["tasks"]
    cols = 4
    rows = -(-(len(tasks) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    panels = [*tasks, "s(m)"]
    for ax, panel in zip(axes.flat, panels, strict=False):
        for name, points in curve["models"].items():
            steps = [p["step"] for p in points]
            values = [p["s_m"] if panel == "s(m)" else 100 * p["tasks"][panel] for p in points]
            ax.plot(steps, values, marker="o", label=name)
        floor = curve["floor"]
        if floor is not None:
            value = floor["s_m"] if panel == "s(m)" else 100 * floor["tasks"][panel]
            ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=floor["model"])
        ax.set_title(panel if panel != "s(m)" else "s(m) (table's normalisation)", fontsize=9)
        ax.set_xlabel("pretraining step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(
        f"Downstream score vs pretraining step (step 0 = random init; intermediate points: "
        f"{curve['curve_seeds']} probe seed(s), ends: {curve['table_seeds']})",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _reconstructions(
    runs: dict[str, Path], corpus: Path, figures: Path, seed: int, steps: int
) -> list[str]:
    import torch

    from mwmae.analysis.clips import find_audio_files, load_spec_batch, select_evenly
    from mwmae.analysis.figures import save_reconstruction_figure
    from mwmae.hub import from_pretrained

    batch, _, _ = load_spec_batch(select_evenly(find_audio_files(corpus), 4), seed=seed)
    written = []
    for name, run_dir in runs.items():
        model = from_pretrained(run_dir / "final")
        path = figures / f"reconstruction_{name}.png"
        torch.manual_seed(seed)
        save_reconstruction_figure(model, batch, path, num_samples=batch.shape[0])
        written.append(str(path))
    return written


# ---- stages ---------------------------------------------------------------------------------
class _Progress:
    """Stage timings and the overall fraction done, for the callback's ETA."""

    def __init__(self, callback: StageCallback | None) -> None:
        self.callback = callback
        self.timings: dict[str, float] = {}
        self.total = sum(_STAGE_WEIGHTS.values())
        self.done = 0.0
        self.stage = ""
        self.started = 0.0

    def begin(self, stage: str, message: str) -> None:
        self.stage, self.started = stage, time.perf_counter()
        _notify(self.callback, stage, message, self.done / self.total)

    def within(self, message: str, fraction: float) -> None:
        done = self.done + _STAGE_WEIGHTS[self.stage] * fraction
        _notify(self.callback, self.stage, message, done / self.total)

    def end(self) -> None:
        self.timings[self.stage] = time.perf_counter() - self.started
        self.done += _STAGE_WEIGHTS[self.stage]


def _pretrain_all(
    settings: DemoSettings, corpus: Path, out: Path, progress: _Progress
) -> dict[str, Path]:
    from mwmae.pretraining import pretrain

    snapshots = curve_steps(settings.steps, settings.curve_points)
    runs: dict[str, Path] = {}
    for i, preset in enumerate(settings.models):
        name = preset.removesuffix("_cpu")
        progress.within(
            f"pretraining {name} ({settings.steps} steps, batch {settings.batch_size})",
            i / len(settings.models),
        )
        overrides = [
            f"data.source={corpus}",
            "data.cache=memory",
            f"data.cache_dir={out / 'cache' / 'mel'}",
            f"schedule.steps={settings.steps}",
            f"batch.global_size={settings.batch_size}",
            f"checkpoint.snapshots=[{','.join(map(str, snapshots[:-1]))}]",
            f"seed={settings.seed}",
            f"output.dir={out / 'runs'}",
            f"output.run_name={name}",
            *settings.extra_overrides,
        ]
        runs[name] = Path(pretrain(preset, overrides, progress=True))
    return runs


def _models_to_embed(settings: DemoSettings, runs: dict[str, Path]) -> list[tuple[str, Path, int]]:
    """(name, model folder, step) of every model to embed: the table's models first (random
    twin = step 0, pretrained = final), then the intermediate learning-curve snapshots."""
    from mwmae.pretraining import snapshot_dir

    steps = curve_steps(settings.steps, settings.curve_points)
    table, curve = [], []
    for name, run_dir in runs.items():
        table.append((RANDOM_PREFIX + name, snapshot_dir(run_dir, 0), 0))
        table.append((name, run_dir / "final", settings.steps))
        curve += [(f"{name}@{k}", snapshot_dir(run_dir, k), k) for k in steps[1:-1]]
    return table + curve


def _embed_all(
    task_dirs: Sequence[Path],
    models: list[tuple[str, Path | None]],
    out: Path,
    progress: _Progress,
) -> dict[str, Path]:
    from mwmae import hear
    from mwmae.builtin import logmel
    from mwmae.evaluation.embed import embed_task

    emb_dirs: dict[str, Path] = {}
    for i, (name, folder) in enumerate(models):
        progress.within(f"embedding {len(task_dirs)} tasks with {name}", i / len(models))
        if folder is None:
            module, model = logmel, logmel.load_model()
        else:
            module, model = hear, hear.load_model(str(folder), device="cpu")
        emb_dirs[name] = out / "embeddings" / name.replace("@", "_step")
        for task_dir in task_dirs:
            embed_task(
                module, model, task_dir, emb_dirs[name], batch_size=32, progress=True, model_id=name
            )
    return emb_dirs


def _evaluate_all(
    settings: DemoSettings, emb_dirs: dict[str, Path], out: Path, progress: _Progress
) -> dict[str, dict[str, Any]]:
    from mwmae.evaluation.probe import ProbeConfig, preset_grid
    from mwmae.evaluation.run import evaluate_embeddings

    grid = [
        ProbeConfig(**{**asdict(point), "hidden_dim": settings.probe_hidden_dim})
        for point in preset_grid(settings.eval_preset)
    ]
    results: dict[str, dict[str, Any]] = {}
    for i, (name, emb_dir) in enumerate(emb_dirs.items()):
        seeds = settings.curve_seeds if "@" in name else settings.eval_seeds
        progress.within(f"HEAR protocol for {name} ({seeds} seeds)", i / len(emb_dirs))
        results[name] = evaluate_embeddings(
            emb_dir,
            preset=settings.eval_preset,
            grid=grid,
            seeds=seeds,
            max_epochs=settings.max_epochs,
            model_name=name,
            out_dir=out / "results" / emb_dir.name,
            progress=True,
        )
    return results
