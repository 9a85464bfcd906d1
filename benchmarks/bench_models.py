"""Training-step time and peak memory of MAE vs MW-MAE vs SSAST-style, and fast vs per-head MW-MHA.

    python benchmarks/bench_models.py [--size tiny] [--batch 16] [--steps 5] [--json out.json]

Every model is measured in its own subprocess so that peak memory is not shared: on CUDA the
peak is `torch.cuda.max_memory_allocated`; on CPU it is the growth of the process's peak RSS
(ru_maxrss) over a training step, after the model and optimiser exist (which includes what the
allocator caches). "saved" is the size of the distinct tensors autograd keeps for the backward
pass of one forward: the activation memory itself, independent of the allocator. Times are
medians of `--steps` forward+backward+AdamW steps after two warm-up steps. Ratios are against
MAE measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_model(
    name: str, batch: int, steps: int, device: str, bf16: bool, overrides: dict | None = None
) -> dict:
    import mwmae

    torch.manual_seed(0)
    model = mwmae.create_model(name, **(overrides or {})).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    spec = torch.randn(batch, 1, model.config.num_frames, model.config.num_mels, device=device)
    saved_mb = saved_for_backward_mib(_LossOf(model), spec)  # activations kept for backward
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(steps + 2):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(spec).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "model": name,
        "step_s": statistics.median(times),
        "peak_mb": peak_mb,
        "saved_for_backward_mb": saved_mb,
        "params": sum(p.numel() for p in model.parameters()),
    }


class _LossOf(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.model(spec).loss


def per_head_mwmha(x, qkv, proj, window_sizes, tables):
    """Baseline: one attention computation per head (the reference's structure)."""
    B, N, C = x.shape
    H = len(window_sizes)
    hd = C // H
    q, k, v = qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    outs = []
    for h, w in enumerate(window_sizes):
        qh, kh, vh = q[:, h], k[:, h], v[:, h]
        if w == 0:
            outs.append(F.scaled_dot_product_attention(qh, kh, vh))
            continue
        pos = torch.arange(w, device=x.device)
        bias = tables[h][pos[:, None] - pos[None, :] + w - 1]
        qw, kw, vw = (t.reshape(B * N // w, w, hd) for t in (qh, kh, vh))
        attn = (qw @ kw.transpose(1, 2)) * hd**-0.5 + bias
        outs.append((attn.softmax(-1) @ vw).reshape(B, N, hd))
    return proj(torch.stack(outs, dim=1).transpose(1, 2).reshape(B, N, C))


def saved_for_backward_mib(module: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB of distinct tensors autograd keeps for the backward pass of one forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return sum(seen.values()) / 2**20


def measure_attention(batch: int, steps: int, device: str, dim: int = 384) -> dict:
    from mwmae.models import MultiWindowAttention, default_window_sizes
    from mwmae.models.layers import Attention

    torch.manual_seed(0)
    windows = default_window_sizes(250)
    module = MultiWindowAttention(dim, windows, impl="grouped").to(device)
    dense = MultiWindowAttention(dim, windows, impl="dense").to(device)
    dense.load_state_dict(module.state_dict())
    plain = Attention(dim, len(windows)).to(device)
    tables = {int(h): p for h, p in module.rel_pos_bias.items()}
    x = torch.randn(batch, 250, dim, device=device, requires_grad=True)

    def run(fn):
        times = []
        for i in range(steps + 2):
            _sync(device)
            start = time.perf_counter()
            fn().square().mean().backward()
            _sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    grouped = run(lambda: module(x))
    dense_s = run(lambda: dense(x))
    naive = run(lambda: per_head_mwmha(x, module.qkv, module.proj, windows, tables))
    global_s = run(lambda: plain(x))
    with torch.no_grad():
        diff = (module(x) - per_head_mwmha(x, module.qkv, module.proj, windows, tables)).abs()
        diff_dense = (dense(x) - module(x)).abs()
    saved = {
        name: saved_for_backward_mib(m, x)
        for name, m in (("grouped", module), ("dense", dense), ("global", plain))
    }
    return {
        "dim": dim,
        "saved_for_backward_mib": saved,
        "grouped_s": grouped,
        "dense_s": dense_s,
        "per_head_s": naive,
        "global_mha_s": global_s,
        "per_head_over_grouped": naive / grouped,
        "per_head_over_dense": naive / dense_s,
        "grouped_over_global": grouped / global_s,
        "max_abs_diff": float(max(diff.max(), diff_dense.max())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="encoder size (tiny, small, base, ...)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._one:  # child process: one model
        print(
            json.dumps(
                measure_model(
                    args._one,
                    args.batch,
                    args.steps,
                    args.device,
                    args.bf16,
                    json.loads(args._overrides),
                )
            )
        )
        return 0

    results = {
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        "models": {},
    }
    variants = {
        "mae": ("mae", {}),
        "mwmae": ("mwmae", {}),
        "mwmae_dense": ("mwmae", {"mwmha_impl": "dense"}),
        "ssast": ("ssast", {}),
    }
    for family, (prefix, overrides) in variants.items():
        name = f"{prefix}_{args.size}_4x16"
        cmd = [
            sys.executable,
            __file__,
            "--_one",
            name,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--_overrides",
            json.dumps(overrides),
        ] + (["--bf16"] if args.bf16 else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results["models"][family] = json.loads(out.strip().splitlines()[-1])
    base = results["models"]["mae"]
    for r in results["models"].values():
        r["time_ratio_vs_mae"] = r["step_s"] / base["step_s"]
        r["memory_ratio_vs_mae"] = r["peak_mb"] / base["peak_mb"]
    results["mwmha"] = [
        measure_attention(args.batch, args.steps, args.device, dim) for dim in (128, 384)
    ]

    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch={args.batch} size={args.size}"
    )
    print(
        f"{'model':<12}{'step (s)':>10}{'peak MB':>10}{'time/MAE':>10}{'mem/MAE':>10}"
        f"{'saved MB':>10}{'saved/MAE':>11}"
    )
    for family, r in results["models"].items():
        saved_ratio = r["saved_for_backward_mb"] / base["saved_for_backward_mb"]
        print(
            f"{family:<12}{r['step_s']:>10.3f}{r['peak_mb']:>10.0f}"
            f"{r['time_ratio_vs_mae']:>10.2f}{r['memory_ratio_vs_mae']:>10.2f}"
            f"{r['saved_for_backward_mb']:>10.0f}{saved_ratio:>11.2f}"
        )
    for m in results["mwmha"]:
        print(
            f"MW-MHA fwd+bwd (B={args.batch}, L=250, {m['dim']}-d, 8 heads): grouped "
            f"{m['grouped_s'] * 1e3:.1f} ms, dense {m['dense_s'] * 1e3:.1f} ms, per-head loop "
            f"{m['per_head_s'] * 1e3:.1f} ms, global MHA {m['global_mha_s'] * 1e3:.1f} ms; "
            f"per-head/grouped {m['per_head_over_grouped']:.2f}x, per-head/dense "
            f"{m['per_head_over_dense']:.2f}x (max |diff| {m['max_abs_diff']:.1e}); saved for "
            f"backward (MiB): "
            + ", ".join(f"{k} {v:.1f}" for k, v in m["saved_for_backward_mib"].items())
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
