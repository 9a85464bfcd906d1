"""`mwmae analyze`: attention entropy, PWCCA head similarity and reconstructions of models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  mwmae analyze --model runs/mwmae_tiny --audio data/corpus --out analysis/
  mwmae analyze --model runs/mae_tiny --model runs/mwmae_tiny \\
      --audio tasks/speech_commands --out analysis/ --num-clips 32

outputs (in --out):
  reconstruction_<model>.png          input / masked input / reconstruction per clip
  entropy_<part>.png                  per-layer violins of per-query attention entropy (nats)
  entropy_<part>_normalized.png       the same, divided by ln(window size)
  entropy_heads_<part>.png            mean entropy of every head (layers x heads)
  pwcca_<part>.png                    PWCCA between every pair of head outputs
  analysis.json                       every number in the figures (+ clips, configs)
  analysis_arrays.npz                 per-query entropies and reconstruction arrays
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="look inside models: attention entropy, PWCCA head similarity, reconstructions",
        description="Analyse one or more pretrained models on audio clips: per-head attention "
        "entropy (encoder on the unmasked input, decoder in a masked pretraining pass), PWCCA "
        "similarity between head outputs, and reconstruction figures. Give two models (e.g. "
        "MAE and MW-MAE) to compare them side by side.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH",
        help="pretrained model folder (config.json + model.safetensors); repeat to compare",
    )
    parser.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="display name for each --model, in order (default: family and folder name)",
    )
    parser.add_argument(
        "--audio",
        required=True,
        metavar="DIR_OR_TASK",
        help="folder searched recursively for .wav/.flac/.ogg, or a HEAR task folder "
        "(TASK/16000/<split>/*.wav), or one audio file",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--num-clips",
        type=int,
        default=16,
        metavar="N",
        help="clips to analyse, spread evenly over the sorted file list (default: 16)",
    )
    parser.add_argument(
        "--num-reconstructions",
        type=int,
        default=4,
        metavar="N",
        help="clips shown in the reconstruction figure (default: 4)",
    )
    parser.add_argument(
        "--part",
        choices=["encoder", "decoder", "both"],
        default="both",
        help="which transformer to probe (default: both)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed for crops and masking")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (by default they go to stderr, naming each stage)",
    )
    parser.set_defaults(func=run)


def _labels(args: argparse.Namespace, models: list) -> list[str]:
    from mwmae.analysis.report import model_kind

    if args.label:
        if len(args.label) != len(args.model):
            raise ValueError(f"{len(args.label)} --label for {len(args.model)} --model")
        return list(args.label)
    from mwmae.hub import model_display_name

    return [
        f"{model_kind(m)} ({model_display_name(p)})"
        for m, p in zip(models, args.model, strict=True)
    ]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import mwmae
    from mwmae.analysis.clips import find_audio_files, load_spec_clips, select_evenly
    from mwmae.analysis.probes import PARTS
    from mwmae.analysis.report import (
        analyze_models,
        pretraining_step,
        progress_total,
        write_json,
    )

    if args.num_clips < 2:
        print(
            "error: --num-clips must be at least 2 (PWCCA needs several samples)", file=sys.stderr
        )
        return 2
    if args.batch_size < 1 or args.num_reconstructions < 1:
        print("error: --batch-size and --num-reconstructions must be >= 1", file=sys.stderr)
        return 2
    disable = args.no_progress  # shown on pipes and logs too: a long run must say where it is
    try:
        with tqdm(args.model, desc="loading models", unit="model", disable=disable) as paths:
            models = [mwmae.from_pretrained(p, device=args.device) for p in paths]
        labels = _labels(args, models)
        files = select_evenly(find_audio_files(args.audio), args.num_clips)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = models[0].config
    mismatched = [
        lab
        for lab, m in zip(labels, models, strict=True)
        if (m.config.num_frames, m.config.num_mels) != (config.num_frames, config.num_mels)
    ]
    if mismatched:
        print(f"error: models expect different input sizes: {mismatched}", file=sys.stderr)
        return 2

    with tqdm(total=len(files), desc="loading clips", unit="clip", disable=disable) as bar:
        try:
            clips = load_spec_clips(files, config.num_frames, seed=args.seed, on_clip=bar.update)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    spec, loaded, skipped = clips.spec, clips.paths, clips.skipped
    for path, reason in skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if spec.shape[0] < 2:
        print("error: fewer than 2 clips could be loaded", file=sys.stderr)
        return 2

    parts = PARTS if args.part == "both" else (args.part,)
    total = progress_total(len(models), spec.shape[0], args.batch_size, parts)
    with tqdm(total=total, desc="analysing", unit="step", disable=disable) as bar:
        record = analyze_models(
            dict(zip(labels, models, strict=True)),
            spec,
            args.out,
            parts=parts,
            num_reconstructions=args.num_reconstructions,
            batch_size=args.batch_size,
            seed=args.seed,
            on_step=bar.update,
            valid_frames=clips.valid_frames,
            steps={lab: pretraining_step(p) for lab, p in zip(labels, args.model, strict=True)},
            on_stage=bar.set_description_str,
        )
    for entry, path in zip(record["models"], args.model, strict=True):
        entry["path"] = str(path)
    record = {
        "mwmae_version": mwmae.__version__,
        "audio": str(args.audio),
        "clips": [str(p) for p in loaded],
        "valid_frames": clips.valid_frames,
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
        "num_frames": config.num_frames,
        "seed": args.seed,
        "preprocessing": "log-mel, per-clip normalisation over the whole clip, random "
        f"{config.num_frames}-frame crop (seeded) or zero padding",
        **record,
    }
    out = Path(args.out)
    write_json(record, out / "analysis.json")
    _print_summary(record, out)
    return 0


def _print_summary(record: dict, out: Path) -> None:
    print(f"analysed {len(record['clips'])} clips")
    for entry in record["models"]:
        print(f"\n{entry['label']}  [{entry['path']}]")
        for part, ent in entry["attention_entropy"].items():
            print(
                f"  {part} attention entropy per layer (mean over heads, nats; "
                "normalised by ln window):"
            )
            for layer, (row, nrow) in enumerate(
                zip(ent["mean_entropy"], ent["normalized_entropy"], strict=True)
            ):
                print(
                    f"    layer {layer + 1:2d}: {sum(row) / len(row):6.3f}  "
                    f"({sum(nrow) / len(nrow):.3f})"
                )
        for part, sim in entry["head_similarity"].items():
            ws = sim["window_summary"]
            found = [
                f"{name} {ws[key]:.3f}"
                for key, name in (
                    ("cross_layer_same_window", "same window"),
                    ("cross_layer_different_window", "different windows"),
                )
                if ws[key] is not None
            ]
            if found:
                print(f"  {part} head PWCCA across layers (mean): {', '.join(found)}")
        mse = entry["reconstruction"]["masked_mse"]
        print(f"  reconstruction MSE on masked patches: {sum(mse) / len(mse):.4f}")
    print(f"\nfigures in {out}/:")
    for name in sorted(
        {m["reconstruction"]["figure"] for m in record["models"]} | set(record["figures"].values())
    ):
        print(f"  {name}")
    print(f"numbers: {out / 'analysis.json'}, arrays: {out / record['arrays']}")
