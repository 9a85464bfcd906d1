"""Per-batch cost of reading prepared crops, for A/B runs of two versions of the code.

    PYTHONPATH=src python benchmarks/bench_crop_reads.py [--work /tmp/crop_reads] [--json out]

Makes (once, under `--work`) 200 synthetic 10 s clips and two prepared sets of them, 50 clips
per shard and 1 clip per shard, then times with one torch thread, best of `--repeat` rounds:
`PretrainDataset.__getitems__` of 256 crops (read, normalised, checked: a loader worker's
batch) and `PreparedSource.read_crops` of 256 random crops over the 200 one-clip shards (with
`--max-open N`: N shard files kept open). For an A/B, run it with `PYTHONPATH` pointing at
each version's `src` (e.g. `git archive REV src | tar -x -C /tmp/rev`), alternately.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def make_sets(work: Path) -> tuple[Path, Path]:
    import soundfile as sf

    from mwmae.data import find_audio_files, write_shards

    audio, sets = work / "audio", (work / "prepared50", work / "prepared1")
    if not all((s / "shards.json").is_file() for s in sets):
        audio.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(200):
            x = (0.1 * rng.standard_normal(160000)).astype(np.float32)
            sf.write(audio / f"c{i:03d}.wav", x, 16000)
        files = find_audio_files(audio)
        for folder, per_shard in zip(sets, (50, 1), strict=True):
            write_shards(files, folder, samples_per_shard=per_shard, root=audio, content="prepared")
    return sets


def best_ms(fn, rounds: int, calls: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/crop_reads"))
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument(
        "--max-open", type=int, default=0, help="shard files kept open (0: default)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from mwmae.data import PretrainDataset, build_source

    torch.set_num_threads(1)
    batch_set, spread_set = make_sets(args.work)
    dataset = PretrainDataset(build_source(batch_set), 200, seed=0)
    items = [(0, i % len(dataset)) for i in range(256)]
    spread = build_source(spread_set)
    if args.max_open:
        spread.files.max_open = args.max_open
    rng = np.random.default_rng(0)
    out = np.empty((256, 200, 80), np.float16)

    def random_reads() -> None:
        clips = rng.integers(0, len(spread), 256)
        spread.read_crops(clips, np.full(256, 100), 200, out)

    result = {
        "getitems_256_ms": best_ms(lambda: dataset.__getitems__(items), args.repeat, 20),
        "read_crops_256_random_ms": best_ms(random_reads, args.repeat, 20),
        "shards": len(spread.shards),
        "max_open": spread.files.max_open,
    }
    print(
        f"__getitems__ of 256 crops: {result['getitems_256_ms']:.2f} ms; read_crops of 256 random "
        f"crops over {result['shards']} shards, {result['max_open']} open: "
        f"{result['read_crops_256_random_ms']:.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
