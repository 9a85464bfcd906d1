"""Model-only pretraining step on CPU (no data loading): fp32 against bf16 autocast.

    PYTHONPATH=src python benchmarks/bench_model_step_cpu.py [--batch 32] [--steps 15] [--threads 2]

The demo's two models (`mwmae_tiny_cpu` / `mae_tiny_cpu` sizes: ViT-Tiny width, 4 encoder
blocks, 2-block 128-d decoder) on random (batch, 1, 200, 80) spectrograms: forward, backward and
AdamW, `--steps` timed steps after 3 warm-up steps. Compared with the real loop
(`bench_pretrain.py --cache-sweep`), it says how much of a step the model itself takes.
"""

from __future__ import annotations

import argparse
import time

import torch

import mwmae
from mwmae.training import build_optimizer

DEMO_SIZE = {"depth": 4, "decoder_depth": 2, "decoder_embed_dim": 128}


def step_time(name: str, batch: int, steps: int, bf16: bool) -> float:
    """Seconds per training step of model `name` at the demo's size."""
    torch.manual_seed(0)
    model = mwmae.create_model(name, **DEMO_SIZE)
    optimizer = build_optimizer(model, lr=1e-4)
    spec = torch.randn(batch, 1, 200, 80)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(spec).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("mwmae_tiny_4x16", "mae_tiny_4x16"):
        for bf16 in (False, True):
            dt = step_time(name, args.batch, args.steps, bf16)
            print(
                f"{name} {'bf16' if bf16 else 'fp32'}: {dt * 1000:.0f} ms/step, "
                f"{args.batch / dt:.0f} samples/s"
            )


if __name__ == "__main__":
    main()
