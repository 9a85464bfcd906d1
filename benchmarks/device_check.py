"""One-command GPU check: training MFU and memory, evaluator, DDP, data loader, embeddings.

    python benchmarks/device_check.py --out device_check/            # one H100/H200, < 8 min
    python benchmarks/device_check.py --out /tmp/dc --smoke          # same code paths, tiny, CPU
    python benchmarks/device_check.py --out dc2 --parts train --train-budget 420   # rerun a part

Parts (each independent: a failure is recorded as error text in the JSON and the rest go on;
each has a time budget, checked between measurements, so the whole stays under ~8 minutes):
  environment  torch / CUDA / GPU, whether FlexAttention and torch.compile work
  train        steps/s, samples/s, MFU and peak memory of mwmae_base_4x16 (each MW-MHA kernel)
               and mae_base_4x16, bf16 autocast, eager and torch.compile, at batch 256 and at
               the largest batch that fits (doubling search, OOM caught). MFU = analytic FLOPs
               (benchmarks/flops.py: model_flops_per_sample, windowed attention at window size) x
               samples/s over the datasheet peak (--peak-tflops) and over a bf16 matmul peak
               measured in this run
  evaluator    batched probe (10 seeds x grid) vs the sequential loop on 20,000 x 3,840
               synthetic embeddings (sequential extrapolated from the members it had time for)
  ddp          two pretraining steps under `torchrun --nproc_per_node 1` (nccl; gloo in smoke)
  loader       clips/s of the pretraining loader to the device, prepared and audio shards
  embeddings   clips/s of mwmae.embeddings.timestamp_embeddings with the base model

Writes OUT/device_check.json and OUT/device_check.md; prints progress and the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # probe_oracle
from bench_pretrain import make_corpus  # noqa: E402  (synthetic audio, shared with that bench)

KERNELS = ("grouped", "dense", "flex")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: the GPU run, or --smoke (tiny, CPU)."""

    device: str
    models: tuple[str, ...] = ("mwmae_base_4x16", "mae_base_4x16")
    model_overrides: tuple[tuple[str, int], ...] = ()
    batch: int = 256
    max_batch: int = 8192
    steps: int = 10
    warmup: int = 3
    compile: bool = True
    autocast: bool = True
    matmul_n: int = 8192
    eval_rows: int = 20000
    eval_valid: int = 5000
    eval_dim: int = 3840
    eval_classes: int = 20
    eval_seeds: int = 10
    eval_epochs: int = 10
    ddp_backend: str = "nccl"
    loader_clips: int = 512
    loader_seconds: float = 10.0
    loader_workers: tuple[int, ...] = (8, 16)
    loader_batch: int = 256
    loader_steps: int = 12
    embed_model: str = "mwmae_base_4x16"
    embed_clips: int = 256
    embed_seconds: float = 10.0


GPU = Sizes(device="cuda")
SMOKE = Sizes(
    device="cpu",
    models=("mwmae_tiny_4x16", "mae_tiny_4x16"),
    model_overrides=(("depth", 1), ("decoder_depth", 1)),
    batch=2,
    max_batch=4,
    steps=1,
    warmup=1,
    compile=False,
    autocast=False,
    matmul_n=512,
    eval_rows=300,
    eval_valid=100,
    eval_dim=32,
    eval_classes=4,
    eval_seeds=2,
    eval_epochs=2,
    ddp_backend="gloo",
    loader_clips=8,
    loader_seconds=2.5,
    loader_workers=(2,),
    loader_batch=4,
    loader_steps=3,
    embed_model="mwmae_tiny_4x16",
    embed_clips=2,
    embed_seconds=2.0,
)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------
def _check_flex(device: str) -> str:
    """'ok' when the flex MW-MHA kernel matches the dense one on this device, else the error."""
    from mwmae.models import MultiWindowAttention

    try:
        dense = MultiWindowAttention(32, [2, 5, 0, 10], shift=True, impl="dense").to(device)
        flex = MultiWindowAttention(32, [2, 5, 0, 10], shift=True, impl="flex").to(device)
        flex.load_state_dict(dense.state_dict())
        x = torch.randn(2, 20, 32, device=device)
        with torch.no_grad():
            err = (flex(x) - dense(x)).abs().max().item()
        return "ok" if err < 1e-4 else f"mismatch {err:.2e}"
    except Exception as exc:  # noqa: BLE001 - recorded, not raised
        return f"error: {type(exc).__name__}: {exc}"[:500]


