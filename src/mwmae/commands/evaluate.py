"""`mwmae embed`, `mwmae evaluate`, `mwmae compare`: the HEAR downstream evaluation."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any


def _hear_module_and_model(model: str, hear_module: str | None, device: str) -> tuple[Any, Any]:
    # Imported lazily: the HEAR modules are heavy and optional for the other commands.
    if hear_module is not None:
        module = importlib.import_module(hear_module)
        loaded = module.load_model(model)
    elif model == "logmel":
        module = importlib.import_module("mwmae.builtin.logmel")
        loaded = module.load_model()
    else:
        module = importlib.import_module("mwmae.hear")
        loaded = module.load_model(model)
    if hasattr(loaded, "to"):
        loaded = loaded.to(device)
    if hasattr(loaded, "eval"):
        loaded.eval()
    return module, loaded


def _embed_all(
    model: str,
    hear_module: str | None,
    tasks: str,
    out: Path,
    batch_size: int,
    device: str,
    overwrite: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    from mwmae.evaluation.embed import embed_task
    from mwmae.evaluation.tasks import find_task_dirs

    module, loaded = _hear_module_and_model(model, hear_module, device)
    rows = []
    for task_dir in find_task_dirs(tasks):
        t0 = time.perf_counter()
        task_out = embed_task(
            module,
            loaded,
            task_dir,
            out,
            batch_size=batch_size,
            progress=progress,
            model_id=model,
            overwrite=overwrite,
        )
        splits = {
            p.name.removesuffix(".done.json"): json.loads(p.read_text())
            for p in sorted(task_out.glob("*.done.json"))
        }
        rows.append(
            {
                "task": task_dir.name,
                "out": str(task_out),
                "seconds": round(time.perf_counter() - t0, 2),
                "splits": splits,
            }
        )
    return rows


def _cmd_embed(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rows = _embed_all(
        args.model,
        args.hear_module,
        args.tasks,
        out,
        args.batch_size,
        args.device,
        args.overwrite,
        not args.no_progress,
    )
    summary = {"model": args.model, "tasks_dir": args.tasks, "tasks": rows}
    (out / "embed.json").write_text(json.dumps(summary, indent=1))
    for r in rows:
        dims = {s: f"{v['rows']}x{v['dim']}" for s, v in r["splits"].items()}
        print(f"{r['task']}: {dims} ({r['seconds']} s) -> {r['out']}")
    print(f"summary: {out / 'embed.json'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mwmae.evaluation.probe import TrainSettings
    from mwmae.evaluation.run import EvalOptions, evaluate_embeddings, results_table

    out = Path(args.out)
    if args.embeddings is None:
        if args.model is None or args.tasks is None:
            print("error: give --embeddings DIR, or --model PATH with --tasks DIR", file=sys.stderr)
            return 2
        emb_dir = out / "embeddings"
        _embed_all(
            args.model,
            args.hear_module,
            args.tasks,
            emb_dir,
            args.batch_size,
            args.device,
            False,
            not args.no_progress,
        )
        from mwmae.hub import model_display_name

        model_name = args.name or model_display_name(args.model)
    else:
        emb_dir = Path(args.embeddings)
        model_name = args.name
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
    from mwmae.evaluation.run import load_run, overall_scores, results_table

    bounds = None
    if args.bounds:
        bounds = {
            k: (float(v[0]), float(v[1]))
            for k, v in json.loads(Path(args.bounds).read_text()).items()
        }
    runs = [load_run(p) for p in args.runs]
    table = results_table(runs, bounds)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table)
        overall = overall_scores(runs, bounds)
        summary = [
            {
                "model": r.get("model"),
                "run": str(p),
                "tasks": {
                    t: {k: v[k] for k in ("metric", "mean", "ci95")} for t, v in r["tasks"].items()
                },
                "s_m": {"mean": s["mean"], "ci95": s["ci95"], "tasks": s["tasks"]},
            }
            for r, s, p in zip(runs, overall, args.runs, strict=True)
        ]
        (out / "compare.json").write_text(json.dumps(summary, indent=1))
        print(f"written: {out / 'compare.md'}, {out / 'compare.json'}")
    return 0


def _cmd_export_heareval(args: argparse.Namespace) -> int:
    from mwmae.evaluation.embed import export_heareval, iter_embedded_tasks

    for folder in iter_embedded_tasks(args.embeddings):
        dest = export_heareval(folder, Path(args.out) / folder.name)
        print(f"{folder.name}: -> {dest}")
    return 0


def _one_line_errors(name: str, func: Any) -> Any:
    # Problems of the user's input are printed in one line (exit 2); anything else is a bug
    # and keeps its traceback.
    def run(args: argparse.Namespace) -> int:
        from mwmae.errors import MwmaeError

        try:
            return func(args)
        except MwmaeError as e:
            print(f"mwmae {name}: error: {e}", file=sys.stderr)
            return 2

    return run


def _add_embed_args(p: argparse.ArgumentParser, required: bool) -> None:
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed HEAR task folders with a HEAR-API model (cached per split)",
        description="Embed every split of HEAR task folders. A split is reused only if it was "
        "made from the same weights (SHA-256), model and front-end settings and file list "
        "(names, sizes, mtimes), recorded in OUT/<task>/<split>.cache.json. Writes "
        "OUT/<task>/<split>.embeddings.npy + labels and OUT/embed.json.",
    )
    _add_embed_args(p, required=True)
    p.add_argument("--out", required=True, help="output folder (one sub-folder per task)")
    p.add_argument(
        "--force",
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="re-embed every split (by default a split is re-embedded only when the weights' "
        "SHA-256, the model/front-end settings or the split's file list changed)",
    )
    p.set_defaults(func=_one_line_errors("embed", _cmd_embed))

    p = subparsers.add_parser(
        "evaluate",
        help="train HEAR probes (all seeds and grid points batched) and tabulate",
        description="Downstream evaluation as in the MW-MAE paper: shallow MLP probes on frozen "
        "embeddings, N seeds, mean +- 95% CI. Writes OUT/results.json and OUT/results.md. "
        "Give --embeddings (from `mwmae embed`) or --model with --tasks to embed first.",
    )
    p.add_argument("--embeddings", default=None, help="embedded task folder(s)")
    _add_embed_args(p, required=False)
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
    p.set_defaults(func=_one_line_errors("evaluate", _cmd_evaluate))

    p = subparsers.add_parser(
        "compare",
        help="tabulate several evaluation runs side by side with s(m)",
        description="One row per run, one column per task (mean +- 95% CI) and the overall "
        "score s(m) (min-max normalised task scores; see mwmae.evaluation.run).",
    )
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
    p.set_defaults(func=_one_line_errors("compare", _cmd_compare))

    p = subparsers.add_parser(
        "export-heareval",
        help="write embedded tasks in the layout hear-eval-kit's runner reads",
        description="Write every embedded task under EMBEDDINGS (mwmae's layout) to "
        "OUT/<task>/ in heareval 2021.1.3's layout: raw float32 <split>.embeddings.npy, "
        "<split>.embedding-dimensions.json, <split>.target-labels.pkl, and for event tasks "
        "<split>.filename-timestamps.json. `mwmae evaluate` reads both layouts.",
    )
    p.add_argument("embeddings", help="an embedded task folder or a folder of them")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per task)")
    p.set_defaults(func=_one_line_errors("export-heareval", _cmd_export_heareval))
