"""Peak memory of loading a fine-tuning task whose clips include one long file.

    python benchmarks/bench_finetune_memory.py [--hours 1 2] [--sample-rate 16000] [--json out]

Writes a CSV manifest task to a temporary folder: 16 short clips (1-3 s tones, 16 kHz; train 8,
valid 4, test 4) and, for each case but the first, one long clip in the train split (a sine plus
noise at `--sample-rate`, 16-bit PCM, written 10 s at a time so that making it needs little
memory). Each case runs in its own fresh process and measures what `finetune` does before
training: `load_finetune_task` and `load_task_spectrograms` (every clip's normalised log-mel,
long files read chunk by chunk). Reported: the growth of the process's peak resident memory
(VmHWM, reset through /proc/self/clear_refs just before loading; ru_maxrss where that is not
available) above its resident memory after the imports, the time taken, and the size of the
spectrograms kept (the result itself: 80 float32 values per 10 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _proc import reset_peak, status_kb, write_long_file

SR = 16000


def write_task(folder: Path, long_hours: float, long_rate: int) -> Path:
    """The manifest of the short clips, plus a long train clip when `long_hours` > 0."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i, split in enumerate(["train"] * 8 + ["valid"] * 4 + ["test"] * 4):
        label, freq = ("low", 200.0) if i % 2 else ("high", 2000.0)
        t = np.arange(int(SR * (1 + i % 3))) / SR
        x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(folder / f"c{i:02d}.wav", x.astype(np.float32), SR)
        rows.append(f"c{i:02d}.wav,{label},{split}")
    if long_hours > 0:
        write_long_file(folder / "long.wav", long_hours * 3600, long_rate, subtype="PCM_16", seed=1)
        rows.append("long.wav,low,train")
    manifest = folder / "task.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def measure(manifest: Path) -> dict:
    """Load the task in this process; resident memory figures in MB."""
    import resource

    import torch  # noqa: F401  (imported before the baseline, as in a real run)

    from mwmae.finetuning.data import load_finetune_task, load_task_spectrograms

    reset = reset_peak()
    base_kb = status_kb("VmRSS") or 0
    base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cache = load_task_spectrograms(load_finetune_task(manifest))
    elapsed = time.perf_counter() - started
    peak_kb = status_kb("VmHWM") if reset else None
    if peak_kb is None:
        peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base_peak)
    kept = sum(s.numel() * s.element_size() for s in cache.values())
    return {
        "peak_above_baseline_mb": round((peak_kb - base_kb) / 1024, 1),
        "baseline_rss_mb": round(base_kb / 1024, 1),
        "spectrograms_mb": round(kept / 2**20, 1),
        "seconds": round(elapsed, 2),
        "clips": len(cache),
        "peak_source": "VmHWM" if reset else "ru_maxrss",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=float, nargs="+", default=[1.0, 2.0], help="long clips")
    p.add_argument("--sample-rate", type=int, default=SR, help="of the long clip")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: a manifest
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    results = []
    for hours in [0.0, *args.hours]:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = write_task(Path(tmp), hours, args.sample_rate)
            cmd = [sys.executable, __file__, "--one", str(manifest)]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
            res = {"long_clip_hours": hours, **json.loads(run.stdout.strip().splitlines()[-1])}
        results.append(res)
        case = f"one {hours:g} h clip at {args.sample_rate} Hz" if hours else "no long clip"
        print(
            f"{case:26s} peak above baseline {res['peak_above_baseline_mb']:7.1f} MB  "
            f"(spectrograms {res['spectrograms_mb']:.0f} MB, baseline RSS "
            f"{res['baseline_rss_mb']:.0f} MB, {res['seconds']:.1f} s, {res['clips']} clips)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
