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
_STAGE_WEIGHTS = {"data": 41.0, "pretrain": 519.0, "embed": 177.0, "evaluate": 228.0, "report": 3.0}
RANDOM_PREFIX = "random_"  # table name of a model's step-0 twin


@dataclass
class DemoSettings:
    """Knobs of the demo; the defaults fit in under 20 minutes on 2 CPU cores (docs/demo.md
    has the sweep they were chosen from).

    `mwmae demo` has one option per field, in this order: `--field-name` (or metadata "flag")
    with the field's default and type, and the rest of `metadata` (help, choices, nargs, ...)
    as `add_argument` keywords.
    """

    out_dir: str = field(default="demo_out", metadata={"flag": "--out", "help": "output folder"})
    data_size: str = field(
        default="small",
        metadata={
            "choices": ("tiny", "small", "medium"),
            "help": "size of the generated corpus and tasks",
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for data and pretraining"})
    # The same pretraining budget for each model.
    steps: int = field(
        default=1000, metadata={"help": "pretraining budget: optimiser steps per model"}
    )
    batch_size: int = field(default=16, metadata={"help": "pretraining batch"})
    models: tuple[str, ...] = field(
        default=("mae_tiny_cpu", "mwmae_tiny_cpu"),
        metadata={
            "nargs": "+",
            "help": "pretraining presets to compare (mwmae/pretraining/configs/*.yaml)",
        },
    )
    eval_seeds: int = field(  # probe seeds of the table's rows
        default=3, metadata={"help": "downstream seeds per task (the paper: 10)"}
    )
    eval_preset: str = field(
        default="paper",
        metadata={"choices": ("paper", "hear"), "help": "downstream hyper-parameter grid"},
    )
    # Probe epochs at most (the paper's 500, early stopping as the kit).
    max_epochs: int = field(
        default=500, metadata={"help": "downstream probe epochs at most (the paper: 500)"}
    )
    curve_points: int = field(  # steps 0, ..., steps (>= 2)
        default=4,
        metadata={"help": "learning-curve points per model (steps 0 .. --steps, evenly spaced)"},
    )
    curve_seeds: int = field(
        default=1, metadata={"help": "probe seeds for the intermediate learning-curve points"}
    )
    # The "demo probe" deviation (docs/demo.md): a 256-wide hidden layer (the paper: 1024) and
    # the first point of the kit's shuffled grid (--grid-points 1; the paper: both dropouts),
    # so that 9 models x 7 tasks fit in the budget.
    probe_hidden_dim: int = field(
        default=256, metadata={"help": "width of the probe's hidden layer (the paper: 1024)"}
    )
    grid_points: int | None = field(
        default=1,
        metadata={
            "help": "probe grid points, in the kit's shuffled order (0: all; the paper: all)"
        },
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0: default)"})
    extra_overrides: tuple[str, ...] = field(
        default_factory=tuple,
        metadata={
            "flag": "--set",
            "nargs": "*",
            "metavar": "KEY=VALUE",
            "help": "extra pretraining config overrides, e.g. model.depth=2",
        },
    )


StageCallback = Callable[[str, str, float], None]  # (stage, message, fraction of work done)


def _notify(callback: StageCallback | None, stage: str, message: str, done: float) -> None:
    if callback is not None:
        callback(stage, message, done)


def curve_steps(steps: int, points: int) -> list[int]:
    """`points` snapshot steps from 0 to `steps`, evenly spaced (0 and `steps` included)."""
    if points < 2:
        from mwmae.errors import ConfigError

        raise ConfigError(
            f"--curve-points: expected at least 2 (steps 0 and the end), got {points}"
        )
    return sorted({round(k * steps / (points - 1)) for k in range(points)})


# ---- figures --------------------------------------------------------------------------------
def _loss_curves_figure(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mwmae.training import load_log

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, run_dir in runs.items():
        records = [r for r in load_log(run_dir) if r.get("event") == "train"]
        if records:
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    # Inputs are normalised per clip (mean 0, std 1), so predicting the clip's mean scores ~1.
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1, label="predicting each clip's mean")
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


def _reconstructions(runs: dict[str, Path], corpus: Path, figures: Path, seed: int) -> list[str]:
    import torch

    from mwmae.analysis.clips import load_spec_clips, select_evenly
    from mwmae.analysis.figures import save_reconstruction_figure
    from mwmae.analysis.report import pretraining_step
    from mwmae.data import find_audio_files
    from mwmae.hub import from_pretrained

    files = select_evenly(find_audio_files(corpus), 4)
    written = []
    for name, run_dir in runs.items():
        model = from_pretrained(run_dir / "final")
        clips = load_spec_clips(files, model.config.num_frames, seed=seed)
        path = figures / f"reconstruction_{name}.png"
        torch.manual_seed(seed)
        save_reconstruction_figure(
            model,
            clips.spec,
            path,
            num_samples=clips.spec.shape[0],
            title=f"{name} ({model.config.name}), step {pretraining_step(run_dir / 'final')}",
            valid_frames=clips.valid_frames,
        )
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
    from mwmae.evaluation.embed import embed_tasks

    emb_dirs: dict[str, Path] = {}
    for i, (name, folder) in enumerate(models):
        progress.within(f"embedding {len(task_dirs)} tasks with {name}", i / len(models))
        emb_dirs[name] = out / "embeddings" / name.replace("@", "_step")
        # The cache records the table name as the model id (not the folder path).
        spec = "logmel" if folder is None else str(folder)
        embed_tasks(
            spec,
            task_dirs,
            emb_dirs[name],
            batch_size=32,
            device="cpu",
            progress=True,
            model_id=name,
        )
    return emb_dirs


def _evaluate_all(
    settings: DemoSettings, emb_dirs: dict[str, Path], out: Path, progress: _Progress
) -> dict[str, dict[str, Any]]:
    from mwmae.evaluation.protocol import evaluate_embeddings

    results: dict[str, dict[str, Any]] = {}
    for i, (name, emb_dir) in enumerate(emb_dirs.items()):
        seeds = settings.curve_seeds if "@" in name else settings.eval_seeds
        progress.within(f"HEAR protocol for {name} ({seeds} seeds)", i / len(emb_dirs))
        results[name] = evaluate_embeddings(
            emb_dir,
            preset=settings.eval_preset,
            grid_overrides={"hidden_dim": [settings.probe_hidden_dim]},
            grid_points=settings.grid_points,
            seeds=seeds,
            max_epochs=settings.max_epochs,
            model_name=name,
            out_dir=out / "results" / emb_dir.name,
            progress=True,
        )
    return results


# ---- report ---------------------------------------------------------------------------------
def twin_comparison(results: dict[str, dict[str, Any]], runs: Sequence[str]) -> dict[str, Any]:
    """Per pretrained model: the tasks where its mean beats its random twin's, and by how much
    (error-rate metrics counted the right way round)."""
    out: dict[str, Any] = {}
    for name in runs:
        trained, twin = results[name]["tasks"], results[RANDOM_PREFIX + name]["tasks"]
        deltas = {}
        for task, res in trained.items():
            if task in twin and res["mean"] is not None and twin[task]["mean"] is not None:
                sign = 1.0 if res.get("higher_is_better", True) else -1.0
                deltas[task] = sign * (res["mean"] - twin[task]["mean"])
        wins = sorted(t for t, d in deltas.items() if d > 0)
        out[name] = {"wins": wins, "num_wins": len(wins), "of": len(deltas), "delta": deltas}
    return out


def learning_curve(
    settings: DemoSettings,
    results: dict[str, dict[str, Any]],
    runs: Sequence[str],
    table: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Scores per snapshot (step 0 = the random twin, last = the pretrained model), s(m) with
    the table's per-task bounds so that every point is on the table's scale."""
    from mwmae.evaluation.report import overall_scores

    table_s = overall_scores(table)
    bounds = {t: tuple(b) for t, b in (table_s[0].get("bounds") or {}).items()}
    steps = curve_steps(settings.steps, settings.curve_points)

    def point(name: str, step: int) -> dict[str, Any]:
        run = results[name]
        s_m = overall_scores([run], bounds)[0]["mean"] if bounds else float("nan")
        return {
            "step": step,
            "model": name,
            "seeds": run["seeds"],
            "tasks": {t: r["mean"] for t, r in run["tasks"].items()},
            "s_m": s_m,
        }

    models = {}
    for name in runs:
        names = [RANDOM_PREFIX + name, *(f"{name}@{k}" for k in steps[1:-1]), name]
        models[name] = [point(n, k) for n, k in zip(names, steps, strict=True)]
    floor = point("logmel", 0) if "logmel" in results else None
    return {
        "steps": steps,
        "tasks": list(table[0]["tasks"]),
        "models": models,
        "floor": floor,
        "bounds": {t: list(b) for t, b in bounds.items()},
        "table_seeds": settings.eval_seeds,
        "curve_seeds": settings.curve_seeds,
    }


def run_demo(settings: DemoSettings, callback: StageCallback | None = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to out_dir/summary.json)."""
    import torch

    from mwmae.builtin.synth import generate
    from mwmae.evaluation.report import results_table
    from mwmae.evaluation.tasks import find_task_dirs

    curve_steps(settings.steps, settings.curve_points)  # bad settings fail before any work
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(settings.out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    progress = _Progress(callback)

    progress.begin("data", f"generating built-in data ({settings.data_size})")
    manifest = generate(out / "data", size=settings.data_size, seed=settings.seed, progress=True)
    corpus = Path(manifest["root"]) / "corpus"
    task_dirs = find_task_dirs(Path(manifest["root"]) / "tasks")
    progress.end()

    progress.begin("pretrain", f"pretraining {len(settings.models)} models, same budget")
    runs = _pretrain_all(settings, corpus, out, progress)
    progress.end()

    progress.begin("embed", "embedding every task")
    to_embed = [("logmel", None)] + [(n, f) for n, f, _ in _models_to_embed(settings, runs)]
    emb_dirs = _embed_all(task_dirs, to_embed, out, progress)
    progress.end()

    progress.begin("evaluate", f"HEAR protocol ({settings.eval_preset} grid)")
    results = _evaluate_all(settings, emb_dirs, out, progress)
    progress.end()

    progress.begin("report", "writing the table and figures")
    table_runs = [r for name, r in results.items() if "@" not in name]
    table = results_table(table_runs)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(table_runs, indent=2, default=str))
    curve = learning_curve(settings, results, list(runs), table_runs)
    (out / "curve.json").write_text(json.dumps(curve, indent=2))
    twins = twin_comparison(results, list(runs))
    figure_paths = [figures / "pretraining_loss.png", figures / "learning_curve.png"]
    _loss_curves_figure(runs, figure_paths[0])
    _learning_curve_figure(curve, figure_paths[1])
    recon = _reconstructions(runs, corpus, figures, settings.seed)
    progress.end()

    summary = {
        "settings": asdict(settings),
        "timings_s": progress.timings,
        "total_s": sum(progress.timings.values()),
        "data": {
            "root": manifest["root"],
            "sources": manifest.get("sources"),
            "tasks": [p.name for p in task_dirs],
        },
        "runs": {k: str(v) for k, v in runs.items()},
        "table": table,
        "pretrained_vs_random_twin": twins,
        "learning_curve": str(out / "curve.json"),
        "figures": [*map(str, figure_paths), *recon],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _notify(callback, "done", f"finished in {summary['total_s'] / 60:.1f} min", 1.0)
    return summary
