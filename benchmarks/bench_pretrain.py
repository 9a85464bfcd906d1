"""Pretraining-loop throughput and peak memory: MAE vs MW-MAE vs SSAST-style at equal size.

    python benchmarks/bench_pretrain.py [--size tiny] [--batch 8] [--steps 6] [--json out.json]
    python benchmarks/bench_pretrain.py --mfu [--mfu-batch 256] [--mfu-steps 30]   # CUDA only
    python benchmarks/bench_pretrain.py --cache-sweep --data demo_out/data/corpus \
        [--preset mwmae_tiny_cpu] [--batch 32] [--steps 45] [--warmup 5]

Cache sweep (`--cache-sweep`, CPU): the demo's model (`--preset`) in the real loop on `--data`,
today's loop (`data.cache=none`, the preset's workers and threads) against the log-mel cache
(`data.cache=memory`), each with 1 or 2 torch threads and 0 or 1 DataLoader workers, and the
best of those with `train.compile=true`. Every variant runs in its own subprocess in this one
invocation; speed-ups are against `data.cache=none` with the preset's own settings. The time
to fill the cache (decode + log-mel of every clip once) is reported apart from the steps.

Comparison (CPU or GPU): each family (`mae_<size>_4x16`, `mwmae_<size>_4x16`,
`ssast_<size>_4x16`: same encoder; MAE and MW-MAE share the 384-d, 4-block decoder, MW-MAE's
with MW-MHA; the SSAST-style model encodes all 250 tokens and has no decoder blocks) runs the
real loop, `mwmae.pretraining.pretrain` with audio files decoded by DataLoader workers, in its own
subprocess. samples/s counts steps after `--warmup` steps, from the loop's own JSON log
(data loading, forward, backward and AdamW included). Peak memory: on CUDA
`torch.cuda.max_memory_allocated`; on CPU the growth of the process's peak RSS (ru_maxrss) over
the run (model, optimiser state and activations; DataLoader worker processes not included).
Ratios are against MAE measured in the same invocation.

MFU (`--mfu`, needs CUDA; NOT RUN in development, where no GPU was available: treat the numbers
it prints as unverified until checked on a GPU): `mwmae_base_4x16` at batch >= 256 with bf16
autocast, without and with `torch.compile`, (a) model-only steps on in-memory spectrograms and
(b) the real loop on log-mel shards. MFU = model FLOPs per sample (counted analytically by
`benchmarks/flops.py: model_flops_per_sample`: matmuls, windowed attention counted at its window
size, training = 3x forward) x samples/s / the measured bf16 matmul peak of the device (a timed
8192^3 bf16 matmul).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("mae", "mwmae", "ssast")


def make_corpus(folder: Path, clips: int, seconds: float, seed: int = 0) -> Path:
    """Noisy harmonic tones as 16 kHz wav files (pure numpy)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    for i in range(clips):
        f0 = rng.uniform(100, 800)
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
        x = 0.2 * x * np.exp(-t * rng.uniform(0.1, 1.0)) + 0.02 * rng.standard_normal(n)
        sf.write(folder / f"clip{i:04d}.wav", x.astype(np.float32), 16000)
    return folder


def bench_config(
    model: str,
    data: str,
    out: str,
    batch: int,
    steps: int,
    workers: int,
    device: str,
    compile_: bool = False,
    threads: int | None = None,
) -> dict:
    return {
        "name": model,
        "seed": 0,
        "model": {"name": model},
        "data": {"source": data, "num_workers": workers},
        "optim": {"base_lr": 1.5e-4},
        "schedule": {"steps": steps, "warmup_steps": 1},
        "batch": {"global_size": batch},
        "train": {"device": device, "compile": compile_, "num_threads": threads},
        "log": {"every": 1, "figure_every": 0, "tensorboard": False},
        "checkpoint": {"every": 0, "keep": 1},
        "output": {"dir": out},
    }


def loop_throughput(run_dir: Path, batch: int, warmup: int) -> float:
    from mwmae.pretraining import load_log

    train = [r for r in load_log(run_dir) if r["event"] == "train"]
    t = {r["step"]: r["elapsed_s"] for r in train}
    last = max(t)
    if warmup >= last:
        raise ValueError(f"--steps must exceed --warmup ({warmup})")
    return (last - warmup) * batch / (t[last] - t[warmup])


