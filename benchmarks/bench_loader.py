"""Pretraining loader rate per core for each source kind, and the clip index at AudioSet scale.

    python benchmarks/bench_loader.py [--clips 1000] [--seconds 10] [--json out.json]
    python benchmarks/bench_loader.py --scale 2032320 [--json out.json]

Rate (the default): makes `--clips` synthetic clips of `--seconds` s at 16 kHz (tones, chirps
and noise, FLAC) in a temporary folder, prepares them as audio shards (`prepare-shards
--audio`), prepared shards (the default) and, for comparison, audio shards without their
statistics (whole clips read, as before) and float32 log-mel shards (`--logmel`), then
measures, each in a fresh process, `PretrainDataset` + `make_loader` (batch `--batch`,
200-frame crops, the recipe's per-clip normalisation) over each: first on one core (1 torch
thread, num_workers=0), then with `--workers` loader workers. The `_gpu_features` rows measure
what the loader does when training on CUDA (`features_on="device"`: raw crops, their log-mel
and normalisation left to the training process's GPU and not timed here). Each row gives
clips/s (wall clock, after the first batch, for `--time` s), clips per CPU-second (the CPU time
of the process and its workers: what a core gives when no other work shares it), bytes read per
clip (`rchar`: reads from the page cache included) and peak resident memory; with `--repeat R`,
the best of R runs (on a shared machine, the least disturbed one). Also the CPU cost of a
step's masking noise at batch 1024 (a (1024, 250) uniform draw from a generator seeded by
(seed, step)), and the cores one H100 needs to feed `mwmae_base_4x16` at 45% MFU.

Scale (`--scale N`): writes a prepared shard set whose index describes N clips of 1001 frames
(1000 per shard; every clip of a shard points at the same real 1001 log-mel rows, so the files
stay small), then measures (a) the time to open it (`build_source`, one core), once alone and
as `--ranks` processes at once, as every rank of a launch does, and (b) a loader with
`--scale-workers` workers over it for `--scale-batches` batches: each worker's resident memory
after the first batch and at the end, its peak, and its private (copied) pages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _proc import private_kb, status_kb

SR = 16000
H100_BF16_FLOPS = 989e12  # dense bf16 datasheet peak
MFU = 0.45


# ---- corpus ---------------------------------------------------------------------------------
def make_corpus(folder: Path, clips: int, seconds: float) -> list[Path]:
    """`clips` FLAC files of `seconds` s: a harmonic tone, a chirp and noise at random levels."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    paths = []
    for i in range(clips):
        f0, f1 = rng.uniform(80, 800), rng.uniform(200, 4000)
        chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        noise = rng.uniform(0.001, 0.05) * rng.standard_normal(t.size)
        x = rng.uniform(0.05, 0.3) * (tone + chirp) + noise
        path = folder / f"clip{i:05d}.flac"
        sf.write(path, (x / max(1.0, np.abs(x).max())).astype(np.float32), SR)
        paths.append(path)
    return paths


# ---- /proc ----------------------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _worker_pids(iterator: Any) -> list[int]:
    return [w.pid for w in getattr(iterator, "_workers", [])]


# ---- measurements (each in a fresh process) -------------------------------------------------
def child_rate(
    source: str, workers: int, batch: int, seconds: float, features_on: str = "worker"
) -> dict[str, Any]:
    import torch

    from mwmae.data import EpochBatchSampler, PretrainDataset, build_source, make_loader

    torch.set_num_threads(1)
    dataset = PretrainDataset(build_source(source), 200, seed=0, features_on=features_on)
    sampler = EpochBatchSampler(len(dataset), batch, seed=0, total_steps=1_000_000)
    iterator = iter(make_loader(dataset, sampler, num_workers=workers))
    next(iterator)  # start-up (workers, first reads) left out
    pids = [os.getpid(), *_worker_pids(iterator)]
    read0, cpu0 = sum(_rchar(p) for p in pids), sum(_cpu_s(p) for p in pids)
    start, clips = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        clips += len(next(iterator)["index"])
    elapsed = time.perf_counter() - start
    read, cpu = sum(_rchar(p) for p in pids) - read0, sum(_cpu_s(p) for p in pids) - cpu0
    peaks = [status_kb("VmHWM", p, required=True) for p in pids]
    del iterator
    return {
        "clips_per_s": clips / elapsed,
        "clips_per_cpu_s": clips / cpu,
        "bytes_per_clip": read / clips,
        "peak_rss_mb": peaks[0] / 1024,
        "worker_peak_rss_mb": max(peaks[1:], default=0) / 1024,
        "clips_timed": clips,
    }


def child_noise(batch: int, repeats: int) -> dict[str, Any]:
    import torch

    import mwmae
    from mwmae.pretraining.loop import masking_noise

    torch.set_num_threads(1)
    model = mwmae.create_model("mwmae_tiny_4x16")  # the 4x16 grid: 250 patches, as base
    times = []
    for step in range(repeats):
        start = time.perf_counter()
        noise = masking_noise(model, 0, step, batch)
        times.append(time.perf_counter() - start)
    return {"batch": batch, "shape": list(noise.shape), "ms_median": 1e3 * float(np.median(times))}


