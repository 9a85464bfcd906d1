"""`mwmae analyze`: attention entropy, PWCCA head similarity and reconstructions of models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mwmae.commands import add_command

HELP = "look inside models: attention entropy, PWCCA head similarity, reconstructions"
DESCRIPTION = (
    "Analyse one or more pretrained models on audio clips: per-head attention entropy (encoder on "
    "the unmasked input, decoder in a masked pretraining pass), PWCCA similarity between head "
    "outputs, and reconstruction figures. Give two models (e.g. MAE and MW-MAE) to compare them "
    "side by side."
)

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
    raw = argparse.RawDescriptionHelpFormatter  # the epilog keeps its layout
    parser = add_command(
        subparsers, "analyze", run, HELP, DESCRIPTION, epilog=EPILOG, formatter_class=raw
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


def run(args: argparse.Namespace) -> int:
    from mwmae.analysis.report import run_analysis

    record = run_analysis(
        args.model,
        args.audio,
        args.out,
        labels=args.label,
        num_clips=args.num_clips,
        num_reconstructions=args.num_reconstructions,
        part=args.part,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        # Shown on pipes and logs too: a long run must say where it is.
        progress=not args.no_progress,
        on_skipped=lambda path, reason: print(
            f"warning: skipped {path}: {reason}", file=sys.stderr
        ),
    )
    _print_summary(record, Path(args.out))
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
