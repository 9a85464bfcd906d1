"""Conversion time and peak memory for a full-size official checkpoint (MW-MAE base 4x16).

Writes a synthetic reference checkpoint (the official tree and layouts, random float32 params,
92,814,576 of them; by default a whole TrainState as the reference saves it: params, buffers,
step, aux RNG keys and AdamW moments mu/nu, ~1.1 GB), then runs `convert_official` on it in a
fresh process and reports wall time per stage and the process's peak resident memory
(VmHWM) above the post-import baseline. Prints a table and a JSON line.

    .venv/bin/python benchmarks/bench_convert.py                  # base 4x16 MW-MAE TrainState
    .venv/bin/python benchmarks/bench_convert.py --params-only    # a {params, buffers} file
    .venv/bin/python benchmarks/bench_convert.py --preset mae_base_4x16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_synthetic(run_dir: Path, preset: str, params_only: bool, seed: int = 0) -> dict:
    from mwmae.convert import official_buffers, official_layout, official_run_config
    from mwmae.convert.flax_msgpack import unflatten_tree, write_msgpack_file
    from mwmae.convert.official import AUX_RNG_NAMES
    from mwmae.models import preset_config

    config = preset_config(preset)
    rng = np.random.default_rng(seed)
    layout = official_layout(config)
    params = {
        p: rng.standard_normal(s.flax_shape, dtype=np.float32) * 0.02 for p, s in layout.items()
    }
    n_params = sum(a.size for a in params.values())
    tree_params = unflatten_tree(params)
    buffers = unflatten_tree(official_buffers(config))
    if params_only:
        tree = {"buffers": buffers, "params": tree_params}
    else:
        step = np.array(198_400, dtype=np.int32)
        zeros = unflatten_tree({p: np.zeros_like(a) for p, a in params.items()})
        tree = {
            "aux_rng_keys": {n: np.array([0, i], np.uint32) for i, n in enumerate(AUX_RNG_NAMES)},
            "batch_stats": {},
            "buffers": buffers,
            "dynamic_scale": None,
            "frozen_params": {},
            "opt_state": {
                "0": {"count": step, "mu": zeros, "nu": zeros},
                "1": {},
                "2": {"count": step},
            },
            "params": tree_params,
            "step": step,
        }
    t0 = time.perf_counter()
    path = write_msgpack_file(
        tree, run_dir / ("checkpoint_198400" if not params_only else "checkpoint_0")
    )
    write_s = time.perf_counter() - t0
    rc = official_run_config(config)
    rc["model"]["arch"] = "mae_base"  # published runs name the size and omit the encoder dims
    for k in ("embed_dim", "depth", "num_heads"):
        rc["model"]["model_args"].pop(k)
    (run_dir / "config.json").write_text(json.dumps(rc))
    return {
        "file": str(path),
        "file_bytes": path.stat().st_size,
        "params": int(n_params),
        "write_s": round(write_s, 2),
    }


CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from mwmae.convert import official
from mwmae.models import MaskedAutoencoder
def rss_mb():
    # VmHWM (reset by exec) rather than ru_maxrss, which Linux carries over from the parent.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mb()
out = {"import_s": round(time.perf_counter() - t0, 2), "baseline_rss_mb": round(base)}
t = time.perf_counter()
model = official.convert_official(sys.argv[1])
out["convert_official_s"] = round(time.perf_counter() - t, 2)
out["n_params"] = sum(p.numel() for p in model.parameters())
out["peak_rss_mb"] = round(rss_mb()); out["peak_above_baseline_mb"] = round(rss_mb() - base)
del model
# The same work stage by stage (timings only; the peak above is convert_official's).
t = time.perf_counter()
params, run_config, info = official.load_official_params(sys.argv[1])
out["read_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
config, meta = official.infer_config(params, run_config)
out["infer_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
state = official.params_to_state_dict(params, config)
out["map_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
model = official.model_from_state_dict(dict(state), config)
out["build_and_load_s"] = round(time.perf_counter() - t, 2)
del model
t = time.perf_counter()
model = MaskedAutoencoder(config)
model.load_state_dict(state, strict=True)
out["random_init_build_and_load_s"] = round(time.perf_counter() - t, 2)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mwmae_base_4x16")
    ap.add_argument(
        "--params-only",
        action="store_true",
        help="write {params, buffers} instead of a whole TrainState",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the converter")
    ap.add_argument("--keep", default=None, help="write the synthetic run here and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.keep or tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        synth = write_synthetic(run_dir, args.preset, args.params_only)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(run_dir), str(args.threads)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode:
            sys.exit(proc.stderr)
        res = json.loads(proc.stdout.strip().splitlines()[-1])

    kind = "params+buffers" if args.params_only else "TrainState"
    print(
        f"{args.preset}: {synth['params']:,} params; checkpoint "
        f"{synth['file_bytes'] / 2**20:,.0f} MiB ({kind}), written in {synth['write_s']} s"
    )
    rows = [
        ("read msgpack (params only)", res["read_s"]),
        ("infer architecture", res["infer_s"]),
        ("map names + layouts (copy)", res["map_s"]),
        ("build model + load (meta init)", res["build_and_load_s"]),
        ("(a random-init build + load)", res["random_init_build_and_load_s"]),
        ("convert_official end to end", res["convert_official_s"]),
    ]
    for name, sec in rows:
        print(f"  {name:<30} {sec:>7.2f} s")
    print(
        f"  peak RSS {res['peak_rss_mb']:,} MiB; {res['peak_above_baseline_mb']:,} MiB above "
        f"the post-import baseline ({res['baseline_rss_mb']:,} MiB)"
    )
    print(
        json.dumps(
            {
                "bench": "convert",
                "preset": args.preset,
                "threads": args.threads,
                "python": platform.python_version(),
                **synth,
                **res,
            }
        )
    )


if __name__ == "__main__":
    main()