def _check_compile(device: str) -> str:
    try:
        fn = torch.compile(lambda a: torch.nn.functional.gelu(a) * 2)
        a = torch.randn(64, device=device)
        err = (fn(a) - torch.nn.functional.gelu(a) * 2).abs().max().item()
        return "ok" if err < 1e-5 else f"mismatch {err:.2e}"
    except Exception as exc:  # noqa: BLE001
        return f"error: {type(exc).__name__}: {exc}"[:500]


def part_environment(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    cuda = torch.cuda.is_available()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        "cpu_count": os.cpu_count(),
        "device": sizes.device,
        "flex": _check_flex(sizes.device),
    }
    # a CPU compile builds C++ (tens of seconds on a small machine): not in the smoke run
    env["compile"] = _check_compile(sizes.device) if sizes.compile else "skipped (smoke)"
    return env


# --------------------------------------------------------------------------------------------
# train: throughput, MFU, memory
# --------------------------------------------------------------------------------------------
def matmul_peak(device: str, n: int, iters: int = 10) -> float:
    """Achieved matmul FLOP/s (bf16 on CUDA, float32 on CPU): the measured MFU denominator."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start)


class Trainer:
    """One model + fused AdamW (on CUDA) + optional torch.compile; steps at any batch size."""

    def __init__(self, name: str, kernel: str | None, compile_: bool, sizes: Sizes) -> None:
        import mwmae
        from mwmae.training import build_optimizer

        overrides = dict(sizes.model_overrides)
        if kernel is not None:
            overrides["mwmha_impl"] = kernel
        torch.manual_seed(0)
        self.sizes = sizes
        self.model = mwmae.create_model(name, **overrides).to(sizes.device)
        self.config = self.model.config
        self.opt = build_optimizer(self.model, lr=1e-4, fused=sizes.device == "cuda")
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.gen = torch.Generator().manual_seed(0)

    def step(self, batch: int) -> float:
        c, dev = self.config, self.sizes.device
        spec = torch.randn(batch, 1, c.num_frames, c.num_mels, device=dev)
        noise = self.model.masking_noise(batch, generator=self.gen).to(dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=self.sizes.autocast):
            loss = self.forward(spec, noise=noise).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def measure(self, batch: int) -> dict:
        """samples/s over `steps` steps after `warmup` steps, and peak memory."""
        dev = self.sizes.device
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(self.sizes.warmup):
            self.step(batch)
        _sync(dev)
        start = time.perf_counter()
        for _ in range(self.sizes.steps):
            loss = self.step(batch)
        _sync(dev)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
        return {
            "batch": batch,
            "samples_per_s": batch * self.sizes.steps / seconds,
            "peak_mb": peak,
            "loss": loss,
        }


def _largest_batch(trainer: Trainer, start: int, cap: int, deadline: float) -> dict:
    """Double the batch from `start` until OOM, `cap` or the deadline; measure the largest
    (`start // 2`, the batch measured before, when even `start` does not fit)."""
    best, batch = None, start
    while batch <= cap and time.time() < deadline:
        try:
            trainer.step(batch)
            best = batch
        except Exception as exc:
            if not _is_oom(exc):
                raise
            trainer.opt.zero_grad(set_to_none=True)
            _free()
            break
        batch *= 2
    row = trainer.measure(best or start // 2)  # start // 2 was measured to fit
    row["search"] = f"doubling from {start}, cap {cap}" + (
        ", stopped by budget" if time.time() >= deadline else ""
    )
    return row


def _train_configs(sizes: Sizes) -> list[tuple[str, str | None, bool]]:
    """(model, kernel, compile): eager first, then compiled (the slow ones last)."""
    rows = []
    for compile_ in (False, True):
        for name in sizes.models:
            kernels = KERNELS if name.startswith("mwmae") else (None,)
            rows += [(name, k, compile_) for k in kernels]
    return rows


def _mfu_fields(row: dict, flops: dict, peak_datasheet: float, peak_measured: float) -> None:
    sps = row["samples_per_s"]
    row["mfu_datasheet"] = flops["total"] * sps / peak_datasheet
    row["mfu_measured_peak"] = flops["total"] * sps / peak_measured
    row["mfu_datasheet_dense_attention_flops"] = flops["dense_total"] * sps / peak_datasheet


def _train_row(name: str, kernel: str | None, compile_: bool, sizes: Sizes, peaks, deadline):
    """At `sizes.batch`, then (same model, while time is left) at the largest batch."""
    from flops import model_flops_per_sample

    row: dict = {"model": name, "kernel": kernel or "global", "compile": compile_}
    if compile_ and not sizes.compile:
        row["skipped"] = "compile not run in the smoke run"
        return row
    if time.time() >= deadline:
        row["skipped"] = "time budget"
        return row
    trainer = None
    try:
        trainer = Trainer(name, kernel, compile_, sizes)
        flops = {
            "total": model_flops_per_sample(trainer.config)["total"],
            "dense_total": model_flops_per_sample(trainer.config, windowed_attention=False)[
                "total"
            ],
        }
        row["flops_per_sample"] = flops["total"]
        row["at_batch"] = trainer.measure(sizes.batch)
        _mfu_fields(row["at_batch"], flops, *peaks)
        if time.time() >= deadline:
            row["largest"] = {"skipped": "time budget"}
        else:
            row["largest"] = _largest_batch(trainer, sizes.batch * 2, sizes.max_batch, deadline)
            _mfu_fields(row["largest"], flops, *peaks)
    except Exception as exc:  # noqa: BLE001 - one config failing must not stop the rest
        key = "largest" if "at_batch" in row else "error"
        text = f"{type(exc).__name__}: {exc}"[:1000]
        row[key] = {"error": text} if key == "largest" else text
    trainer = None  # one model on the device at a time
    _free()
    return row


def part_train(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    peak_measured = matmul_peak(sizes.device, sizes.matmul_n)
    peaks = (args.peak_tflops * 1e12, peak_measured)
    rows = [_train_row(*config, sizes, peaks, deadline) for config in _train_configs(sizes)]
    return {
        "peak_tflops_datasheet": args.peak_tflops,
        "peak_tflops_measured": peak_measured / 1e12,
        "matmul_dtype": "bf16" if sizes.device == "cuda" else "float32",
        "autocast_bf16": sizes.autocast,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# evaluator: batched vs sequential probes
# --------------------------------------------------------------------------------------------
def probe_fit(batched: bool, members, x, y, xv, score, settings, device: str) -> None:
    """Adapter onto mwmae.evaluation.probe's public entry points (fix here if they change)."""
    from probe_oracle import train_sequential  # the tests' sequential oracle (tests/ on sys.path)

    from mwmae.evaluation.probe import BatchedProbe

    if batched:
        BatchedProbe(members, x.shape[1], int(y.max()) + 1, False, settings, device).fit(
            x, y, xv, score
        )
    else:
        for m in members:
            train_sequential(m, x, y, xv, score, False, settings, device=device)