def run_one(args: argparse.Namespace) -> dict:
    """Measure one model in this process (called in a subprocess)."""
    from mwmae.pretraining import pretrain

    device = "cuda" if args.device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as out:
        cfg = bench_config(
            args.one,
            args.data,
            out,
            args.batch,
            args.steps,
            args.workers,
            device,
            threads=args.threads,
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_dir = pretrain(cfg, progress=False)
        if device == "cuda":
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        sps = loop_throughput(run_dir, args.batch, args.warmup)
    import mwmae

    params = sum(p.numel() for p in mwmae.create_model(args.one).parameters())
    return {"model": args.one, "samples_per_s": sps, "peak_mb": peak_mb, "params": params}


SWEEP = (  # (data.cache, threads, workers, compile)
    ("none", 2, 1, False),  # the preset's loop before the cache: the baseline
    ("none", 1, 1, False),
    ("none", 2, 0, False),
    ("memory", 1, 0, False),
    ("memory", 2, 0, False),
    ("memory", 1, 1, False),
    ("memory", 2, 1, False),
)


def run_preset(args: argparse.Namespace) -> dict:
    """One cache-sweep variant in this process (called in a subprocess)."""
    from mwmae.pretraining import load_log, pretrain

    cache, threads, workers, compile_ = args.variant.split(",")
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"data.source={args.data}",
            f"data.cache={cache}",
            f"data.num_workers={workers}",
            f"train.num_threads={threads}",
            f"train.compile={compile_}",
            f"schedule.steps={args.steps}",
            f"batch.global_size={args.batch}",
            "log.every=1",
            "log.figure_every=0",
            "log.tensorboard=false",
            "checkpoint.every=0",
            f"output.dir={out}",
        ]
        start = time.perf_counter()
        run_dir = pretrain(args.preset, overrides, progress=False)
        total = time.perf_counter() - start
        sps = loop_throughput(run_dir, args.batch, args.warmup)
        records = load_log(run_dir)
        first = min(r["elapsed_s"] for r in records if r["event"] == "train")
        setup = total - max(r["elapsed_s"] for r in records if r["event"] == "train")
    return {
        "cache": cache,
        "threads": int(threads),
        "workers": int(workers),
        "compile": compile_ == "True",
        "samples_per_s": sps,
        "setup_s": setup,
        "first_step_s": first,
        "wall_s": total,
    }


def _subprocess_json(cmd: list[str], what: str) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cache_sweep(args: argparse.Namespace) -> dict:
    if not args.data:
        raise SystemExit("--cache-sweep needs --data (e.g. demo_out/data/corpus)")
    base = [sys.executable, __file__, "--preset", args.preset, "--data", args.data]
    base += ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    rows = []
    for cache, threads, workers, compile_ in SWEEP:
        variant = f"{cache},{threads},{workers},{compile_}"
        rows.append(_subprocess_json([*base, "--variant", variant], variant))
    best = max((r for r in rows if r["cache"] == "memory"), key=lambda r: r["samples_per_s"])
    variant = f"memory,{best['threads']},{best['workers']},True"
    try:
        rows.append(_subprocess_json([*base, "--variant", variant], variant))
    except RuntimeError as exc:  # torch.compile needs a working C++ toolchain on CPU
        rows.append({"cache": "memory", "compile": True, "error": str(exc)[-500:]})
    baseline = rows[0]["samples_per_s"]
    for r in rows:
        if "samples_per_s" in r:
            r["speed_vs_baseline"] = r["samples_per_s"] / baseline
    return {
        "benchmark": "pretrain_cache_sweep",
        "preset": args.preset,
        "data": args.data,
        "batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": rows,
    }


def _print_sweep(result: dict) -> None:
    print(
        f"pretraining loop, {result['preset']} on {result['data']}, batch {result['batch']}, "
        f"{result['steps'] - result['warmup_steps']} timed steps, {result['cpu_count']} CPUs"
    )
    print(
        f"{'data.cache':<11}{'threads':>8}{'workers':>8}{'compile':>8}{'samples/s':>11}"
        f"{'vs none':>9}{'set-up s':>10}"
    )
    for r in result["results"]:
        if "error" in r:
            print(f"{r['cache']:<11}{'':>8}{'':>8}{'True':>8}  failed: {r['error'][-120:]}")
            continue
        print(
            f"{r['cache']:<11}{r['threads']:>8}{r['workers']:>8}{r['compile']!s:>8}"
            f"{r['samples_per_s']:>11.1f}{r['speed_vs_baseline']:>9.2f}{r['setup_s']:>10.1f}"
        )


