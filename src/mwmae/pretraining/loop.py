"""The pretraining loop: set up, resume, step, log, checkpoint, finish.

`pretrain(config, overrides)` is the whole job; `mwmae pretrain` and `torchrun -m mwmae
pretrain` call it. The loop reads top to bottom in `pretrain`; the training machinery
(session, `Trainer`, checkpoints, run log, Ctrl-C) is `mwmae.training`'s. Reproducibility rules
(what makes 1 process == N processes and a resumed run == an uninterrupted one):

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
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mwmae._io import atomic_write_text
from mwmae._rng import torch_generator
from mwmae.data import (
    EpochBatchSampler,
    PretrainDataset,
    build_mel_cache,
    build_source,
    clip_file,
    compute_dataset_stats,
    device_batches,
    make_loader,
    prepare_index,
)
from mwmae.errors import ConfigError, MissingFileError, MwmaeError
from mwmae.models import MaskedAutoencoder
from mwmae.training import (
    RunLog,
    StopOnInterrupt,
    Trainer,
    TrainingInterrupted,
    WarmupCosine,
    build_optimizer,
    check_resume_config,
    due,
    micro_batch_rows,
    run_lock,
    save_config,
    session,
    stop_requested,
)
from mwmae.training import checkpoint as ckpt
from mwmae.training.config import read_saved_config
from mwmae.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_strings,
    replica_max_abs_diff,
)

from .config import (
    RESUME_MUTABLE,
    PretrainConfig,
    build_pretrain_config,
    load_pretrain_config,
)

log = logging.getLogger(__name__)

KIND = "pretrain"  # of the checkpoints' training state
_TAG_MASK = 0x5EED_0010
_TAG_LOADER = 0x5EED_0011


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


def plan_run(
    config: PretrainConfig | Mapping[str, Any], dataset_size: int, world_size: int = 1
) -> RunPlan:
    """Steps, warm-up and peak lr as the reference: epoch = dataset_size // batch steps,
    lr = base_lr * batch / 256."""
    cfg = load_pretrain_config(config)
    global_batch, accum = cfg.batch.global_size, cfg.batch.accum_steps
    if global_batch % (world_size * accum):
        raise ConfigError(
            f"batch.global_size {global_batch} is not divisible by world size {world_size} x "
            f"batch.accum_steps {accum}"
        )
    spe = cfg.schedule.steps_per_epoch or max(1, dataset_size // global_batch)
    total, warmup = cfg.schedule.plan(spe)
    micro = global_batch // (world_size * accum)
    peak_lr = cfg.optim.base_lr * global_batch / 256
    return RunPlan(
        dataset_size, global_batch, world_size, accum, micro, spe, total, warmup, peak_lr
    )


def masking_noise(model: torch.nn.Module, seed: int, step: int, global_batch: int) -> torch.Tensor:
    """(global_batch, L) masking noise of step `step`, the same for any number of ranks."""
    return model.masking_noise(global_batch, generator=torch_generator(seed, _TAG_MASK, step))


def run_dir_for(config: PretrainConfig | Mapping[str, Any]) -> Path:
    if isinstance(config, PretrainConfig):
        return Path(config.output.dir) / (config.output.run_name or config.name)
    out = config["output"]
    return Path(out["dir"]) / (out.get("run_name") or config["name"])


def snapshot_dir(run_dir: str | Path, step: int) -> Path:
    """Where `checkpoint.snapshots` writes the model of `step` (a `from_pretrained` folder)."""
    return Path(run_dir) / "snapshots" / f"step_{step:08d}"


@dataclass
class _Interval:
    """What a log record sums up: since the last one, the loss (on the device), the steps, the
    time, and every rank's bad clips; `pending` holds this rank's not yet gathered."""

    loss_sum: torch.Tensor
    started: float
    steps: int = 0
    grad_norm: torch.Tensor | None = None
    bad: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """What the loop carries from step to step, besides the trainer's model and step."""

    cfg: PretrainConfig
    run_dir: Path
    plan: RunPlan
    dataset: PretrainDataset
    batches: Iterator[dict[str, Any]]
    trainer: Trainer
    log: RunLog
    interval: _Interval
    counters: dict[str, int]  # skipped clips, samples seen (checkpointed)
    bad_files: set[str] = field(default_factory=set)  # distinct files among skipped clips
    last: dict[str, Any] = field(default_factory=dict)  # the latest log record
    started: float = field(default_factory=time.perf_counter)
    figure_batch: tuple[torch.Tensor, list[int]] | None = None  # clips, their real frames
    figures_on: bool = True  # off when matplotlib is missing

    @property
    def step(self) -> int:
        return self.trainer.step


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
    with (
        session(cfg.train, cfg.ddp) as info,
        run_lock(run_dir_for(cfg), info),  # one writer per run folder
        StopOnInterrupt() as stop,
    ):
        run = _set_up(cfg, info, resume, progress)
        _snapshot(run)  # step 0 (the initial weights), when asked for
        while run.step < run.plan.total_steps:
            _step(run)
            _snapshot(run)
            step, total = run.step, run.plan.total_steps
            log_now = due(step, total, cfg.log.every)
            save_now = due(step, total, cfg.checkpoint.every)
            if log_now or save_now:
                _gather_bad(run)
            if log_now:
                _log(run)
            if cfg.log.figure_every and due(step, total, cfg.log.figure_every):
                _figure(run)
            if save_now:
                _checkpoint(run)
            if stop_requested(info, stop):
                _stop(run)
        return _finish(run)


