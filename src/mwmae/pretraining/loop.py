"""The pretraining loop: set up, resume, step, log, checkpoint, finish.

`pretrain(config, overrides)` is the whole job; `mwmae pretrain` and `torchrun -m mwmae
pretrain` call it. It reads top to bottom as `_set_up` (config, data, model, optimiser,
resume, loader, logs), then `_train` (for each step: `train_step` from `step.py`, then
`_log`, `_figure`, `_checkpoint`, and a clean stop on Ctrl-C), then `_finish`.
Reproducibility rules (what makes 1 process == N processes and a resumed run == an
uninterrupted one):

- data positions and crops come from (seed, step) via `EpochBatchSampler` / `PretrainDataset`;
- masking noise for the whole global batch comes from a generator seeded by (seed, step), each
  rank and micro-batch taking its rows, so masks do not depend on the number of ranks;
- the learning rate is a pure function of the step;
- a checkpoint stores the weights, AdamW state, step, counters and RNG states.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mwmae._io import atomic_write_text
from mwmae._rng import derive_seed, torch_generator
from mwmae.data import (
    EpochBatchSampler,
    PretrainDataset,
    build_mel_cache,
    build_source,
    clip_file,
    compute_dataset_stats,
    make_loader,
)
from mwmae.errors import ConfigError, IntegrityError, MissingFileError, MwmaeError

from . import checkpoint as ckpt
from .config import PretrainConfig, load_pretrain_config, resume_mismatches, save_config
from .distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_strings,
    init_distributed,
    replica_max_abs_diff,
)
from .optim import WarmupCosine, build_optimizer
from .step import StopOnInterrupt, TrainingInterrupted, autocast, train_step

log = logging.getLogger(__name__)

_TAG_MASK = 0x5EED_0010
_TAG_LOADER = 0x5EED_0011
STATE_FORMAT = 1


class RunExistsError(MwmaeError, FileExistsError):
    """The run folder already holds checkpoints and resuming was refused."""


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


def _as_config(config: PretrainConfig | Mapping[str, Any]) -> PretrainConfig:
    return config if isinstance(config, PretrainConfig) else load_pretrain_config(config)


def plan_run(
    config: PretrainConfig | Mapping[str, Any], dataset_size: int, world_size: int = 1
) -> RunPlan:
    """Steps, warm-up and peak lr as the reference: epoch = dataset_size // batch steps,
    lr = base_lr * batch / 256."""
    cfg = _as_config(config)
    sched, global_batch, accum = cfg.schedule, cfg.batch.global_size, cfg.batch.accum_steps
    if global_batch % (world_size * accum):
        raise ConfigError(
            f"batch.global_size {global_batch} is not divisible by world size {world_size} x "
            f"batch.accum_steps {accum}"
        )
    spe = sched.steps_per_epoch or max(1, dataset_size // global_batch)
    total = sched.steps if sched.steps is not None else int(round(sched.epochs * spe))
    if sched.warmup_steps is not None:
        warmup = sched.warmup_steps
    else:
        warmup = int(round((sched.warmup_epochs or 0.0) * spe))
    if total < 1:
        raise ConfigError(f"the schedule has {total} steps (schedule.epochs x steps per epoch)")
    return RunPlan(
        dataset_size,
        global_batch,
        world_size,
        accum,
        global_batch // (world_size * accum),
        spe,
        total,
        min(warmup, total),
        cfg.optim.base_lr * global_batch / 256,
    )


def masking_noise(model: torch.nn.Module, seed: int, step: int, global_batch: int) -> torch.Tensor:
    """(global_batch, L) masking noise of step `step`, the same for any number of ranks."""
    return model.masking_noise(global_batch, generator=torch_generator(seed, _TAG_MASK, step))


def run_dir_for(config: PretrainConfig | Mapping[str, Any]) -> Path:
    if isinstance(config, PretrainConfig):
        return Path(config.output.dir) / (config.output.run_name or config.name)
    out = config["output"]
    return Path(out["dir"]) / (out.get("run_name") or config["name"])


class _JsonLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class _Run:
    """Everything the loop carries from step to step."""

    cfg: PretrainConfig
    info: DistInfo
    run_dir: Path
    dataset: PretrainDataset
    plan: RunPlan
    model: torch.nn.Module  # the bare model (weights, checkpoints, figures)
    forward: torch.nn.Module  # what is called: DDP-wrapped and/or compiled
    ddp: torch.nn.parallel.DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    step: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {"skipped": 0, "samples": 0})
    bad_files: set[str] = field(default_factory=set)  # distinct files among skipped clips
    resumed_from: Path | None = None
    last: dict[str, Any] = field(default_factory=dict)  # the latest logged values
    batches: Iterator[dict[str, Any]] | None = None
    jlog: _JsonLog | None = None
    writer: Any = None
    bar: Any = None
    # the current log interval
    lr: float = 0.0
    grad_norm: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    interval_steps: int = 0
    interval_start: float = 0.0
    pending_bad: list[str] = field(default_factory=list)  # this rank's, since the last gather
    interval_bad: list[str] = field(default_factory=list)  # every rank's, since the last log
    started: float = 0.0
    fig_batch: torch.Tensor | None = None
    fig_valid_frames: list[int] | None = None  # real frames per figure clip (rest: padding)
    figures_on: bool = True
    saved_step: int = -1  # the step of the last checkpoint written


# ---- the job --------------------------------------------------------------------------------
def pretrain(
    config: PretrainConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    progress: bool = True,
    resume: bool | str | Path = "auto",
) -> Path:
    """Pretrain a model; returns the run folder (its `final/` loads with `from_pretrained`).

    config: a `PretrainConfig`, a dict, a YAML path or a shipped preset name; overrides:
    `key=value` strings. resume: "auto" continues from the run folder's newest checkpoint
    that verifies, if there is one; True requires one; False refuses to reuse a folder with
    checkpoints; a path names a run folder or checkpoint. Under torchrun every rank calls
    this; rank 0 writes the files. Ctrl-C stops after the current step with a checkpoint and
    raises `TrainingInterrupted` (a KeyboardInterrupt).
    """
    cfg = load_pretrain_config(config, overrides)
    threads = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    info = init_distributed(cfg.train.device, cfg.ddp.backend, cfg.ddp.timeout_s)
    try:
        run = _set_up(cfg, info, resume, progress)
        with StopOnInterrupt() as stop:
            _train(run, stop)
        return _finish(run)
    finally:
        cleanup(info)
        torch.set_num_threads(threads)  # leave the caller's process as it was


# ---- set up ---------------------------------------------------------------------------------
def _set_up(cfg: PretrainConfig, info: DistInfo, resume: bool | str | Path, progress: bool) -> _Run:
    run_dir = run_dir_for(cfg)
    loaded = _find_resume(resume, run_dir)
    if loaded is not None:
        cfg = _check_resume_config(cfg, run_dir)
    dataset, cfg = _build_data(cfg, progress and info.is_main)
    plan = plan_run(cfg, len(dataset), info.world_size)
    late = [k for k in cfg.checkpoint.snapshots if k > plan.total_steps]
    if late:
        raise ConfigError(
            f"checkpoint.snapshots: steps {late} come after the run's last step "
            f"({plan.total_steps})"
        )
    if plan.global_batch > plan.dataset_size:
        log.warning(
            "batch.global_size %d is larger than the dataset (%d clips): every step repeats clips",
            plan.global_batch,
            plan.dataset_size,
        )
    if info.is_main:
        _write_run_info(cfg, run_dir, plan, info)
    barrier(info)
    model = _build_model(cfg, info)
    optimizer = _build_optimizer(cfg, model, info)
    schedule = WarmupCosine(plan.peak_lr, plan.warmup_steps, plan.total_steps)
    run = _Run(cfg, info, run_dir, dataset, plan, model, model, None, optimizer, schedule)
    if loaded is not None:
        _restore(run, loaded)
    _wrap_model(run)
    run.batches = iter(_build_loader(run))
    _open_logs(run, progress)
    return run


def _find_resume(resume: bool | str | Path, run_dir: Path) -> ckpt.Loaded | None:
    ckpt_dir = run_dir / "checkpoints"
    if resume is False or resume == "never":
        if ckpt.latest_checkpoint(ckpt_dir) is not None:
            raise RunExistsError(
                f"{run_dir} already holds checkpoints; resume it, or pick another "
                f"output.run_name / output.dir"
            )
        return None
    if resume is True or resume == "auto":
        found = ckpt.find_resumable(ckpt_dir)
        if found is None and resume is True:
            raise MissingFileError(f"nothing to resume: no checkpoint in {ckpt_dir}")
        return found
    path = Path(resume)
    if (path / ckpt.MODEL_FILE).is_file():
        return ckpt.verify_checkpoint(path)
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and ckpt.list_checkpoints(candidate):
            return ckpt.find_resumable(candidate)
    raise MissingFileError(f"{path}: no checkpoint to resume from")


def _check_resume_config(cfg: PretrainConfig, run_dir: Path) -> PretrainConfig:
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return cfg
    try:
        saved = json.loads(saved_path.read_text())
    except ValueError as exc:
        raise IntegrityError(f"{saved_path}: not readable JSON ({exc})") from None
    sdata = saved.get("data", {})
    if cfg.data.normalize == "dataset" and cfg.data.mean is None:
        data = dataclasses.replace(cfg.data, mean=sdata.get("mean"), std=sdata.get("std"))
        cfg = dataclasses.replace(cfg, data=data)
    diffs = resume_mismatches(saved, cfg)
    if diffs:
        raise ConfigError(f"cannot resume {run_dir} with a different config: " + "; ".join(diffs))
    return cfg


def _build_data(
    cfg: PretrainConfig, progress: bool = False
) -> tuple[PretrainDataset, PretrainConfig]:
    d = cfg.data
    source = build_source(d.source, d.kind, d.fraction, cfg.seed, d.clip_seconds or None)
    cache = None
    if d.cache == "memory":
        cache = build_mel_cache(source, d.cache_dir, d.cache_max_gb, progress)
        log.info(
            "log-mel cache: %d clips, %.1f MB in memory (%d read back, %d computed)",
            len(cache),
            cache.nbytes / 1e6,
            cache.hits,
            cache.misses,
        )
    if d.normalize == "dataset" and d.mean is None:
        # Computed once and stored in the saved config, so a resumed run reuses them.
        mean, std = compute_dataset_stats(source, d.stats_clips, mel_cache=cache)
        log.info(
            "dataset statistics over the first %d clips: mean %.4f std %.4f",
            min(d.stats_clips, len(source)),
            mean,
            std,
        )
        d = dataclasses.replace(d, mean=mean, std=std)
        cfg = dataclasses.replace(cfg, data=d)
    dataset = PretrainDataset(
        source,
        d.num_frames,
        cfg.seed,
        normalize=d.normalize,
        mean=d.mean,
        std=d.std,
        max_substitutes=d.max_substitutes,
        mel_cache=cache,
    )
    return dataset, cfg


def _write_run_info(cfg: PretrainConfig, run_dir: Path, plan: RunPlan, info: DistInfo) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    record = {
        "plan": asdict(plan),
        "device": str(info.device),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }
    atomic_write_text(run_dir / "run_info.json", json.dumps(record, indent=2), fsync=True)


def _build_model(cfg: PretrainConfig, info: DistInfo) -> torch.nn.Module:
    from mwmae.models import create_model

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    return create_model(cfg.model.name, **cfg.model.overrides).to(info.device)


def _build_optimizer(
    cfg: PretrainConfig, model: torch.nn.Module, info: DistInfo
) -> torch.optim.Optimizer:
    o = cfg.optim
    return build_optimizer(
        model,
        lr=0.0,
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
        decay_exclude=o.decay_exclude,
        fused=o.fused is True or (o.fused == "auto" and info.device.type == "cuda"),
    )


def _restore(run: _Run, loaded: ckpt.Loaded) -> None:
    """Continue from a verified checkpoint: weights, AdamW, step, counters, RNG."""
    state = loaded.state
    if state.get("format") != STATE_FORMAT:
        raise IntegrityError(f"{loaded.path}: unknown checkpoint format {state.get('format')!r}")
    run.model.load_state_dict(loaded.weights, strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    if state["scheduler"] != run.schedule.state_dict():  # e.g. files added to the folder
        log.warning(
            "the schedule changed since the checkpoint (%s -> %s; dataset size "
            "%s -> %d): the run continues with the new one, not exactly",
            state["scheduler"],
            run.schedule.state_dict(),
            state.get("dataset_size"),
            run.plan.dataset_size,
        )
    run.step = int(state["step"])
    run.saved_step = run.step
    run.counters.update({k: int(v) for k, v in state["counters"].items()})
    ckpt.set_rng_state(state["rng"])
    run.last = {"loss": state.get("last_loss")}
    run.resumed_from = loaded.path
    log.info("resumed from %s at step %d", loaded.path, run.step)


def _wrap_model(run: _Run) -> None:
    info = run.info
    if info.enabled:
        run.ddp = torch.nn.parallel.DistributedDataParallel(
            run.model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=run.cfg.ddp.find_unused_parameters,
        )
    wrapped = run.ddp if run.ddp is not None else run.model
    run.forward = torch.compile(wrapped) if run.cfg.train.compile else wrapped


def _build_loader(run: _Run) -> torch.utils.data.DataLoader:
    d, info, plan = run.cfg.data, run.info, run.plan
    sampler = EpochBatchSampler(
        len(run.dataset),
        plan.global_batch,
        run.cfg.seed,
        info.world_size,
        info.rank,
        plan.accum_steps,
        run.step,
        plan.total_steps,
    )
    pin = d.pin_memory is True or (d.pin_memory == "auto" and info.device.type == "cuda")
    return make_loader(
        run.dataset,
        sampler,
        d.num_workers,
        pin,
        d.prefetch_factor,
        generator=torch_generator(run.cfg.seed, _TAG_LOADER, info.rank),
    )


def _open_logs(run: _Run, progress: bool) -> None:
    from tqdm.auto import tqdm

    is_main = run.info.is_main
    run.jlog = _JsonLog(run.run_dir / "log.jsonl" if is_main else None)
    run.writer = _tensorboard(run) if is_main else None
    run.jlog.write(
        {
            "event": "start",
            "step": run.step,
            "resumed_from": str(run.resumed_from) if run.resumed_from else None,
            "plan": asdict(run.plan),
            "world_size": run.info.world_size,
            "device": str(run.info.device),
        }
    )
    run.bar = tqdm(
        total=run.plan.total_steps,
        initial=run.step,
        unit="step",
        dynamic_ncols=True,
        desc=run.run_dir.name,
        disable=not (progress and is_main),
    )


def _tensorboard(run: _Run) -> Any:
    if not run.cfg.log.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        log.warning("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(run.run_dir / "tb"))


# ---- train ----------------------------------------------------------------------------------
def _train(run: _Run, stop: StopOnInterrupt) -> None:
    run.loss_sum = torch.zeros((), dtype=torch.float64, device=run.info.device)
    run.interval_start = run.started = time.perf_counter()
    run.model.train()
    lg, ck = run.cfg.log, run.cfg.checkpoint
    _snapshot(run)  # step 0 (the initial weights), when asked for
    while run.step < run.plan.total_steps:
        _step(run)
        _snapshot(run)
        final = run.step == run.plan.total_steps
        do_log = final or bool(lg.every and run.step % lg.every == 0)
        do_ckpt = final or bool(ck.every and run.step % ck.every == 0)
        if do_log or do_ckpt:
            _gather_bad(run)
        if do_log:
            _log(run)
        if run.info.is_main and lg.figure_every and (final or run.step % lg.figure_every == 0):
            _figure(run)
        if do_ckpt:
            _checkpoint(run)
        if _stop_requested(run, stop):
            _stop(run)
    run.bar.close()


def _step(run: _Run) -> None:
    """One optimiser step of the global batch (this rank's rows of it)."""
    plan, info = run.plan, run.info
    noise = masking_noise(run.model, run.cfg.seed, run.step, plan.global_batch)
    run.lr = run.schedule(run.step)
    result = train_step(
        lambda micro: run.forward(micro[0], noise=micro[1]).loss,
        _micro_batches(run, noise),
        run.optimizer,
        run.lr,
        plan.accum_steps,
        params=run.model.parameters(),
        clip_grad_norm=run.cfg.optim.clip_grad_norm,
        ddp=run.ddp,
        amp=autocast(info.device, run.cfg.train.precision),
        loss_total=run.loss_sum,
    )
    if result.grad_norm is not None:
        run.grad_norm = result.grad_norm
    run.step += 1
    run.counters["samples"] += plan.global_batch
    run.interval_steps += 1
    run.bar.update(1)
    if run.cfg.debug.step_sleep:
        time.sleep(run.cfg.debug.step_sleep)


def _micro_batches(run: _Run, noise: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of the step: (spectrograms, their rows of the noise)."""
    plan, info = run.plan, run.info
    rank_rows = plan.global_batch // info.world_size
    for micro in range(plan.accum_steps):
        batch = next(run.batches)
        run.pending_bad.extend(batch["bad"])
        spec = batch["spec"].to(info.device, non_blocking=True)
        lo = info.rank * rank_rows + micro * plan.micro_batch
        yield spec, noise[lo : lo + plan.micro_batch].to(info.device)


def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    """Where `checkpoint.snapshots` writes the model of `step` (a `from_pretrained` folder)."""
    return Path(run_dir) / "snapshots" / f"step_{step:08d}"


def _snapshot(run: _Run) -> None:
    if run.step not in run.cfg.checkpoint.snapshots or not run.info.is_main:
        return
    path = snapshot_dir(run.run_dir, run.step)
    if not (path / "config.json").is_file():  # a resumed run keeps the one it wrote
        run.model.save_pretrained(path)
        run.jlog.write({"event": "snapshot", "step": run.step, "path": str(path)})


def _gather_bad(run: _Run) -> None:
    bad = gather_strings(run.info, run.pending_bad)  # every rank: same counts
    run.pending_bad = []
    run.counters["skipped"] += len(bad)
    run.bad_files.update(map(clip_file, bad))
    run.interval_bad.extend(bad)


def _log(run: _Run) -> None:
    plan = run.plan
    all_reduce_sum(run.info, run.loss_sum)
    mean_loss = float(run.loss_sum) / (run.interval_steps * run.info.world_size)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"loss is {mean_loss} at step {run.step}")
    now = time.perf_counter()
    last = {
        "event": "train",
        "step": run.step,
        "epoch": round(run.step * plan.global_batch / plan.dataset_size, 4),
        "loss": mean_loss,
        "lr": run.lr,
        "samples_per_s": run.interval_steps
        * plan.global_batch
        / max(now - run.interval_start, 1e-9),
        "skipped_interval": len(run.interval_bad),
        "skipped_total": run.counters["skipped"],
        "elapsed_s": round(now - run.started, 3),
    }
    if run.grad_norm is not None:
        last["grad_norm"] = float(run.grad_norm)
    if run.interval_bad:
        last["bad_files"] = run.interval_bad[:50]  # the first ones; all are counted
        run.interval_bad = []
    run.last = last
    run.jlog.write(last)
    _tensorboard_scalars(run)
    run.bar.set_postfix(
        loss=f"{mean_loss:.4f}", lr=f"{run.lr:.2e}", sps=f"{last['samples_per_s']:.1f}"
    )
    run.loss_sum.zero_()
    run.interval_steps, run.interval_start = 0, time.perf_counter()


def _tensorboard_scalars(run: _Run) -> None:
    if run.writer is None:
        return
    last, step = run.last, run.step
    run.writer.add_scalar("train/loss", last["loss"], step)
    run.writer.add_scalar("train/lr", last["lr"], step)
    run.writer.add_scalar("train/samples_per_s", last["samples_per_s"], step)
    run.writer.add_scalar("data/skipped_total", run.counters["skipped"], step)
    if run.grad_norm is not None:
        run.writer.add_scalar("train/grad_norm", float(run.grad_norm), step)
    run.writer.flush()


def _figure(run: _Run) -> None:
    if not run.figures_on:
        return
    try:
        from mwmae.plotting import save_reconstruction_figure
    except ImportError as exc:  # matplotlib is optional at run time
        log.warning("no reconstruction figures (%s)", exc)
        run.figures_on = False
        return
    samples = run.cfg.log.figure_samples
    if run.fig_batch is None:
        n = min(samples, len(run.dataset))
        items = [run.dataset[(0, i)] for i in range(n)]
        run.fig_batch = torch.stack([item["spec"] for item in items])
        frames = run.dataset.num_frames
        run.fig_valid_frames = [
            min(run.dataset.clip_spec(item["index"]).shape[0], frames) for item in items
        ]
    path = run.run_dir / "figures" / f"reconstruction_step_{run.step:08d}.png"
    try:
        save_reconstruction_figure(
            run.model,
            run.fig_batch.to(run.info.device),
            path,
            num_samples=samples,
            title=f"{run.run_dir.name} ({run.cfg.model.name}), step {run.step}",
            valid_frames=run.fig_valid_frames,
        )
    except Exception as exc:  # a figure must never stop training
        log.warning("reconstruction figure failed at step %d: %s", run.step, exc)


def _checkpoint(run: _Run) -> None:
    if run.info.is_main:
        state = {
            "format": STATE_FORMAT,
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.schedule.state_dict(),
            "counters": dict(run.counters),
            "rng": ckpt.rng_state(),
            "last_loss": run.last.get("loss"),
            "dataset_size": run.plan.dataset_size,
        }
        meta = {"loss": run.last.get("loss"), "epoch": run.last.get("epoch")}
        path = ckpt.save_checkpoint(
            run.run_dir / "checkpoints",
            run.step,
            run.model,
            state,
            meta={**meta, "config": run.cfg.name},
            keep=run.cfg.checkpoint.keep,
        )
        run.jlog.write({"event": "checkpoint", "step": run.step, "path": str(path)})
    run.saved_step = run.step
    barrier(run.info)


# ---- stop on Ctrl-C -------------------------------------------------------------------------
def _stop_requested(run: _Run, stop: StopOnInterrupt) -> bool:
    if not run.info.enabled:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=run.info.device)
    return bool(all_reduce_max(run.info, flag).item())  # every rank stops at the same step


def _stop(run: _Run) -> None:
    """After Ctrl-C: write a checkpoint of the finished step (unless one was just written)."""
    if run.saved_step != run.step:
        _gather_bad(run)
        _checkpoint(run)
    run.bar.close()
    path = run.run_dir / "checkpoints" / f"step_{run.step:08d}"
    run.jlog.write({"event": "interrupted", "step": run.step, "checkpoint": str(path)})
    if run.writer is not None:
        run.writer.close()
    raise TrainingInterrupted(run.step, path, run.run_dir)


# ---- finish ---------------------------------------------------------------------------------
def _finish(run: _Run) -> Path:
    info = run.info
    replica_diff = None
    if info.enabled and run.cfg.ddp.check_replicas:
        replica_diff = replica_max_abs_diff(info, run.model)
    final_dir = run.run_dir / "final"
    summary = {
        "event": "end",
        "step": run.step,
        "total_steps": run.plan.total_steps,
        "final": str(final_dir),
        "skipped_total": run.counters["skipped"],
        "bad_files": len(run.bad_files),
        "samples_seen": run.counters["samples"],
        "world_size": info.world_size,
        "loss": run.last.get("loss"),
        "replica_max_abs_diff": replica_diff,
        "elapsed_s": round(time.perf_counter() - run.started, 3),
    }
    if info.is_main:
        run.model.save_pretrained(final_dir)
        run.jlog.write(summary)
        atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2), fsync=True)
        if run.writer is not None:
            run.writer.close()
    barrier(info)
    return run.run_dir


def load_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines log of a run, as a list of records."""
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "RunExistsError",
    "RunPlan",
    "derive_seed",
    "load_log",
    "masking_noise",
    "plan_run",
    "pretrain",
    "run_dir_for",
    "snapshot_dir",
]
