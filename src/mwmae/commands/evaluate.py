"""`mwmae embed`, `mwmae evaluate`, `mwmae compare`, `mwmae export-heareval`: the HEAR
downstream evaluation. The work is in `mwmae.evaluation`; `mwmae.cli.main` prints any
`MwmaeError` these raise as one line (exit 2)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from mwmae.commands import add_command
from mwmae.errors import ConfigError, reraise_as_output_errors


def _embed_tasks(args: argparse.Namespace, out: Path, overwrite: bool) -> list[dict[str, Any]]:
    """`embed_tasks` with the embedding arguments `embed` and `evaluate` share."""
    from mwmae.evaluation.embed import embed_tasks

    return embed_tasks(
        args.model,
        args.tasks,
        out,
        hear_module=args.hear_module,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=overwrite,
        progress=not args.no_progress,
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rows = _embed_tasks(args, out, args.overwrite)
    summary = {"model": args.model, "tasks_dir": args.tasks, "tasks": rows}
    with reraise_as_output_errors(out):
        (out / "embed.json").write_text(json.dumps(summary, indent=1))
    for r in rows:
        dims = {s: f"{v['rows']}x{v['dim']}" for s, v in r["splits"].items()}
        print(f"{r['task']}: {dims} ({r['seconds']} s) -> {r['out']}")
    print(f"summary: {out / 'embed.json'}")
    return 0


def _embeddings_to_evaluate(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
    """(embedded tasks, model name): --embeddings as given, or --model's embeddings of --tasks,
    made (or reused) under OUT/embeddings."""
    if args.embeddings is not None:
        return Path(args.embeddings), args.name
    if args.model is None or args.tasks is None:
        raise ConfigError("give --embeddings DIR, or --model PATH with --tasks DIR")
    from mwmae.hub import model_display_name

    emb_dir = out / "embeddings"
    _embed_tasks(args, emb_dir, overwrite=False)
    return emb_dir, args.name or model_display_name(args.model)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mwmae.evaluation.probe import TrainSettings
    from mwmae.evaluation.protocol import EvalOptions, evaluate_embeddings
    from mwmae.evaluation.report import results_table

    out = Path(args.out)
    emb_dir, model_name = _embeddings_to_evaluate(args, out)
    t0 = time.perf_counter()
    options = EvalOptions(
        preset=args.preset,
        seeds=args.seeds,
        settings=TrainSettings(shuffle=args.shuffle),
        max_epochs=args.max_epochs,
        grid_points=args.grid_points,
        device=args.device,
        standardize=args.standardize,
        progress=not args.no_progress,
    )
    run = evaluate_embeddings(emb_dir, options, model_name=model_name, out_dir=out, tasks=args.only)
    print(results_table([run]), end="")
    for name, res in run["tasks"].items():
        print(f"{name}: {res['metric']} per seed {[round(s, 4) for s in res['scores']]}")
    print(
        f"{time.perf_counter() - t0:.1f} s; results: {out / 'results.json'}, {out / 'results.md'}"
    )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mwmae.evaluation.report import compare, load_bounds

    bounds = load_bounds(args.bounds) if args.bounds else None
    print(compare(args.runs, bounds, out_dir=args.out or None), end="")
    if args.out:
        out = Path(args.out)
        print(f"written: {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def _cmd_export_heareval(args: argparse.Namespace) -> int:
    from mwmae.evaluation.stored import export_heareval, iter_embedded_tasks

    for folder in iter_embedded_tasks(args.embeddings):
        dest = export_heareval(folder, Path(args.out) / folder.name)
        print(f"{folder.name}: -> {dest}")
    return 0


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------
def _model_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="weights for mwmae.hear.load_model, or 'logmel' for the log-mel baseline",
    )
    p.add_argument("--tasks", required=required, help="a HEAR task folder or a folder of them")
    p.add_argument(
        "--hear-module",
        default=None,
        help="import path of another HEAR-API module to use instead of mwmae.hear",
    )
    p.add_argument("--batch-size", type=int, default=16, help="sounds per embedding batch")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _embed_args(p: argparse.ArgumentParser) -> None:
    _model_args(p, required=True)
    p.add_argument("--out", required=True, help="output folder (one sub-folder per task)")
    p.add_argument(
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="re-embed every split (by default a split is re-embedded only when the weights' "
        "SHA-256, the model/front-end settings or the split's file list changed)",
    )


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", default=None, help="embedded task folder(s)")
    _model_args(p, required=False)
    p.add_argument(
        "--preset",
        choices=("paper", "hear"),
        default="paper",
        help="hyper-parameter grid: the paper's (2 points) or upstream HEAR's (16)",
    )
    p.add_argument("--seeds", type=int, default=10, help="seeds per task (default 10)")
    p.add_argument("--max-epochs", type=int, default=None, help="default 500")
    p.add_argument(
        "--grid-points",
        type=int,
        default=None,
        help="train only the first N points of the grid in heareval's shuffled order "
        "(random.shuffle under seed 42), exactly the kit's --grid-points N (default: all)",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="z-score embeddings with training statistics (heareval does not)",
    )
    p.add_argument(
        "--shuffle",
        action="store_true",
        help="reshuffle training rows every epoch (heareval 2021.1.3 never does)",
    )
    p.add_argument(
        "--only", nargs="+", default=None, metavar="TASK", help="evaluate only these tasks"
    )
    p.add_argument("--name", default=None, help="model name for the tables")
    p.add_argument("--out", required=True, help="output folder")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_JSON",
        help="results.json files (or the folders holding them)",
    )
    p.add_argument(
        "--bounds",
        default=None,
        help="JSON {task: [min, max]} for the s(m) normalisation "
        "(default: min/max over the compared runs)",
    )
    p.add_argument("--out", default=None, help="folder for compare.md and compare.json")


def _export_heareval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("embeddings", help="an embedded task folder or a folder of them")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per task)")


class _Command(NamedTuple):
    run: Callable[[argparse.Namespace], int]
    add_args: Callable[[argparse.ArgumentParser], None]
    help: str
    description: str


_COMMANDS = {
    "embed": _Command(
        _cmd_embed,
        _embed_args,
        "embed HEAR task folders with a HEAR-API model (cached per split)",
        "Embed every split of HEAR task folders. A split is reused only if it was made from "
        "the same weights (SHA-256), model and front-end settings and file list (names, sizes, "
        "mtimes), recorded in OUT/<task>/<split>.cache.json. Writes "
        "OUT/<task>/<split>.embeddings.npy + labels and OUT/embed.json.",
    ),
    "evaluate": _Command(
        _cmd_evaluate,
        _evaluate_args,
        "train HEAR probes (all seeds and grid points batched) and tabulate",
        "Downstream evaluation as in the MW-MAE paper: shallow MLP probes on frozen "
        "embeddings, N seeds, mean +- 95% CI. Writes OUT/results.json and OUT/results.md. "
        "Give --embeddings (from `mwmae embed`) or --model with --tasks to embed first.",
    ),
    "compare": _Command(
        _cmd_compare,
        _compare_args,
        "tabulate several evaluation runs side by side with s(m)",
        "One row per run, one column per task (mean +- 95% CI) and the overall score s(m) "
        "(min-max normalised task scores; see mwmae.evaluation.report).",
    ),
    "export-heareval": _Command(
        _cmd_export_heareval,
        _export_heareval_args,
        "write embedded tasks in the layout hear-eval-kit's runner reads",
        "Write every embedded task under EMBEDDINGS (mwmae's layout) to OUT/<task>/ in "
        "heareval 2021.1.3's layout: raw float32 <split>.embeddings.npy, "
        "<split>.embedding-dimensions.json, <split>.target-labels.pkl, and for event tasks "
        "<split>.filename-timestamps.json. `mwmae evaluate` reads both layouts.",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, command in _COMMANDS.items():
        command.add_args(
            add_command(subparsers, name, command.run, command.help, command.description)
        )