# ---- set up ---------------------------------------------------------------------------------
def _set_up(cfg: PretrainConfig, info: DistInfo, resume: bool | str | Path, progress: bool) -> _Run:
    run_dir = run_dir_for(cfg)
    loaded = _find_resume(resume, run_dir)
    if loaded is not None:
        cfg = _check_resume_config(cfg, run_dir)
    dataset, cfg = _build_data(cfg, info, progress and info.is_main)
    plan = plan_run(cfg, len(dataset), info.world_size)
    _check_plan(cfg, plan)
    if info.is_main:
        _write_run_info(cfg, run_dir, plan, info)
    barrier(info)
    trainer = _build_trainer(cfg, plan, info)
    counters = {"skipped": 0, "samples": 0}
    last: dict[str, Any] = {}
    if loaded is not None:
        state = trainer.restore(loaded, KIND)
        _check_schedule(state, trainer.schedule, plan)
        counters.update({k: int(v) for k, v in state["counters"].items()})
        last = {"loss": state.get("last_loss")}
        log.info("resumed from %s at step %d", loaded.path, trainer.step)
    batches = device_batches(_build_loader(cfg, dataset, plan, info, trainer.step), info.device)
    run_log = RunLog(
        run_dir,
        enabled=info.is_main,
        total=plan.total_steps,
        initial=trainer.step,
        desc=run_dir.name,
        progress=progress,
        tensorboard=cfg.log.tensorboard,
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    interval = _Interval(loss_sum, started=time.perf_counter())
    run = _Run(
        cfg, run_dir, plan, dataset, batches, trainer, run_log, interval, counters, last=last
    )
    run.log.write(
        {
            "event": "start",
            "step": trainer.step,
            "resumed_from": str(loaded.path) if loaded is not None else None,
            "plan": asdict(plan),
            "world_size": info.world_size,
            "device": str(info.device),
        }
    )
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
    """The config a run is resumed with must match the saved one (but for RESUME_MUTABLE);
    dataset statistics computed by the first launch are reused."""
    saved = read_saved_config(run_dir)
    if saved is None:
        return cfg
    sdata = saved.get("data", {})
    if cfg.data.normalize == "dataset" and cfg.data.mean is None:
        data = dataclasses.replace(cfg.data, mean=sdata.get("mean"), std=sdata.get("std"))
        cfg = dataclasses.replace(cfg, data=data)
    check_resume_config(_as_built(saved), cfg, RESUME_MUTABLE, run_dir)
    return cfg


def _as_built(saved: dict[str, Any]) -> PretrainConfig | dict[str, Any]:
    """A saved config as the config it builds today (older runs saved the model section as a
    preset name plus overrides), or as written where it no longer builds."""
    try:
        return build_pretrain_config(saved)
    except ConfigError:
        return saved


def _build_data(
    cfg: PretrainConfig, info: DistInfo, progress: bool = False
) -> tuple[PretrainDataset, PretrainConfig]:
    """The dataset (and the config with computed dataset statistics). On CUDA the log-mel of
    audio crops and the normalisation are left to the device (`device_batches`)."""
    d = cfg.data
    clip_seconds = d.clip_seconds or None
    # Rank 0 indexes the data (headers of new or changed files only) and saves the index; the
    # others wait for it and read that file: the start-up does not grow with the ranks.
    index = prepare_index(d.source, d.kind, clip_seconds, progress) if info.is_main else None
    saved_at = str(getattr(index, "saved_at", None) or "")  # unprintable: each rank indexes
    saved = gather_strings(info, [saved_at] if saved_at and saved_at.isprintable() else [])
    shared = index if info.is_main else next(iter(saved), None)
    source = build_source(d.source, d.kind, d.fraction, cfg.seed, clip_seconds, index=shared)
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
        cfg.model.config.num_frames,
        cfg.seed,
        normalize=d.normalize,
        mean=d.mean,
        std=d.std,
        max_substitutes=d.max_substitutes,
        mel_cache=cache,
        features_on="device" if info.device.type == "cuda" else "worker",
    )
    return dataset, cfg