def part_evaluator(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    from mwmae.evaluation.metrics import top1_accuracy
    from mwmae.evaluation.probe import Member, TrainSettings, preset_grid

    rng = np.random.default_rng(0)
    k, d = sizes.eval_classes, sizes.eval_dim
    centres = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, sizes.eval_rows)
    x = centres[y] + 3 * rng.normal(size=(sizes.eval_rows, d)).astype(np.float32)
    yv = rng.integers(0, k, sizes.eval_valid)
    xv = centres[yv] + 3 * rng.normal(size=(sizes.eval_valid, d)).astype(np.float32)
    onehot = np.eye(k)[yv]

    def score(p: np.ndarray) -> tuple[float, None]:
        return top1_accuracy(p, onehot), None

    grid = [g for g in preset_grid("paper") if g.hidden_layers == 1]
    members = [Member(g, s * 100 + i) for s in range(sizes.eval_seeds) for i, g in enumerate(grid)]
    settings = TrainSettings(max_epochs=sizes.eval_epochs, patience=10**9)
    _sync(sizes.device)
    start = time.perf_counter()
    probe_fit(True, members, x, y, xv, score, settings, sizes.device)
    _sync(sizes.device)
    batched_s = time.perf_counter() - start
    timed, start = 0, time.perf_counter()
    for m in members:  # sequential, one member at a time, while the budget lasts
        probe_fit(False, [m], x, y, xv, score, settings, sizes.device)
        timed += 1
        if time.time() >= deadline:
            break
    _sync(sizes.device)
    sequential_s = (time.perf_counter() - start) * len(members) / timed
    return {
        "members": len(members),
        "seeds": sizes.eval_seeds,
        "shape": [sizes.eval_rows, d],
        "classes": k,
        "epochs": sizes.eval_epochs,
        "batched_s": batched_s,
        "sequential_s": sequential_s,
        "sequential_members_timed": timed,
        "speedup": sequential_s / batched_s,
    }


# --------------------------------------------------------------------------------------------
# ddp, loader, embeddings
# --------------------------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 5.0))
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exit {out.returncode}: {out.stderr[-1500:]}")
    return out.stdout