def compare(args: argparse.Namespace) -> dict:
    device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(make_corpus(Path(tmp) / "audio", args.clips, args.seconds))
        results = []
        for fam in FAMILIES:
            name = f"{fam}_{args.size}_4x16"
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                "--data",
                data,
                "--device",
                device,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--workers",
                str(args.workers),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = results[0]
    for r in results:
        r["speed_vs_mae"] = r["samples_per_s"] / base["samples_per_s"]
        r["memory_vs_mae"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else None
    return {
        "benchmark": "pretrain_loop",
        "device": device,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "workers": args.workers,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
    }


# --------------------------------------------------------------------------------------------
# GPU: MFU (untested in development: no GPU was available)
# --------------------------------------------------------------------------------------------
def measured_bf16_peak(n: int = 8192, iters: int = 20) -> float:
    """Achieved bf16 matmul FLOP/s on this GPU (the MFU denominator)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start)


def model_only_throughput(
    name: str, batch: int, steps: int, warmup: int, compile_: bool
) -> tuple[float, float]:
    """(samples/s, peak MB) of forward+backward+fused AdamW on in-memory spectrograms."""
    import mwmae
    from mwmae.training import build_optimizer

    torch.manual_seed(0)
    model = mwmae.create_model(name).cuda()
    opt = build_optimizer(model, lr=1e-4, fused=True)
    fwd = torch.compile(model) if compile_ else model
    spec = torch.randn(batch, 1, 200, 80, device="cuda")
    gen = torch.Generator().manual_seed(0)
    torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        noise = model.masking_noise(batch, generator=gen).cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(spec, noise=noise).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**20


def mfu(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--mfu needs a CUDA GPU")
    from flops import model_flops_per_sample

    import mwmae
    from mwmae.data import find_audio_files, write_shards
    from mwmae.pretraining import pretrain

    name = "mwmae_base_4x16"
    config = mwmae.create_model(name).config
    flops = model_flops_per_sample(config)["total"]
    flops_dense = model_flops_per_sample(config, windowed_attention=False)["total"]
    peak = measured_bf16_peak()
    rows = []
    workers = args.workers or max(1, (os.cpu_count() or 2) - 2)
    with tempfile.TemporaryDirectory() as tmp:
        audio = make_corpus(Path(tmp) / "audio", max(args.mfu_batch, 256), 10.0)
        shards = Path(tmp) / "shards"
        write_shards(find_audio_files(audio), shards, logmel=True, samples_per_shard=256)
        for compile_ in (False, True):
            sps, mem = model_only_throughput(
                name, args.mfu_batch, args.mfu_steps, 5 if compile_ else 3, compile_
            )
            rows.append(
                {
                    "loop": "model_only",
                    "compile": compile_,
                    "samples_per_s": sps,
                    "peak_mb": mem,
                    "mfu": flops * sps / peak,
                    "mfu_dense_attention_flops": flops_dense * sps / peak,
                }
            )
            cfg = bench_config(
                name,
                str(shards),
                tmp + "/runs",
                args.mfu_batch,
                args.mfu_steps + 5,
                workers,
                "cuda",
                compile_,
            )
            cfg["output"]["run_name"] = f"compile_{compile_}"
            torch.cuda.reset_peak_memory_stats()
            run_dir = pretrain(cfg, progress=False)
            sps = loop_throughput(run_dir, args.mfu_batch, 5)
            rows.append(
                {
                    "loop": "pretrain (log-mel shards)",
                    "compile": compile_,
                    "samples_per_s": sps,
                    "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                    "mfu": flops * sps / peak,
                    "mfu_dense_attention_flops": flops_dense * sps / peak,
                }
            )
    return {
        "benchmark": "pretrain_mfu",
        "model": name,
        "batch": args.mfu_batch,
        "device": torch.cuda.get_device_name(),
        "measured_bf16_peak_tflops": peak / 1e12,
        "flops_per_sample": flops,
        "flops_per_sample_dense_attention": flops_dense,
        "results": rows,
        "note": "GPU path untested during development",
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", help="encoder size of the three presets")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="steps per model (incl. warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    p.add_argument("--clips", type=int, default=24, help="synthetic clips when no --data")
    p.add_argument("--seconds", type=float, default=10.0, help="length of synthetic clips")
    p.add_argument("--data", help="audio folder / manifest / shards instead of synthetic clips")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mfu", action="store_true", help="GPU MFU of mwmae_base_4x16 (CUDA)")
    p.add_argument("--mfu-batch", type=int, default=256)
    p.add_argument("--mfu-steps", type=int, default=30)
    p.add_argument("--cache-sweep", action="store_true", help="log-mel cache x threads x workers")
    p.add_argument("--preset", default="mwmae_tiny_cpu", help="pretraining preset of the sweep")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one cache-sweep variant
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.variant:
        print(json.dumps(run_preset(args)))
        return 0
    if args.cache_sweep:
        result = cache_sweep(args)
        _print_sweep(result)
    elif args.mfu:
        result = mfu(args)
        print(
            f"{result['model']} batch {result['batch']} on {result['device']}: measured bf16 "
            f"peak {result['measured_bf16_peak_tflops']:.0f} TFLOP/s, "
            f"{result['flops_per_sample'] / 1e9:.1f} GFLOP per sample (training)"
        )
        for r in result["results"]:
            print(
                f"  {r['loop']:<28} compile={r['compile']!s:<5} "
                f"{r['samples_per_s']:9.1f} samples/s  {r['peak_mb']:8.0f} MB  "
                f"MFU {100 * r['mfu']:.1f}%"
            )
    else:
        result = compare(args)
        print(
            f"pretraining loop, {result['size']} models, batch {result['batch']}, "
            f"{result['steps'] - result['warmup_steps']} timed steps on {result['device']} "
            f"({result['threads']} threads, {result['workers']} data workers)"
        )
        print(
            f"{'model':<22}{'params':>10}{'samples/s':>12}{'peak MB':>10}"
            f"{'speed/MAE':>11}{'mem/MAE':>9}"
        )
        for r in result["results"]:
            mem = f"{r['memory_vs_mae']:.2f}" if r["memory_vs_mae"] is not None else "n/a"
            print(
                f"{r['model']:<22}{r['params'] / 1e6:>9.2f}M{r['samples_per_s']:>12.2f}"
                f"{r['peak_mb']:>10.1f}{r['speed_vs_mae']:>11.2f}{mem:>9}"
            )
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