def _check_plan(cfg: PretrainConfig, plan: RunPlan) -> None:
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


def _build_trainer(cfg: PretrainConfig, plan: RunPlan, info: DistInfo) -> Trainer:
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = MaskedAutoencoder(cfg.model.config).to(info.device)
    o = cfg.optim
    optimizer = build_optimizer(
        model,
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
        decay_exclude=o.decay_exclude,
        fused=o.fused is True or (o.fused == "auto" and info.device.type == "cuda"),
    )
    return Trainer.wrap(
        model,
        optimizer,
        WarmupCosine(plan.peak_lr, plan.warmup_steps, plan.total_steps),
        info,
        compile=cfg.train.compile,
        find_unused_parameters=cfg.ddp.find_unused_parameters,
        precision=cfg.train.precision,
        clip_grad_norm=o.clip_grad_norm,
        accum_steps=plan.accum_steps,
        checkpoint_dir=run_dir_for(cfg) / "checkpoints",
    )


def _check_schedule(state: dict[str, Any], schedule: WarmupCosine, plan: RunPlan) -> None:
    if state["scheduler"] != schedule.state_dict():  # e.g. files added to the folder
        log.warning(
            "the schedule changed since the checkpoint (%s -> %s; dataset size "
            "%s -> %d): the run continues with the new one, not exactly",
            state["scheduler"],
            schedule.state_dict(),
            state.get("dataset_size"),
            plan.dataset_size,
        )


def _build_loader(
    cfg: PretrainConfig, dataset: PretrainDataset, plan: RunPlan, info: DistInfo, step: int
) -> torch.utils.data.DataLoader:
    sampler = EpochBatchSampler(
        len(dataset),
        plan.global_batch,
        cfg.seed,
        info.world_size,
        info.rank,
        plan.accum_steps,
        step,
        plan.total_steps,
    )
    d = cfg.data
    pin = d.pin_memory is True or (d.pin_memory == "auto" and info.device.type == "cuda")
    return make_loader(
        dataset,
        sampler,
        d.num_workers,
        pin,
        d.prefetch_factor,
        generator=torch_generator(cfg.seed, _TAG_LOADER, info.rank),
    )


# ---- step -----------------------------------------------------------------------------------
def _step(run: _Run) -> None:
    """One optimiser step of the global batch (this rank's rows of it)."""
    noise = masking_noise(run.trainer.model, run.cfg.seed, run.step, run.plan.global_batch)
    forward = run.trainer.forward
    result = run.trainer.train_step(
        lambda micro: forward(micro[0], noise=micro[1]).loss,
        _micro_batches(run, noise),
        loss_total=run.interval.loss_sum,
    )
    if result.grad_norm is not None:
        run.interval.grad_norm = result.grad_norm
    run.counters["samples"] += run.plan.global_batch
    run.interval.steps += 1
    run.log.advance()
    if run.cfg.debug.step_sleep:
        time.sleep(run.cfg.debug.step_sleep)


