"""The pretraining loop: data, AdamW + warm-up/cosine, accumulation, DDP, logs, checkpoints.

`pretrain(config, overrides)` is the whole job; `mwmae pretrain` and `torchrun -m mwmae
pretrain` call it. Reproducibility rules (what makes 1 process == N processes and a resumed run
== an uninterrupted one):

- data positions and crops come from (seed, step) via `EpochBatchSampler` / `PretrainDataset`;
- masking noise for the whole global batch comes from a generator seeded by (seed, step), each
  rank and micro-batch taking its rows, so masks do not depend on the number of ranks;
- the learning rate is a pure function of the step;
- a checkpoint stores the weights, AdamW state, step, counters and RNG states.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mwmae._io import atomic_write_text
from mwmae._rng import derive_seed, torch_generator
from mwmae.data import (
    EpochBatchSampler,
    PretrainDataset,
    build_source,
    clip_file,
    compute_dataset_stats,
    make_loader,
)

from . import checkpoint as ckpt
from .config import resolve_config, resume_mismatches, save_config
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_strings,
    init_distributed,
    replica_max_abs_diff,
)
from .optim import WarmupCosine, build_optimizer, set_lr

log = logging.getLogger(__name__)

_TAG_MASK = 0x5EED_0010
_TAG_LOADER = 0x5EED_0011
STATE_FORMAT = 1


@dataclass
class RunPlan:
    """Numbers derived from the config, the dataset and the launch."""

    dataset_size: int
    global_batch: int
    world_size: int
    accum_steps: int
    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def plan_run(config: Mapping[str, Any], dataset_size: int, world_size: int = 1) -> RunPlan:
    """Steps, warm-up and peak lr as the reference: epoch = dataset_size // batch steps,
    lr = base_lr * batch / 256."""
    batch, sched = config["batch"], config["schedule"]
    global_batch, accum = int(batch["global_size"]), int(batch["accum_steps"])
    if global_batch % (world_size * accum):
        raise ValueError(
            f"batch.global_size {global_batch} is not divisible by world size {world_size} x "
            f"batch.accum_steps {accum}"
        )
    spe = sched["steps_per_epoch"] or max(1, dataset_size // global_batch)
    total = (
        int(sched["steps"])
        if sched["steps"] is not None
        else int(round(float(sched["epochs"]) * spe))
    )
    warmup = (
        int(sched["warmup_steps"])
        if sched["warmup_steps"] is not None
        else int(round(float(sched["warmup_epochs"] or 0) * spe))
    )
    if total < 1:
        raise ValueError(f"the schedule has {total} steps")
    warmup = min(warmup, total)
    peak = float(config["optim"]["base_lr"]) * global_batch / 256
    return RunPlan(
        dataset_size,
        global_batch,
        world_size,
        accum,
        global_batch // (world_size * accum),
        int(spe),
        total,
        warmup,
        peak,
    )


def masking_noise(model: torch.nn.Module, seed: int, step: int, global_batch: int) -> torch.Tensor:
    """(global_batch, L) masking noise of step `step`, the same for any number of ranks."""
    return model.masking_noise(global_batch, generator=torch_generator(seed, _TAG_MASK, step))


def run_dir_for(config: Mapping[str, Any]) -> Path:
    out = config["output"]
    return Path(out["dir"]) / (out["run_name"] or config["name"])


class _JsonLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _find_resume(resume: bool | str | Path, run_dir: Path) -> Path | None:
    ckpt_dir = run_dir / "checkpoints"
    if resume is False or resume == "never":
        if ckpt.latest_checkpoint(ckpt_dir) is not None:
            raise FileExistsError(
                f"{run_dir} already holds checkpoints; resume it, or pick another "
                f"output.run_name / output.dir"
            )
        return None
    if resume is True or resume == "auto":
        found = ckpt.latest_checkpoint(ckpt_dir)
        if found is None and resume is True:
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {ckpt_dir}")
        return found
    path = Path(resume)
    for candidate in (path, path / "checkpoints"):
        if (candidate / ckpt.MODEL_FILE).is_file():
            return candidate
        found = ckpt.latest_checkpoint(candidate)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no checkpoint to resume from")


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def pretrain(
    config: Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    progress: bool = True,
    resume: bool | str | Path = "auto",
) -> Path:
    """Pretrain a model; returns the run folder (its `final/` loads with `from_pretrained`).

    config: a dict, a YAML path or a shipped preset name; overrides: `key=value` strings.
    resume: "auto" continues from the run folder's latest checkpoint if there is one; True
    requires one; False refuses to reuse a folder with checkpoints; a path names a run folder
    or checkpoint. Under torchrun every rank calls this; rank 0 writes the files.
    """
    cfg = resolve_config(config, overrides)
    threads = torch.get_num_threads()
    if cfg["train"]["num_threads"]:
        torch.set_num_threads(int(cfg["train"]["num_threads"]))
    info = init_distributed(
        cfg["train"]["device"], cfg["ddp"]["backend"], float(cfg["ddp"]["timeout_s"])
    )
    try:
        return _Trainer(cfg, info, progress, resume).run()
    finally:
        cleanup(info)
        torch.set_num_threads(threads)  # leave the caller's process as it was


class _Trainer:
    def __init__(
        self, cfg: dict[str, Any], info: DistInfo, progress: bool, resume: bool | str | Path
    ) -> None:
        self.cfg, self.info, self.progress = cfg, info, progress
        self.run_dir = run_dir_for(cfg)
        self.resume_from = _find_resume(resume, self.run_dir)
        self.seed = int(cfg["seed"])

    # ---- setup ------------------------------------------------------------------------------
    def _check_resume_config(self) -> None:
        saved_path = self.run_dir / "config.json"
        if self.resume_from is None or not saved_path.is_file():
            return
        saved = json.loads(saved_path.read_text())
        data, sdata = self.cfg["data"], saved.get("data", {})
        if data["normalize"] == "dataset" and data["mean"] is None:
            data["mean"], data["std"] = sdata.get("mean"), sdata.get("std")
        diffs = resume_mismatches(saved, self.cfg)
        if diffs:
            raise ValueError(
                f"cannot resume {self.run_dir} with a different config: " + "; ".join(diffs)
            )

    def _build_data(self) -> PretrainDataset:
        d = self.cfg["data"]
        source = build_source(
            d["source"], d["kind"], float(d["fraction"]), self.seed, d["clip_seconds"]
        )
        if d["normalize"] == "dataset" and d["mean"] is None:
            # Computed once and stored in the saved config, so a resumed run reuses them.
            raw = PretrainDataset(source, normalize="none")
            d["mean"], d["std"] = compute_dataset_stats(raw, int(d["stats_clips"]))
            log.info(
                "dataset statistics over the first %d clips: mean %.4f std %.4f",
                min(int(d["stats_clips"]), len(source)),
                d["mean"],
                d["std"],
            )
        return PretrainDataset(
            source,
            num_frames=int(d["num_frames"]),
            seed=self.seed,
            normalize=d["normalize"],
            mean=d["mean"],
            std=d["std"],
            max_substitutes=int(d["max_substitutes"]),
        )

    def _build_model(self) -> torch.nn.Module:
        from mwmae.models import create_model

        model_cfg = dict(self.cfg["model"])
        name = model_cfg.pop("name")
        torch.manual_seed(self.seed)  # the same initial weights on every rank and every run
        return create_model(name, **model_cfg).to(self.info.device)

    # ---- main -------------------------------------------------------------------------------
    def run(self) -> Path:
        cfg, info = self.cfg, self.info
        is_main = info.is_main
        self._check_resume_config()
        dataset = self._build_data()
        plan = plan_run(cfg, len(dataset), info.world_size)
        if plan.micro_batch < 1:
            raise ValueError("micro batch is empty: raise batch.global_size")
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir)
            atomic_write_text(
                self.run_dir / "run_info.json",
                json.dumps(
                    {
                        "plan": asdict(plan),
                        "device": str(info.device),
                        "torch": torch.__version__,
                        "num_threads": torch.get_num_threads(),
                    },
                    indent=2,
                ),
                fsync=True,
            )
        barrier(info)

        model = self._build_model()
        o = cfg["optim"]
        fused = (o["fused"] is True) or (o["fused"] == "auto" and info.device.type == "cuda")
        optimizer = build_optimizer(
            model,
            lr=0.0,
            betas=tuple(o["betas"]),
            eps=float(o["eps"]),
            weight_decay=float(o["weight_decay"]),
            decay_exclude=bool(o["decay_exclude"]),
            fused=fused,
        )
        schedule = WarmupCosine(plan.peak_lr, plan.warmup_steps, plan.total_steps)
        step = 0
        counters = {"skipped": 0, "samples": 0}
        resumed_loss: float | None = None
        if self.resume_from is not None:
            state = ckpt.load_checkpoint(self.resume_from, model)
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"{self.resume_from}: unknown checkpoint format")
            optimizer.load_state_dict(state["optimizer"])
            if state["scheduler"] != schedule.state_dict():  # e.g. files added to the folder
                log.warning(
                    "the schedule changed since the checkpoint (%s -> %s; dataset size "
                    "%s -> %d): the run continues with the new one, not exactly",
                    state["scheduler"],
                    schedule.state_dict(),
                    state.get("dataset_size"),
                    plan.dataset_size,
                )
            step = int(state["step"])
            counters.update({k: int(v) for k, v in state["counters"].items()})
            ckpt.set_rng_state(state["rng"])
            resumed_loss = state.get("last_loss")
            log.info("resumed from %s at step %d", self.resume_from, step)

        raw_model = model
        ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if info.enabled:
            ddp = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg["ddp"]["find_unused_parameters"]),
            )
            model = ddp
        forward = torch.compile(model) if cfg["train"]["compile"] else model

        d = cfg["data"]
        sampler = EpochBatchSampler(
            len(dataset),
            plan.global_batch,
            self.seed,
            info.world_size,
            info.rank,
            plan.accum_steps,
            step,
            plan.total_steps,
        )
        pin = d["pin_memory"] is True or (d["pin_memory"] == "auto" and info.device.type == "cuda")
        loader = make_loader(
            dataset,
            sampler,
            int(d["num_workers"]),
            pin,
            int(d["prefetch_factor"]),
            generator=torch_generator(self.seed, _TAG_LOADER, info.rank),
        )

        jlog = _JsonLog(self.run_dir / "log.jsonl" if is_main else None)
        writer = self._tensorboard() if is_main else None
        jlog.write(
            {
                "event": "start",
                "step": step,
                "resumed_from": str(self.resume_from) if self.resume_from else None,
                "plan": asdict(plan),
                "world_size": info.world_size,
                "device": str(info.device),
            }
        )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=plan.total_steps,
            initial=step,
            unit="step",
            dynamic_ncols=True,
            desc=self.run_dir.name,
            disable=not (self.progress and is_main),
        )

        lg, ck = cfg["log"], cfg["checkpoint"]
        clip = o["clip_grad_norm"]
        rank_rows = plan.global_batch // info.world_size
        precision = cfg["train"]["precision"]
        sleep = float(cfg["debug"]["step_sleep"])
        loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        interval_steps, interval_start = 0, time.perf_counter()
        pending_bad: list[str] = []  # this rank's skipped clips since the last gather
        interval_bad: list[str] = []  # every rank's, since the last log record
        bad_files: set[str] = set()  # distinct files among them (a bad file recurs)
        last: dict[str, Any] = {"loss": resumed_loss}  # the latest logged values
        grad_norm: torch.Tensor | None = None
        fig_batch: torch.Tensor | None = None
        started = time.perf_counter()
        batches = iter(loader)
        model.train()

        while step < plan.total_steps:
            noise = masking_noise(raw_model, self.seed, step, plan.global_batch)
            lr = schedule(step)
            set_lr(optimizer, lr)
            for micro in range(plan.accum_steps):
                batch = next(batches)
                pending_bad.extend(batch["bad"])
                spec = batch["spec"].to(info.device, non_blocking=True)
                lo = info.rank * rank_rows + micro * plan.micro_batch
                micro_noise = noise[lo : lo + plan.micro_batch].to(info.device)
                sync = ddp is None or micro == plan.accum_steps - 1
                with contextlib.nullcontext() if sync else ddp.no_sync():
                    with _autocast(info.device, precision):
                        loss = forward(spec, noise=micro_noise).loss
                    (loss / plan.accum_steps).backward()
                loss_sum += loss.detach().double() / plan.accum_steps
            if clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), float(clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            counters["samples"] += plan.global_batch
            interval_steps += 1
            bar.update(1)
            if sleep:
                time.sleep(sleep)

            final = step == plan.total_steps
            do_log = final or (lg["every"] and step % lg["every"] == 0)
            do_ckpt = final or (ck["every"] and step % ck["every"] == 0)
            if do_log or do_ckpt:
                bad = gather_strings(info, pending_bad)  # every rank: same counts
                pending_bad = []
                counters["skipped"] += len(bad)
                bad_files.update(map(clip_file, bad))
                interval_bad.extend(bad)
            if do_log:
                all_reduce_sum(info, loss_sum)
                mean_loss = float(loss_sum) / (interval_steps * info.world_size)
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss is {mean_loss} at step {step}")
                elapsed = time.perf_counter() - interval_start
                last = {
                    "event": "train",
                    "step": step,
                    "epoch": round(step * plan.global_batch / plan.dataset_size, 4),
                    "loss": mean_loss,
                    "lr": lr,
                    "samples_per_s": interval_steps * plan.global_batch / max(elapsed, 1e-9),
                    "skipped_interval": len(interval_bad),
                    "skipped_total": counters["skipped"],
                    "elapsed_s": round(time.perf_counter() - started, 3),
                }
                if grad_norm is not None:
                    last["grad_norm"] = float(grad_norm)
                if interval_bad:
                    last["bad_files"] = interval_bad[:50]  # the first ones; all are counted
                    interval_bad = []
                jlog.write(last)
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/samples_per_s", last["samples_per_s"], step)
                    writer.add_scalar("data/skipped_total", counters["skipped"], step)
                    if grad_norm is not None:
                        writer.add_scalar("train/grad_norm", float(grad_norm), step)
                    writer.flush()
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", sps=f"{last['samples_per_s']:.1f}"
                )
                loss_sum.zero_()
                interval_steps, interval_start = 0, time.perf_counter()
            if is_main and lg["figure_every"] and (final or step % lg["figure_every"] == 0):
                if fig_batch is None:
                    n = min(int(lg["figure_samples"]), len(dataset))
                    fig_batch = torch.stack([dataset[(0, i)]["spec"] for i in range(n)])
                self._figure(raw_model, fig_batch.to(info.device), step)
            if do_ckpt:
                if is_main:
                    state = {
                        "format": STATE_FORMAT,
                        "step": step,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": schedule.state_dict(),
                        "counters": dict(counters),
                        "rng": ckpt.rng_state(),
                        "last_loss": last.get("loss"),
                        "dataset_size": plan.dataset_size,
                    }
                    path = ckpt.save_checkpoint(
                        self.run_dir / "checkpoints",
                        step,
                        raw_model,
                        state,
                        meta={
                            "loss": last.get("loss"),
                            "epoch": last.get("epoch"),
                            "config": cfg["name"],
                        },
                        keep=int(ck["keep"]),
                    )
                    jlog.write({"event": "checkpoint", "step": step, "path": str(path)})
                barrier(info)
        bar.close()

        replica_diff = None
        if info.enabled and cfg["ddp"]["check_replicas"]:
            replica_diff = replica_max_abs_diff(info, raw_model)
        final_dir = self.run_dir / "final"
        summary = {
            "event": "end",
            "step": step,
            "total_steps": plan.total_steps,
            "final": str(final_dir),
            "skipped_total": counters["skipped"],
            "bad_files": len(bad_files),
            "samples_seen": counters["samples"],
            "world_size": info.world_size,
            "loss": last.get("loss"),
            "replica_max_abs_diff": replica_diff,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if is_main:
            raw_model.save_pretrained(final_dir)
            jlog.write(summary)
            atomic_write_text(
                self.run_dir / "summary.json", json.dumps(summary, indent=2), fsync=True
            )
            if writer is not None:
                writer.close()
        barrier(info)
        return self.run_dir

    # ---- helpers ----------------------------------------------------------------------------
    def _tensorboard(self):
        if not self.cfg["log"]["tensorboard"]:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            log.warning("tensorboard is not installed: no TensorBoard scalars")
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def _figure(self, model: torch.nn.Module, spec: torch.Tensor, step: int) -> None:
        try:
            from mwmae.analysis.figures import save_reconstruction_figure
        except ImportError as exc:
            log.warning("no reconstruction figure (%s)", exc)
            self.cfg["log"]["figure_every"] = 0
            return
        path = self.run_dir / "figures" / f"reconstruction_step_{step:08d}.png"
        try:
            save_reconstruction_figure(
                model, spec, path, num_samples=int(self.cfg["log"]["figure_samples"])
            )
        except Exception as exc:  # a figure must never stop training
            log.warning("reconstruction figure failed at step %d: %s", step, exc)


def load_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines log of a run, as a list of records."""
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "RunPlan",
    "derive_seed",
    "load_log",
    "masking_noise",
    "plan_run",
    "pretrain",
    "run_dir_for",
]
