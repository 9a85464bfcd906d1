"""Peak memory of reading one long audio file: pretraining data loading and prepare-shards.

    python benchmarks/bench_long_audio.py [--hours 1] [--part data shards whole] [--json out.json]

Makes one mono 16 kHz FLOAT file of `--hours` (a sine plus noise, written in 10 s blocks, so
making it needs little memory), then measures each part in its own fresh process: the growth of
the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs just before the
part; ru_maxrss where that is not available) above its resident memory after the imports.

- `data`: `build_source` on the folder (the file is listed once with its frame count and cut
  into `data.clip_seconds` clips) and `PretrainDataset[i]` for every clip (each clip read by
  seeking, log-mel, normalised, cropped), as the pretraining loop's workers do;
- `shards`: `write_shards` of the folder (audio shards: every clip stored, each read by seeking);
- `whole`: for comparison, `features.load_audio` of the whole file (what a whole-file read
  costs; not used by pretraining any more).

Other parts (the HEAR module and embedding of long audio) can be added to `PARTS`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import reset_peak, status_kb, write_long_file

SR = 16000


def part_data(folder: Path) -> dict:
    from mwmae.data import PretrainDataset, build_source

    ds = PretrainDataset(build_source(folder), num_frames=200)
    for i in range(len(ds)):
        assert ds[i]["spec"].shape == (1, 200, 80)
    return {"clips": len(ds)}


def part_shards(folder: Path) -> dict:
    from mwmae.data import find_audio_files, write_shards

    with tempfile.TemporaryDirectory() as out:
        summary = write_shards(find_audio_files(folder), out)
    return {"clips": summary["num_clips"]}


def part_whole(folder: Path) -> dict:
    from mwmae import features

    wave = features.load_audio(next(folder.glob("*.wav")))
    return {"samples": int(wave.shape[0])}


PARTS = {"data": part_data, "shards": part_shards, "whole": part_whole}


def measure(part: str, folder: Path) -> dict:
    """Run one part in this process; resident memory figures in MB."""
    import torch  # noqa: F401  (imported before the baseline, as in a real run)

    import mwmae.data  # noqa: F401

    reset = reset_peak()
    base_kb = status_kb("VmRSS") or 0
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = PARTS[part](folder)
    elapsed = time.perf_counter() - started
    peak_kb = status_kb("VmHWM") if reset else None
    if peak_kb is None:
        peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base_peak)
    return {
        "part": part,
        "peak_above_baseline_mb": round((peak_kb - base_kb) / 1024, 1),
        "baseline_rss_mb": round(base_kb / 1024, 1),
        "seconds": round(elapsed, 2),
        "peak_source": "VmHWM" if reset else "ru_maxrss",
        **out,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--part", nargs="+", default=["data", "shards"], choices=sorted(PARTS))
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: PART FOLDER
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], Path(args.one[1]))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        write_long_file(folder / "long.wav", args.hours * 3600)
        size_mb = (folder / "long.wav").stat().st_size / 2**20
        print(f"file: {args.hours:g} h, 16 kHz mono float32, {size_mb:.0f} MB on disk")
        for part in args.part:
            cmd = [sys.executable, __file__, "--one", part, str(folder)]
            line = (
                subprocess.run(
                    cmd, check=True, capture_output=True, text=True, env=dict(os.environ)
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            res = json.loads(line)
            unit = "clips" if "clips" in res else "samples"
            results.append(res)
            print(
                f"{part:7s} peak above baseline {res['peak_above_baseline_mb']:7.1f} MB  "
                f"(baseline RSS {res['baseline_rss_mb']:.0f} MB, {res['seconds']:.1f} s, "
                f"{res.get('clips', res.get('samples'))} {unit})"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