def _micro_batches(run: _Run, noise: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of the step: (spectrograms, their rows of the noise)."""
    plan, info = run.plan, run.trainer.info
    for micro in range(plan.accum_steps):
        batch = next(run.batches)
        run.interval.pending.extend(batch["bad"])
        spec = batch["spec"].to(info.device, non_blocking=True)
        rows = micro_batch_rows(
            plan.global_batch, info.world_size, info.rank, plan.accum_steps, micro
        )
        yield spec, noise[rows].to(info.device)


def _snapshot(run: _Run) -> None:
    if run.step not in run.cfg.checkpoint.snapshots:
        return
    run.trainer.check_weights()
    path = snapshot_dir(run.run_dir, run.step)
    if run.trainer.info.is_main and not (path / "config.json").is_file():  # kept on resume
        run.trainer.model.save_pretrained(path)
        run.log.write({"event": "snapshot", "step": run.step, "path": str(path)})


# ---- log ------------------------------------------------------------------------------------
def _gather_bad(run: _Run) -> None:
    bad = gather_strings(run.trainer.info, run.interval.pending)  # every rank: same counts
    run.interval.pending = []
    run.counters["skipped"] += len(bad)
    run.bad_files.update(map(clip_file, bad))
    run.interval.bad.extend(bad)


def _log(run: _Run) -> None:
    plan, info, interval = run.plan, run.trainer.info, run.interval
    run.trainer.check_finite()  # a diverged run stops here, before anything is written
    all_reduce_sum(info, interval.loss_sum)
    mean_loss = float(interval.loss_sum) / (interval.steps * info.world_size)
    now = time.perf_counter()
    record = {
        "event": "train",
        "step": run.step,
        "epoch": round(run.step * plan.global_batch / plan.dataset_size, 4),
        "loss": mean_loss,
        "lr": run.trainer.lr,
        "samples_per_s": interval.steps * plan.global_batch / max(now - interval.started, 1e-9),
        "skipped_interval": len(interval.bad),
        "skipped_total": run.counters["skipped"],
        "elapsed_s": round(now - run.started, 3),
    }
    if interval.grad_norm is not None:
        record["grad_norm"] = float(interval.grad_norm)
    if interval.bad:
        record["bad_files"] = interval.bad[:50]  # the first ones; all are counted
        interval.bad = []
    run.last = record
    run.log.write(record)
    run.log.scalars(
        {
            "train/loss": record["loss"],
            "train/lr": record["lr"],
            "train/samples_per_s": record["samples_per_s"],
            "data/skipped_total": run.counters["skipped"],
            "train/grad_norm": record.get("grad_norm"),
        },
        run.step,
    )
    run.log.show(
        loss=f"{mean_loss:.4f}", lr=f"{run.trainer.lr:.2e}", sps=f"{record['samples_per_s']:.1f}"
    )
    interval.loss_sum.zero_()
    interval.steps, interval.started = 0, time.perf_counter()


def _figure(run: _Run) -> None:
    """A reconstruction figure of the first clips (rank 0; never stops training)."""
    if not (run.trainer.info.is_main and run.figures_on):
        return
    try:
        from mwmae.plotting import save_reconstruction_figure
    except ImportError as exc:  # matplotlib is optional at run time
        log.warning("no reconstruction figures (%s)", exc)
        run.figures_on = False
        return
    if run.figure_batch is None:
        n = min(run.cfg.log.figure_samples, len(run.dataset))
        items = [run.dataset[(0, i)] for i in range(n)]
        frames = run.dataset.num_frames
        valid = [min(run.dataset.clip_spec(it["index"]).shape[0], frames) for it in items]
        run.figure_batch = (torch.stack([it["spec"] for it in items]), valid)
    spec, valid = run.figure_batch
    path = run.run_dir / "figures" / f"reconstruction_step_{run.step:08d}.png"
    try:
        save_reconstruction_figure(
            run.trainer.model,
            spec.to(run.trainer.info.device),
            path,
            num_samples=run.cfg.log.figure_samples,
            title=f"{run.run_dir.name} ({run.cfg.model.name}), step {run.step}",
            valid_frames=valid,
        )
    except Exception as exc:  # a figure must never stop training
        log.warning("reconstruction figure failed at step %d: %s", run.step, exc)


# ---- checkpoint, stop, finish ---------------------------------------------------------------
def _checkpoint(run: _Run) -> Path:
    state = {
        "scheduler": run.trainer.schedule.state_dict(),
        "counters": dict(run.counters),
        "last_loss": run.last.get("loss"),
        "dataset_size": run.plan.dataset_size,
    }
    meta = {"loss": run.last.get("loss"), "epoch": run.last.get("epoch"), "config": run.cfg.name}
    path = run.trainer.save(
        run.run_dir / "checkpoints", KIND, state, meta, keep=run.cfg.checkpoint.keep
    )
    run.log.write({"event": "checkpoint", "step": run.step, "path": str(path)})
    return path


def _stop(run: _Run) -> None:
    """After Ctrl-C: write a checkpoint of the finished step (unless one was just written)."""
    if run.trainer.saved_step != run.step:
        _gather_bad(run)
        _checkpoint(run)
    run.log.close()
    path = run.run_dir / "checkpoints" / f"step_{run.step:08d}"
    run.log.write({"event": "interrupted", "step": run.step, "checkpoint": str(path)})
    raise TrainingInterrupted(run.step, path, run.run_dir)


def _finish(run: _Run) -> Path:
    info = run.trainer.info
    run.log.bar.close()
    replica_diff = None
    if info.enabled and run.cfg.ddp.check_replicas:
        replica_diff = replica_max_abs_diff(info, run.trainer.model)
    final_dir = run.run_dir / "final"
    run.trainer.check_weights()
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
        run.trainer.model.save_pretrained(final_dir)
        run.log.write(summary)
        text = json.dumps(summary, indent=2)
        atomic_write_text(run.run_dir / "summary.json", text, fsync=True)
    run.log.close()
    barrier(info)
    return run.run_dir


__all__ = [
    "RunExistsError",
    "RunPlan",
    "masking_noise",
    "plan_run",
    "pretrain",
    "run_dir_for",
    "snapshot_dir",
]
