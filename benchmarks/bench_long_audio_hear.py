"""Peak memory of `mwmae.hear.get_scene_embeddings` on one long clip (default: one hour of
16 kHz mono) with a tiny model, above the baseline of the process holding the audio and model.

    python benchmarks/bench_long_audio_hear.py [--minutes 60] [--depth 1] [--embed-dim 48]
        [--chunk-seconds 120] [--json out.json]

The peak is the kernel's resident-set high-water mark (VmHWM), reset with
/proc/self/clear_refs just before the call, so it counts only what the call adds on top of the
audio (230 MB for an hour) and the model. Linux only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from _proc import reset_peak, status_kb


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, default=48)
    parser.add_argument("--chunk-seconds", type=float, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import mwmae
    from mwmae import hear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mwmae.create_model(
        "mwmae_tiny_4x16",
        depth=args.depth,
        decoder_depth=1,
        embed_dim=args.embed_dim,
        num_heads=2 if args.embed_dim % 3 else 3,
    )
    hear_model = hear.HEARModel(model.eval())
    if args.chunk_seconds is not None:
        hear_model.chunk_seconds = args.chunk_seconds
    n_samples = int(args.minutes * 60 * 16000)
    audio = torch.randn(1, n_samples).mul_(0.1)
    hear.get_scene_embeddings(audio[:, : 16000 * 10], hear_model)  # warm-up (allocator, caches)
    if not reset_peak():
        raise RuntimeError("/proc/self/clear_refs: cannot reset the peak resident memory")
    baseline_kb = status_kb("VmHWM", required=True)
    start = time.perf_counter()
    scene = hear.get_scene_embeddings(audio, hear_model)
    seconds = time.perf_counter() - start
    peak_kb = status_kb("VmHWM", required=True)
    result = {
        "minutes_of_audio": args.minutes,
        "audio_mb": audio.numel() * 4 / 1e6,
        "model": f"mwmae_tiny_4x16 depth={args.depth} embed_dim={args.embed_dim}",
        "chunk_seconds": hear_model.chunk_seconds,
        "baseline_rss_mb": baseline_kb / 1024,
        "peak_above_baseline_mb": (peak_kb - baseline_kb) / 1024,
        "seconds": seconds,
        "scene_shape": list(scene.shape),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