def part_ddp(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        audio = make_corpus(Path(tmp) / "audio", 8, 2.5)
        overrides = [
            f"data.source={audio}",
            "data.num_workers=0",
            "schedule.steps=2",
            "schedule.warmup_steps=1",
            "batch.global_size=4",
            f"train.device={sizes.device}",
            f"ddp.backend={sizes.ddp_backend}",
            "log.every=1",
            "log.figure_every=0",
            "log.tensorboard=false",
            "checkpoint.every=0",
            f"output.dir={tmp}/runs",
        ]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", "1", "-m", "mwmae", "pretrain", "--config", "mwmae_tiny_cpu"]
        cmd += ["--no-progress", "--json", *overrides]
        start = time.perf_counter()
        stdout = _run(cmd, deadline - time.time())
        seconds = time.perf_counter() - start
    summary = json.loads(stdout[stdout.index("{") :])
    return {
        "backend": sizes.ddp_backend,
        "world_size": summary["world_size"],
        "steps": summary["step"],
        "loss": summary["loss"],
        "seconds": seconds,
    }


def _loader_clips_per_s(shards: Path, workers: int, sizes: Sizes) -> float:
    """Clips/s of the pretraining loader up to the model input on the device, as `mwmae
    pretrain` runs it: on CUDA pinned batches, copies on a side stream one batch ahead, and the
    log-mel and normalisation of raw crops computed on the GPU (`device_batches`)."""
    from mwmae.data import (
        EpochBatchSampler,
        PretrainDataset,
        build_source,
        device_batches,
        make_loader,
    )

    cuda = sizes.device == "cuda"
    source = build_source(shards, kind="shards")
    features_on = "device" if cuda else "worker"
    dataset = PretrainDataset(source, num_frames=200, features_on=features_on)
    sampler = EpochBatchSampler(
        len(dataset), sizes.loader_batch, total_steps=sizes.loader_steps + 1
    )
    loader = make_loader(dataset, sampler, num_workers=workers, pin_memory=cuda)
    batches = device_batches(loader, sizes.device)
    next(batches)  # worker start-up left out of the timing
    start, clips = time.perf_counter(), 0
    for batch in batches:
        clips += batch["spec"].shape[0]
    if cuda:
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def part_loader(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    """Each `prepare-shards` format (prepared: the default; audio: `--audio`) with each
    number of loader workers."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = make_corpus(Path(tmp) / "audio", sizes.loader_clips, sizes.loader_seconds)
        per_shard = max(1, sizes.loader_clips // 8)
        for fmt, options in (("prepared", []), ("audio", ["--audio"])):
            shards = Path(tmp) / fmt
            cmd = [sys.executable, "-m", "mwmae", "prepare-shards", str(audio), str(shards)]
            cmd += [*options, "--samples-per-shard", str(per_shard), "--no-progress"]
            _run(cmd, deadline - time.time())
            for workers in sizes.loader_workers:
                row: dict[str, Any] = {"format": fmt, "workers": workers}
                if time.time() >= deadline:
                    row["skipped"] = "time budget"
                else:
                    row["clips_per_s"] = _loader_clips_per_s(shards, workers, sizes)
                rows.append(row)
    return {
        "clips": sizes.loader_clips,
        "clip_seconds": sizes.loader_seconds,
        "batch": sizes.loader_batch,
        "batches_timed": sizes.loader_steps,
        "features_on": "device" if sizes.device == "cuda" else "worker",
        "rows": rows,
    }


def part_embeddings(sizes: Sizes, args: argparse.Namespace, deadline: float) -> dict:
    import mwmae
    from mwmae.embeddings import timestamp_embeddings

    overrides = dict(sizes.model_overrides) if sizes.device == "cpu" else {}
    model = mwmae.create_model(sizes.embed_model, **overrides).to(sizes.device).eval()
    audio = torch.randn(sizes.embed_clips, int(16000 * sizes.embed_seconds)) * 0.1
    dtype = torch.bfloat16 if sizes.device == "cuda" else None
    timestamp_embeddings(model, audio[:1], autocast_dtype=dtype)  # warm-up
    _sync(sizes.device)
    start = time.perf_counter()
    emb, _ = timestamp_embeddings(model, audio, autocast_dtype=dtype)
    _sync(sizes.device)
    seconds = time.perf_counter() - start
    return {
        "model": sizes.embed_model,
        "clips": sizes.embed_clips,
        "clip_seconds": sizes.embed_seconds,
        "embedding_shape": list(emb.shape),
        "clips_per_s": sizes.embed_clips / seconds,
    }


# --------------------------------------------------------------------------------------------
# driver and report
# --------------------------------------------------------------------------------------------
PARTS: dict[str, Callable[[Sizes, argparse.Namespace, float], dict]] = {
    "environment": part_environment,
    "train": part_train,
    "evaluator": part_evaluator,
    "ddp": part_ddp,
    "loader": part_loader,
    "embeddings": part_embeddings,
}
BUDGETS_S = {"environment": 30, "evaluator": 60, "ddp": 45, "loader": 45, "embeddings": 30}


def run_part(name: str, sizes: Sizes, args: argparse.Namespace) -> dict:
    budget = args.train_budget if name == "train" else BUDGETS_S[name]
    print(f"[device_check] {name} (budget {budget} s) ...", flush=True)
    start = time.time()
    try:
        result = {"ok": True, **PARTS[name](sizes, args, start + budget)}
    except Exception as exc:  # noqa: BLE001 - each part is independent
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        result["traceback"] = traceback.format_exc()[-3000:]
    result["seconds"] = time.time() - start
    print(f"[device_check] {name}: {'ok' if result['ok'] else result['error']}", flush=True)
    return result


def _fmt(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def _train_lines(train: dict) -> list[str]:
    lines = [
        "| model | kernel | compile | batch | samples/s | peak MB | MFU (datasheet) "
        "| MFU (measured peak) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in train.get("rows", []):
        head = f"| {row['model']} | {row['kernel']} | {row['compile']} "
        for key in ("at_batch", "largest"):
            m = row.get(key)
            if m is None or "samples_per_s" not in m:
                why = row.get("skipped") or row.get("error") or (m or {}).get("skipped")
                why = why or (m or {}).get("error") or "not run"
                lines.append(head + f"| {key} | {why[:80]} | | | |")
                if key == "at_batch":
                    break
                continue
            lines.append(
                head + f"| {m['batch']} | {m['samples_per_s']:.1f} | {_fmt(m['peak_mb'], '.0f')} "
                f"| {100 * m['mfu_datasheet']:.2f}% | {100 * m['mfu_measured_peak']:.2f}% |"
            )
    return lines


def markdown(report: dict) -> str:
    parts = report["parts"]
    lines = [f"# Device check ({report['mode']})", "", "## Parts", ""]
    lines += ["| part | ok | seconds | key figure |", "|---|---|---|---|"]
    for name, res in parts.items():
        lines.append(f"| {name} | {res['ok']} | {res['seconds']:.1f} | {_key_figure(name, res)} |")
    if parts.get("train", {}).get("ok"):
        t = parts["train"]
        lines += ["", "## Training steps", ""]
        lines.append(
            f"Peaks: datasheet {t['peak_tflops_datasheet']:.0f} TFLOP/s, measured "
            f"{t['matmul_dtype']} matmul {t['peak_tflops_measured']:.3g} TFLOP/s."
        )
        lines += [""] + _train_lines(t)
    return "\n".join(lines) + "\n"


def _key_figure(name: str, res: dict) -> str:
    if not res["ok"]:
        return "error: " + res["error"].splitlines()[0][:100]
    if name == "environment":
        return f"torch {res['torch']}, {res['gpu'] or 'no GPU'}, flex {res['flex'][:30]}"
    if name == "evaluator":
        return f"batched {res['batched_s']:.2f} s, sequential {res['sequential_s']:.2f} s"
    if name == "ddp":
        return f"{res['backend']}: {res['steps']} steps, world {res['world_size']}"
    if name == "loader":
        return ", ".join(
            f"{r['format']} {r['workers']} workers {_fmt(r.get('clips_per_s'))} clips/s"
            for r in res["rows"]
        )
    if name == "embeddings":
        return f"{res['clips_per_s']:.1f} clips/s"
    return f"{len(res.get('rows', []))} configurations"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for device_check.json / .md")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (tests)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of parts")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak")
    p.add_argument("--train-budget", type=float, default=210.0, help="seconds for part train")
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    sizes = SMOKE if args.smoke else GPU
    if not args.smoke and not torch.cuda.is_available():
        print("[device_check] no CUDA device: the figures below are CPU figures", flush=True)
        sizes = Sizes(**{**asdict(GPU), "device": "cpu", "ddp_backend": "gloo"})
    report = {"mode": "CPU smoke" if args.smoke else f"full on {sizes.device}", "parts": {}}
    report["sizes"] = asdict(sizes)
    for name in parts:
        report["parts"][name] = run_part(name, sizes, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
