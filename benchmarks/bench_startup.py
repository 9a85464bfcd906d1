"""Start-up time and loader memory of pretraining data at AudioSet scale (2,032,320 clips).

    python benchmarks/bench_startup.py startup [--clips 2032320] [--work DIR]
    python benchmarks/bench_startup.py memory [--clips 2032320] [--workers 8] [--batches 1000]
        [--batch 32] [--clip-seconds 60] [--work DIR]

`startup` times what `mwmae pretrain` does before its first step to build its data (the index,
the `ClipSource`, the `PretrainDataset`), in one process with one torch thread:

- `manifest-csv`, `manifest-jsonl`: a generated manifest of `--clips` rows with `path`,
  `frames` and `sample_rate` (AudioSet-like names; the files need not exist: no header is read);
- `folder`: a generated folder of `--clips` empty files (41 parts, as AudioSet's release) with
  its saved index (generated: 10 s at 16 kHz each), as the second launch finds it: rank 0
  (`prepare_index`: list the folder, compare with the saved index, read it) and every other
  rank (`build_source(index=<saved file>)`, no listing);
- `header`: today's cost per file without an index, `soundfile.info` of real 10 s FLAC files on
  a warm page cache (the second pass), times `--clips`.

`memory` measures a DataLoader of `--workers` workers over a `--clips`-row manifest of distinct
paths (hard links) to 64 real 2 s WAV files (with `frames`/`sample_rate` columns, so no header
is read): per worker the peak resident memory (RSS) and its private memory (USS: Private_Clean +
Private_Dirty of /proc/PID/smaps_rollup; RSS alone cannot show copy-on-write growth, since a
forked worker's RSS already counts the pages it shares) after its first batch and after
`--batches` batches of `--batch`. Run it against another checkout (PYTHONPATH) for a
before/after; `--clip-seconds 0` there skips the header reads a manifest cannot spare it.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

AUDIOSET_CLIPS = 2_032_320
SR = 16000
PARTS = 41  # AudioSet's unbalanced training set comes in 41 parts


def audioset_names(n: int) -> list[str]:
    """AudioSet-like file names: Y + an 11-character YouTube id + _<start>.000.flac."""
    alphabet = np.frombuffer(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8
    )
    ids = alphabet[np.random.default_rng(0).integers(0, 64, size=(n, 11))]
    return [f"Y{row.tobytes().decode()}_{30 * (i % 10)}.000.flac" for i, row in enumerate(ids)]


def _timed(fn):  # (result, seconds)
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _dataset(source):
    from mwmae.data import PretrainDataset

    return PretrainDataset(source, num_frames=200)


# ---- start-up --------------------------------------------------------------------------------
def write_manifests(work: Path, n: int) -> dict[str, Path]:
    """`index.csv` and `index.jsonl`: path, frames, sample_rate for `n` (absent) files."""
    folder = work / "audioset" / "unbalanced_train_segments"
    rows = [
        (f"{folder}/part{i % PARTS:02d}/{name}", 160000, 16000)
        for i, name in enumerate(audioset_names(n))
    ]
    out = {"manifest-csv": work / "index.csv", "manifest-jsonl": work / "index.jsonl"}
    with out["manifest-csv"].open("w") as f:
        f.write("path,frames,sample_rate\n")
        f.writelines(f"{p},{fr},{sr}\n" for p, fr, sr in rows)
    with out["manifest-jsonl"].open("w") as f:
        f.writelines(
            json.dumps({"path": p, "frames": fr, "sample_rate": sr}) + "\n" for p, fr, sr in rows
        )
    return out


def write_folder(work: Path, n: int) -> Path:
    """`n` empty files in `PARTS` sub-folders, and their saved index (as a first launch would
    leave it, with 10 s at 16 kHz for every file)."""
    from mwmae.data.files import list_audio_folder
    from mwmae.data.index import index_locations, save_index

    folder = work / "folder"
    if not (folder / "done").is_file():
        for i, name in enumerate(audioset_names(n)):
            part = folder / f"part{i % PARTS:02d}"
            if i < PARTS:
                part.mkdir(parents=True, exist_ok=True)
            os.close(os.open(part / name, os.O_CREAT | os.O_WRONLY, 0o644))
        (folder / "done").write_text("")
    index = list_audio_folder(folder)
    index.frames[:], index.rate[:] = 160000, 16000
    save_index(index, "folder", index_locations(folder, "folder")[:1], relative=True)
    return folder


def header_cost(work: Path, files: int = 1000) -> dict[str, float]:
    """Seconds per file of a first launch (no saved index: `build_source` lists the folder and
    reads every header) on real 10 s FLAC files, and of `soundfile.info` alone (warm cache)."""
    import soundfile as sf

    from mwmae.data import build_source
    from mwmae.data.index import index_locations

    folder = work / "flac"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"c{i:04d}.flac" for i in range(files)]
    for p in paths:
        if not p.is_file():
            sf.write(p, (0.1 * rng.standard_normal(160000)).astype(np.float32), 16000)
    for p in paths:  # warm
        sf.info(str(p))
    _, info_s = _timed(lambda: [sf.info(str(p)) for p in paths])
    for saved in index_locations(folder, "folder"):
        saved.unlink(missing_ok=True)
    _, first_s = _timed(lambda: build_source(folder, "folder"))
    for saved in index_locations(folder, "folder"):
        saved.unlink(missing_ok=True)
    return {"first_launch_per_file": first_s / files, "info_per_file": info_s / files}


def run_startup(args: argparse.Namespace) -> list[dict]:
    from mwmae.data import build_source, prepare_index

    work, n = Path(args.work), args.clips
    work.mkdir(parents=True, exist_ok=True)
    results = []
    manifests, t_gen = _timed(lambda: write_manifests(work, n))
    print(f"generated the manifests in {t_gen:.1f} s", flush=True)
    for kind, path in manifests.items():

        def build(path: Path = path) -> int:
            index = prepare_index(path, "manifest", 60.0)
            return len(_dataset(build_source(path, "manifest", clip_seconds=60.0, index=index)))

        clips, seconds = _timed(build)
        results.append({"source": kind, "clips": clips, "seconds": seconds})
        print(results[-1], flush=True)
    folder, t_gen = _timed(lambda: write_folder(work, n))
    print(f"generated the folder and its index in {t_gen:.1f} s", flush=True)
    index, t_prep = _timed(lambda: prepare_index(folder, "folder", 60.0))
    ds, t_build = _timed(lambda: _dataset(build_source(folder, "folder", index=index)))
    results.append(
        {
            "source": "folder, rank 0",
            "clips": len(ds),
            "seconds": t_prep + t_build,
            "prepare_index": t_prep,
            "build_source": t_build,
        }
    )
    print(results[-1], flush=True)
    saved = str(index.saved_at)
    ds, seconds = _timed(lambda: _dataset(build_source(folder, "folder", index=saved)))
    results.append({"source": "folder, other ranks", "clips": len(ds), "seconds": seconds})
    print(results[-1], flush=True)
    cost = header_cost(work)
    per_file = cost["first_launch_per_file"]
    results.append(
        {
            "source": "folder, first launch (no saved index)",
            **cost,
            "clips": n,
            "seconds": per_file * n,
        }
    )
    print(results[-1], flush=True)
    return results


# ---- memory ----------------------------------------------------------------------------------
def write_memory_manifest(work: Path, n: int, files: int = 64) -> Path:
    """A manifest of `n` distinct AudioSet-like paths (hard links in `PARTS` folders) to
    `files` real 2 s WAV files, with `frames` and `sample_rate` columns."""
    import soundfile as sf

    audio = work / "audio64"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    real = [audio / f"{i:02d}.wav" for i in range(files)]
    for wav in real:
        if not wav.is_file():
            t = np.arange(32000) / 16000
            tone = np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
            sf.write(wav, (0.3 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32), SR)
    links = work / f"links-{n}"
    names = [name.replace(".flac", ".wav") for name in audioset_names(n)]
    paths = [links / f"part{i % PARTS:02d}" / name for i, name in enumerate(names)]
    if not (links / "done").is_file():
        for i, path in enumerate(paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                os.link(real[i % files], path)
        (links / "done").write_text("")
    manifest = work / f"memory-{n}.csv"
    with manifest.open("w") as f:
        f.write("path,frames,sample_rate\n")
        f.writelines(f"{path},32000,{SR}\n" for path in paths)
    return manifest


def _smaps_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def _memory_mb(pid: int) -> dict[str, float]:
    kb = _smaps_kb(pid)
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"rss": kb["Rss"] / 1024, "pss": kb["Pss"] / 1024, "uss": uss / 1024}


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return sorted(set(found))


class PeakWatch(threading.Thread):
    """Samples the workers' memory every `every` seconds; keeps each one's peaks."""

    def __init__(self, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in _children(os.getpid()):
                try:
                    now = _memory_mb(pid)
                except OSError:
                    continue
                old = self.peak.setdefault(pid, now)
                self.peak[pid] = {k: max(old[k], now[k]) for k in now}
            self.stop.wait(self.every)


def run_memory(args: argparse.Namespace) -> list[dict]:
    import torch

    from mwmae.data import EpochBatchSampler, build_source, make_loader

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    manifest = write_memory_manifest(work, args.clips)
    clip_seconds = args.clip_seconds or None
    source, t_build = _timed(lambda: build_source(manifest, "manifest", clip_seconds=clip_seconds))
    main_mb = _memory_mb(os.getpid())
    print(f"{len(source)} clips built in {t_build:.1f} s; main process {main_mb}", flush=True)
    dataset = _dataset(source)
    if args.gc_freeze:  # workers' collections then skip every object made so far
        import gc

        gc.collect()
        gc.freeze()
    sampler = EpochBatchSampler(len(dataset), args.batch, seed=0, total_steps=args.batches + 64)
    loader = make_loader(
        dataset, sampler, num_workers=args.workers, generator=torch.Generator().manual_seed(0)
    )
    watch = PeakWatch()
    watch.start()
    it = iter(loader)
    first: dict[int, dict[str, float]] = {}
    t0 = time.perf_counter()
    for step in range(args.batches):
        next(it)
        if step == 4 * args.workers:  # every worker has made a few batches
            first = {pid: _memory_mb(pid) for pid in _children(os.getpid())}
    last = {pid: _memory_mb(pid) for pid in _children(os.getpid())}
    seconds = time.perf_counter() - t0
    watch.stop.set()
    watch.join()
    del it
    rows = []
    for pid in sorted(last):
        start, end, peak = first.get(pid, last[pid]), last[pid], watch.peak.get(pid, last[pid])
        rows.append(
            {
                "worker_pid": pid,
                "peak_rss_mb": round(peak["rss"], 1),
                "peak_uss_mb": round(peak["uss"], 1),
                "uss_start_mb": round(start["uss"], 1),
                "uss_end_mb": round(end["uss"], 1),
                "uss_growth_mb": round(end["uss"] - start["uss"], 1),
                "pss_end_mb": round(end["pss"], 1),
            }
        )
        print(rows[-1], flush=True)
    summary = {
        "clips": len(source),
        "workers": args.workers,
        "batches": args.batches,
        "batch": args.batch,
        "build_seconds": round(t_build, 1),
        "loader_seconds": round(seconds, 1),
        "main_rss_mb": round(main_mb["rss"], 1),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
        "max_uss_growth_mb": max(r["uss_growth_mb"] for r in rows),
    }
    print(summary, flush=True)
    return [*rows, summary]


def _touch(source, accesses: int, seed: int, queue) -> None:
    """In a forked worker: what a DataLoader worker does to the index for `accesses` clips
    (each clip's path, name and file), its memory growth, then that after a full collection
    (which writes to every object the worker inherited that the collector tracks)."""
    import gc

    before = _memory_mb(os.getpid())["uss"]
    for i in np.random.default_rng(seed).integers(0, len(source), accesses).tolist():
        source.name(i), source.file(i)
    touched = _memory_mb(os.getpid())["uss"]
    gc.collect()
    collected = _memory_mb(os.getpid())["uss"]
    queue.put((round(touched - before, 1), round(collected - before, 1)))


def run_touch(args: argparse.Namespace) -> list[dict]:
    """The index's own share of the workers' growth, without decoding: `--workers` forked
    processes each touch the clips of `--batches` / `--workers` batches of `--batch`, then
    one epoch's share of the clips (`--clips` / `--workers`)."""
    import multiprocessing as mp

    from mwmae.data import build_source

    manifest = write_memory_manifest(Path(args.work), args.clips)
    source = build_source(manifest, "manifest", clip_seconds=args.clip_seconds or None)
    ctx = mp.get_context("fork")
    results = []
    for accesses in (args.batches * args.batch // args.workers, len(source) // args.workers):
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_touch, args=(source, accesses, seed, queue))
            for seed in range(args.workers)
        ]
        for proc in procs:
            proc.start()
        rows = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
        results.append(
            {
                "clips": len(source),
                "workers": args.workers,
                "clips_touched_per_worker": accesses,
                "max_uss_growth_mb": max(r[0] for r in rows),
                "max_uss_growth_after_gc_collect_mb": max(r[1] for r in rows),
            }
        )
        print(results[-1], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["startup", "memory", "touch"])
    parser.add_argument("--clips", type=int, default=AUDIOSET_CLIPS)
    parser.add_argument("--work", default="/tmp/bench_startup")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clip-seconds", type=float, default=60.0)
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before forking")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    run = {"startup": run_startup, "memory": run_memory, "touch": run_touch}[args.part]
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