def child_open(source: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from mwmae.data import build_source

    start, cpu = time.perf_counter(), time.process_time()
    src = build_source(source)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    rss = status_kb("VmRSS", os.getpid(), required=True) / 1024
    return {"clips": len(src), "open_s": seconds, "open_cpu_s": cpu, "rss_mb": rss}


def child_scale_loader(source: str, workers: int, batches: int, batch: int) -> dict[str, Any]:
    import torch

    from mwmae.data import EpochBatchSampler, PretrainDataset, build_source, make_loader

    torch.set_num_threads(1)
    dataset = PretrainDataset(build_source(source), num_frames=200, seed=0)
    sampler = EpochBatchSampler(len(dataset), batch, seed=0, total_steps=batches + 1)
    iterator = iter(make_loader(dataset, sampler, num_workers=workers))
    next(iterator)
    pids = _worker_pids(iterator)
    first = [(status_kb("VmRSS", p, required=True), private_kb(p)) for p in pids]
    start = time.perf_counter()
    for _ in range(batches - 1):
        next(iterator)
    elapsed = time.perf_counter() - start
    last = [(status_kb("VmRSS", p, required=True), private_kb(p)) for p in pids]
    peaks = [status_kb("VmHWM", p, required=True) for p in pids]
    growth = [(b[0] - a[0]) / 1024 for a, b in zip(first, last, strict=True)]
    private_growth = [(b[1] - a[1]) / 1024 for a, b in zip(first, last, strict=True)]
    return {
        "workers": workers,
        "batches": batches,
        "batch": batch,
        "clips_per_s": (batches - 1) * batch / elapsed,
        "main_rss_mb": status_kb("VmRSS", os.getpid(), required=True) / 1024,
        "worker_rss_first_mb": [a[0] / 1024 for a in first],
        "worker_peak_rss_mb": [p / 1024 for p in peaks],
        "worker_rss_growth_mb": growth,
        "worker_private_growth_mb": private_growth,
        "worker_private_last_mb": [b[1] / 1024 for b in last],
    }


CHILDREN = {
    "rate": child_rate,
    "noise": child_noise,
    "open": child_open,
    "scale_loader": child_scale_loader,
}


def in_child(kind: str, **kwargs: Any) -> dict[str, Any]:
    """Run a measurement in a fresh process (its own peak memory, no warm caches of ours)."""
    cmd = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **kwargs})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_children_at_once(kind: str, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--child", json.dumps({"kind": kind, **kwargs})]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


# ---- the two parts --------------------------------------------------------------------------
SOURCES = {  # row -> (folder, content written by write_shards, statistics kept, features_on)
    "flac_folder": ("flac_folder", None, True, "worker"),
    "audio_shards": ("audio_shards", "audio", True, "worker"),
    "prepared_shards": ("prepared_shards", "prepared", True, "worker"),
    # on CUDA the loader returns raw crops and the training process computes their features
    "audio_shards_gpu_features": ("audio_shards", None, True, "device"),
    "prepared_shards_gpu_features": ("prepared_shards", None, True, "device"),
    "audio_shards_whole_clip": ("audio_whole", "audio", False, "worker"),  # as before stats
    "logmel_shards": ("logmel_shards", "logmel", True, "worker"),  # the older --logmel format
}


def _strip_statistics(folder: Path) -> None:
    for sidecar in folder.glob("*.index.json"):
        meta = json.loads(sidecar.read_text())
        meta.pop("stats", None)
        sidecar.write_text(json.dumps(meta))


def run_rates(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from mwmae.data import write_shards

    start = time.perf_counter()
    paths = make_corpus(tmp / "flac_folder", args.clips, args.seconds)
    made = time.perf_counter() - start
    prepare_s = {}
    for folder, content, stats, _ in SOURCES.values():
        if content is not None:
            start = time.perf_counter()
            write_shards(paths, tmp / folder, content=content, samples_per_shard=256, num_workers=2)
            prepare_s[folder] = time.perf_counter() - start
            if not stats:
                _strip_statistics(tmp / folder)
    rows = []
    for key, (folder, _, _, features_on) in SOURCES.items():
        for workers in (0, args.workers):
            runs = [
                in_child(
                    "rate",
                    source=str(tmp / folder),
                    workers=workers,
                    batch=args.batch,
                    seconds=args.time,
                    features_on=features_on,
                )
                for _ in range(args.repeat)
            ]
            best = max(runs, key=lambda r: r["clips_per_cpu_s"])  # the least disturbed run
            rows.append({"source": key, "workers": workers, **best, "runs": runs})
            print(_row_text(rows[-1]), flush=True)
    noise = in_child("noise", batch=1024, repeats=50)
    return {"corpus_s": made, "prepare_s": prepare_s, "rows": rows, "noise": noise}


def write_scale_set(out: Path, clips: int, per_shard: int = 1000) -> None:
    """A prepared set whose index describes `clips` clips of 1001 frames; every clip of a shard
    points at the shard's one real block of 1001 log-mel rows."""
    from mwmae.data.prepare import logmel_rows, write_prepared_tar

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = rng.normal(-8.0, 3.0, (1001, 80)).astype(np.float16)
    mean, std = float(rows.astype(np.float64).mean()), float(rows.astype(np.float64).std())
    shards = []
    for k in range(math.ceil(clips / per_shard)):
        n = min(per_shard, clips - k * per_shard)
        names = [f"audioset/{k * per_shard + i:07d}.flac" for i in range(n)]
        path = out / f"shard-{k:06d}.tar"
        frames = np.full(n, 1001, dtype=np.int64)
        write_prepared_tar(
            path,
            frames,
            np.zeros(n, dtype=np.int64),
            [mean] * n,
            [std] * n,
            names,
            logmel_rows(rows),
        )
        shards.append({"name": path.name, "count": n, "size": path.stat().st_size})
    summary = {
        "format": "mwmae-shards",
        "version": 1,
        "content": "prepared",
        "num_clips": clips,
        "shards": shards,
    }
    (out / "shards.json").write_text(json.dumps(summary))


def run_scale(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    start = time.perf_counter()
    folder = tmp / "scale"
    write_scale_set(folder, args.scale)
    made = time.perf_counter() - start
    alone = in_child("open", source=str(folder))
    print(
        f"open {alone['clips']:,} clips alone: {alone['open_s']:.2f} s "
        f"({alone['open_cpu_s']:.2f} CPU-s)",
        flush=True,
    )
    together = in_children_at_once("open", args.ranks, source=str(folder))
    times = ", ".join(f"{r['open_s']:.2f} s ({r['open_cpu_s']:.2f} CPU-s)" for r in together)
    print(f"open as {args.ranks} ranks at once: {times}", flush=True)
    loader = in_child(
        "scale_loader",
        source=str(folder),
        workers=args.scale_workers,
        batches=args.scale_batches,
        batch=args.batch,
    )
    print(
        f"loader, {loader['workers']} workers, {loader['batches']} batches of {loader['batch']}: "
        f"RSS growth per worker max {max(loader['worker_rss_growth_mb']):.1f} MB, "
        f"private growth max {max(loader['worker_private_growth_mb']):.1f} MB, "
        f"peak max {max(loader['worker_peak_rss_mb']):.0f} MB",
        flush=True,
    )
    return {
        "clips": args.scale,
        "write_s": made,
        "open_alone": alone,
        "open_ranks": together,
        "loader": loader,
    }


# ---- report ---------------------------------------------------------------------------------
def _row_text(row: dict[str, Any]) -> str:
    return (
        f"| {row['source']} | {row['workers'] or '0 (1 core)'} | {row['clips_per_s']:,.0f} | "
        f"{row['clips_per_cpu_s']:,.0f} | {row['bytes_per_clip'] / 1e3:,.1f} KB | "
        f"{row['peak_rss_mb']:.0f} MB | {row['worker_peak_rss_mb']:.0f} MB |"
    )


def cores_per_gpu(result: dict[str, Any]) -> dict[str, Any]:
    """What one H100 consumes for mwmae_base_4x16 at 45% MFU, and the cores that takes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from flops import model_flops_per_sample

    import mwmae

    flops = model_flops_per_sample(mwmae.create_model("mwmae_base_4x16").config)["total"]
    needed = MFU * H100_BF16_FLOPS / flops
    cores = {  # at the rate per CPU-second: what one core gives when it is not shared
        r["source"]: needed / r["clips_per_cpu_s"] for r in result["rows"] if r["workers"] == 0
    }
    return {"gflop_per_sample": flops / 1e9, "samples_per_s": needed, "cores": cores}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--time", type=float, default=4.0, help="seconds timed per row")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the best is reported")
    p.add_argument("--scale", type=int, default=0, help="clips of the scale index (0: off)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--scale-workers", type=int, default=8)
    p.add_argument("--scale-batches", type=int, default=1000)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec.pop("kind")](**spec)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.scale:
            result = {"scale": run_scale(args, Path(tmp))}
        else:
            print(
                "| source | workers | clips/s | clips per CPU-s | read per clip | peak RSS "
                "| worker peak RSS |"
            )
            print("|---|---|---|---|---|---|---|")
            result = run_rates(args, Path(tmp))
            result["h100"] = cores_per_gpu(result)
            h100 = result["h100"]
            print(f"masking noise (1024, 250) on the CPU: {result['noise']['ms_median']:.2f} ms")
            print(
                f"one H100 at {MFU:.0%} MFU: {h100['gflop_per_sample']:.1f} GFLOP/sample -> "
                f"{h100['samples_per_s']:,.0f} samples/s; cores at the 1-core rates: "
                + ", ".join(f"{k} {v:.1f}" for k, v in h100["cores"].items())
            )
    result["argv"] = sys.argv[1:]
    result["peak_rss_mb_driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
