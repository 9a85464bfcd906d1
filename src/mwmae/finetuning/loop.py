"""The fine-tuning job: for each seed and fold, train with validation, keep the best, test.

`finetune(config, overrides)` is the whole job (`mwmae finetune` and `torchrun -m mwmae
finetune` call it). Layout of its run folder:

    config.yaml / config.json       the resolved config
    seed_<s>/<test split>/          one training run (one fold of a k-fold task)
        checkpoints/                `mwmae.training.checkpoint` (verified, atomic)
        best.safetensors            weights of the best validation score so far
        log.jsonl                   train and valid records
        result.json                 validation and test scores (the fold is done)
    results.json / results.md       the format `mwmae compare` reads (protocol: finetune)

Reproducibility: every random choice of step t (clips, crops, SpecAugment masks, mixup, drop
path) comes from seeds derived from (seed, t, rank), and a checkpoint holds the weights, the
AdamW state and the best score so far, so a resumed run equals an uninterrupted one. The
training machinery (session, `Trainer`, checkpoints, run log, Ctrl-C) is `mwmae.training`'s.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mwmae._config import to_dict
from mwmae._io import atomic_write_text, load_weights, save_weights
from mwmae._rng import derive_seed, torch_generator
from mwmae.errors import ConfigError, IntegrityError
from mwmae.evaluation.metrics import METRICS
from mwmae.evaluation.report import summarize, write_run
from mwmae.evaluation.tasks import DataSplit
from mwmae.features import finetune_crop, inference_units
from mwmae.training import (
    RunLog,
    StopOnInterrupt,
    Trainer,
    TrainingInterrupted,
    WarmupCosine,
    adamw,
    autocast,
    check_resume_config,
    due,
    find_resumable,
    micro_batch_rows,
    run_lock,
    save_config,
    session,
    stop_requested,
)
from mwmae.training.config import read_saved_config
from mwmae.training.distributed import DistInfo, barrier

from .config import RESUME_MUTABLE, FinetuneConfig, load_finetune_config
from .data import FinetuneTask, load_finetune_task, load_spectrograms, load_task_spectrograms
from .model import (
    FinetuneModel,
    add_drop_path,
    freeze,
    layer_decay_groups,
    load_encoder,
    model_label,
)

log = logging.getLogger(__name__)

_TAG_INIT, _TAG_BATCH, _TAG_AUG, _TAG_STEP = 0x5EED_0F80, 0x5EED_0F81, 0x5EED_0F82, 0x5EED_0F83
KIND = "finetune"  # of the checkpoints' training state
BEST_FILE = "best.safetensors"


@dataclass
class _Fold:
    """One training run: its data, the trainer, and the best validation score so far."""

    cfg: FinetuneConfig
    task: FinetuneTask
    seed: int
    out: Path
    unit: int  # frames of one model input
    train_x: list[torch.Tensor]
    train_y: torch.Tensor
    valid_x: list[torch.Tensor]
    valid_y: torch.Tensor
    trainer: Trainer
    total_steps: int
    eval_every: int
    log: RunLog
    best_score: float = -math.inf
    best_step: int = -1

    @property
    def info(self) -> DistInfo:
        return self.trainer.info

    @functools.cached_property
    def sample_weights(self) -> torch.Tensor | None:
        """The class-balanced draw's per-clip weights (the targets never change within a
        fold: computed once), or None where batches follow the epoch permutation."""
        balanced = self.cfg.augment.balanced_sampling
        if balanced is True or (balanced == "auto" and self.task.multilabel):
            return class_balanced_weights(self.train_y)
        return None

    @property
    def model(self) -> FinetuneModel:
        return self.trainer.model  # type: ignore[return-value]


# ---- the job --------------------------------------------------------------------------------
def finetune(
    config: FinetuneConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    progress: bool = True,
    resume: bool | str = "auto",
) -> Path:
    """Fine-tune `cfg.model` on `cfg.task` for every seed and fold; returns the run folder.

    resume: "auto" continues each unfinished fold from its newest checkpoint that verifies
    and skips finished ones; False starts again (refusing a folder with checkpoints). Ctrl-C
    stops after the current step with a checkpoint (`TrainingInterrupted`)."""
    cfg = load_finetune_config(config, overrides)
    with session(cfg.train, cfg.ddp) as info:
        task = load_finetune_task(
            cfg.task, cfg.seed, cfg.manifest.valid_fraction, cfg.manifest.test_fraction
        )
        cache = load_task_spectrograms(task)  # bad clips skipped; a split left empty: error
        run_dir = run_dir_for(cfg, task)
        with run_lock(run_dir, info), StopOnInterrupt() as stop:  # one writer per run folder
            _prepare_run_dir(cfg, run_dir, info, resume)
            per_seed = []
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                folds = [
                    _run_fold(cfg, info, task, seed, a, run_dir, cache, stop, progress)
                    for a in _assignments(cfg, task)
                ]
                per_seed.append({"seed": seed, "folds": folds})
            if info.is_main:
                write_run(results_record(cfg, task, per_seed), run_dir)
            barrier(info)
        return run_dir


def run_dir_for(cfg: FinetuneConfig, task: FinetuneTask) -> Path:
    name = cfg.output.run_name or f"{task.name}_{model_label(cfg.model)}_{cfg.name}"
    return Path(cfg.output.dir) / name


def _assignments(cfg: FinetuneConfig, task: FinetuneTask) -> list[DataSplit]:
    return task.assignments[: cfg.eval.max_folds] if cfg.eval.max_folds else task.assignments


def _prepare_run_dir(cfg: FinetuneConfig, run_dir: Path, info: DistInfo, resume: Any) -> None:
    saved = read_saved_config(run_dir)
    if saved is not None:
        if resume is False:
            raise ConfigError(f"{run_dir} already holds a run; pick another output.run_name")
        check_resume_config(saved, cfg, RESUME_MUTABLE, run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
    barrier(info)


# ---- one fold -------------------------------------------------------------------------------
def _run_fold(
    cfg: FinetuneConfig,
    info: DistInfo,
    task: FinetuneTask,
    seed: int,
    assignment: DataSplit,
    run_dir: Path,
    cache: dict[Path, torch.Tensor],
    stop: StopOnInterrupt,
    progress: bool,
) -> dict[str, Any]:
    out = run_dir / f"seed_{seed}" / "+".join(assignment.test)
    done = out / "result.json"
    if done.is_file():
        log.info("%s: done, skipped", out)
        return json.loads(done.read_text())
    fold = _set_up(cfg, info, task, seed, assignment, out, cache, progress)
    _train(fold, stop)
    result = _test(fold, assignment, cache)
    if info.is_main:
        atomic_write_text(done, json.dumps(result, indent=2), fsync=True)
    barrier(info)
    return result


def _set_up(cfg, info, task, seed, assignment, out, cache, progress) -> _Fold:
    train_clips, valid_clips = task.clips(assignment.train), task.clips(assignment.valid)
    trainer, spe = _build_trainer(cfg, info, task, seed, len(train_clips), out)
    best = {"best_score": -math.inf, "best_step": -1}
    loaded = find_resumable(out / "checkpoints")
    if loaded is not None:
        state = trainer.restore(loaded, KIND)
        best = {"best_score": float(state["best_score"]), "best_step": int(state["best_step"])}
        log.info("resumed %s at step %d", out, trainer.step)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    total = trainer.schedule.total_steps
    run_log = RunLog(
        out,
        enabled=info.is_main,
        total=total,
        initial=trainer.step,
        desc=str(out.relative_to(out.parents[1])),
        progress=progress,
    )
    if loaded is not None:
        run_log.write({"event": "resume", "step": trainer.step, "checkpoint": str(loaded.path)})
    unit = trainer.model.encoder.config.num_frames
    return _Fold(
        cfg, task, seed, out, unit,
        load_spectrograms(train_clips, cache), task.targets(train_clips),
        load_spectrograms(valid_clips, cache), task.targets(valid_clips),
        trainer, total, cfg.eval.every or spe, run_log, **best,
    )  # fmt: skip


def _build_trainer(
    cfg: FinetuneConfig, info: DistInfo, task: FinetuneTask, seed: int, n_train: int, out: Path
) -> tuple[Trainer, int]:
    """The classifier on the device, its layer-decayed AdamW and schedule; and the steps per
    epoch."""
    torch.manual_seed(derive_seed(seed, _TAG_INIT))  # random-init baselines: seeded weights
    encoder = load_encoder(cfg.model)
    model = FinetuneModel(
        encoder, len(task.vocabulary), cfg.head.pool, cfg.head.fc_norm, cfg.head.init_std
    )
    freeze(model, cfg.head.freeze_blocks)
    add_drop_path(model, cfg.head.drop_path)
    model.to(info.device)
    o = cfg.optim
    groups = layer_decay_groups(model, o.weight_decay, cfg.head.layer_decay)
    total, warmup, spe = plan_steps(cfg, n_train)
    trainer = Trainer.wrap(
        model,
        adamw(groups, o.betas, o.eps),
        WarmupCosine(o.base_lr * cfg.batch.size / 256, warmup, total),
        info,
        compile=cfg.train.compile,
        find_unused_parameters=cfg.ddp.find_unused_parameters,
        precision=cfg.train.precision,
        clip_grad_norm=o.clip_grad_norm,
        accum_steps=cfg.batch.accum_steps,
        checkpoint_dir=out / "checkpoints",
    )
    return trainer, spe


def plan_steps(cfg: FinetuneConfig, n_train: int) -> tuple[int, int, int]:
    """(total steps, warm-up steps, steps per epoch = n_train // batch, at least 1)."""
    spe = max(1, n_train // cfg.batch.size)
    total, warmup = cfg.schedule.plan(spe)
    return total, warmup, spe


# ---- train ----------------------------------------------------------------------------------
def _train(fold: _Fold, stop: StopOnInterrupt) -> None:
    cfg, trainer = fold.cfg, fold.trainer
    loss = torch.zeros((), dtype=torch.float64, device=fold.info.device)
    fold.model.train()
    started, steps_done = time.perf_counter(), 0
    while trainer.step < fold.total_steps:
        loss.zero_()
        trainer.train_step(lambda batch: _loss(fold, *batch), _micro_batches(fold), loss)
        steps_done += 1
        fold.log.advance()
        step, total = trainer.step, fold.total_steps
        if due(step, total, cfg.log.every):
            trainer.check_finite()  # a diverged run stops here, before anything is written
            sps = steps_done * cfg.batch.size / max(time.perf_counter() - started, 1e-9)
            fold.log.write({"event": "train", "step": step, "loss": float(loss),
                            "lr": trainer.lr, "samples_per_s": sps})  # fmt: skip
        if due(step, total, fold.eval_every):
            _validate(fold)
        if due(step, total, cfg.checkpoint.every or fold.eval_every):
            _checkpoint(fold)
        if cfg.debug.step_sleep:
            time.sleep(cfg.debug.step_sleep)
        if stop_requested(fold.info, stop):
            if trainer.saved_step != step:
                _checkpoint(fold)
            fold.log.close()
            fold.log.write({"event": "interrupted", "step": step})
            raise TrainingInterrupted(step, fold.out / "checkpoints", fold.out)
    fold.log.close()


def _micro_batches(fold: _Fold) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of the step: cropped, SpecAugmented spectrograms, targets."""
    cfg, info, step = fold.cfg, fold.info, fold.trainer.step
    rows = batch_indices(fold, step)
    gen = torch_generator(fold.seed, _TAG_AUG, step, info.rank)
    torch.manual_seed(derive_seed(fold.seed, _TAG_STEP, step, info.rank))  # drop path
    for m in range(cfg.batch.accum_steps):
        idx = rows[
            micro_batch_rows(len(rows), info.world_size, info.rank, cfg.batch.accum_steps, m)
        ]
        x = torch.stack([finetune_crop(fold.train_x[i], fold.unit, gen) for i in idx])
        x = spec_augment(x, cfg.augment.freqm, cfg.augment.timem, gen)
        y = fold.train_y[idx]
        x, y = mixup(x, y, cfg.augment.mixup_alpha, cfg.augment.mixup_prob, gen)
        yield x.to(info.device), y.to(info.device)


def batch_indices(fold: _Fold, step: int) -> list[int]:
    """The global batch of `step`: a class-balanced weighted draw (multilabel by default) or
    the next clips of a seeded per-epoch permutation."""
    n, size = len(fold.train_x), fold.cfg.batch.size
    if size % (fold.info.world_size * fold.cfg.batch.accum_steps):
        raise ConfigError(f"batch.size {size} is not divisible by ranks x batch.accum_steps")
    if fold.sample_weights is not None:
        gen = torch_generator(fold.seed, _TAG_BATCH, step)
        return torch.multinomial(
            fold.sample_weights, size, replacement=True, generator=gen
        ).tolist()
    out: list[int] = []
    perm, perm_epoch = None, -1
    for i in range(step * size, (step + 1) * size):
        epoch, pos = divmod(i, n)
        if epoch != perm_epoch:  # one permutation per epoch the batch touches, not per clip
            perm_epoch = epoch
            perm = torch.randperm(n, generator=torch_generator(fold.seed, _TAG_BATCH, epoch))
        out.append(int(perm[pos]))  # type: ignore[index]
    return out


def class_balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-clip weight sum_c y_c / n_c (AudioMAE's weighted sampler): rare classes drawn more."""
    counts = targets.sum(dim=0).clamp(min=1)
    return (targets / counts).sum(dim=1).clamp(min=1e-12)


def spec_augment(x: torch.Tensor, freqm: int, timem: int, gen: torch.Generator) -> torch.Tensor:
    """One frequency mask of width U{0..freqm} and one time mask of width U{0..timem} per clip,
    set to 0 (the clip mean after normalisation)."""
    if not freqm and not timem:
        return x
    x = x.clone()
    B, T, Fm = x.shape
    for axis, width, size in ((2, freqm, Fm), (1, timem, T)):
        if not width:
            continue
        w = torch.randint(0, min(width, size) + 1, (B,), generator=gen)
        start = (torch.rand(B, generator=gen) * (size - w + 1)).long()
        pos = torch.arange(size)
        hit = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])  # (B, size)
        x = x.masked_fill(hit[:, None, :] if axis == 2 else hit[:, :, None], 0.0)
    return x


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability `prob`: lam ~ Beta(alpha, alpha), mix each clip with the batch reversed."""
    if alpha <= 0 or float(torch.rand((), generator=gen)) >= prob:
        return x, y
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen)))
    lam = float(rng.beta(alpha, alpha))
    return lam * x + (1 - lam) * x.flip(0), lam * y + (1 - lam) * y.flip(0)


def _loss(fold: _Fold, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = fold.trainer.forward(x).float()
    if fold.task.multilabel:
        return F.binary_cross_entropy_with_logits(logits, y)
    smooth = fold.cfg.augment.label_smoothing
    y = y * (1 - smooth) + smooth / y.shape[1]
    return torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()


# ---- evaluate -------------------------------------------------------------------------------
@torch.no_grad()
def predict(
    model: FinetuneModel,
    specs: list[torch.Tensor],
    unit: int,
    units_per_batch: int,
    multilabel: bool,
    device: torch.device,
    precision: str = "fp32",
) -> np.ndarray:
    """Clip scores (N, C): the mean of the logits of the clip's `unit`-frame pieces, then
    softmax (multiclass) or sigmoid (multilabel)."""
    was_training = model.training
    model.eval()
    units = [inference_units(s, unit) for s in specs]
    owner = torch.cat([torch.full((len(u),), i) for i, u in enumerate(units)])
    flat = torch.cat(units)
    logits = []
    for start in range(0, len(flat), units_per_batch):
        with autocast(device, precision):
            logits.append(model(flat[start : start + units_per_batch].to(device)).float().cpu())
    model.train(was_training)
    all_logits = torch.cat(logits)
    sums = torch.zeros(len(specs), all_logits.shape[1]).index_add_(0, owner, all_logits)
    mean = sums / torch.bincount(owner, minlength=len(specs))[:, None]
    scores = torch.sigmoid(mean) if multilabel else torch.softmax(mean, dim=-1)
    return scores.double().numpy()


def score(metrics: list[str], scores: np.ndarray, targets: torch.Tensor) -> dict[str, float]:
    y = targets.numpy()
    return {m: float(METRICS[m].fn(scores, y)) for m in metrics}


def _evaluate(fold: _Fold, specs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, float]:
    cfg = fold.cfg
    scores = predict(
        fold.model, specs, fold.unit, cfg.eval.units_per_batch, fold.task.multilabel,
        fold.info.device, cfg.train.precision,
    )  # fmt: skip
    return score(fold.task.metrics, scores, targets)


def _validate(fold: _Fold) -> None:
    """Score the validation split; keep the weights when the primary metric improves."""
    fold.trainer.check_weights()  # never score, or keep, the weights of a diverged run
    metric = fold.task.metrics[0]
    scores = _evaluate(fold, fold.valid_x, fold.valid_y)
    value = scores[metric] if METRICS[metric].higher_is_better else -scores[metric]
    value = -math.inf if math.isnan(value) else value
    improved = value > fold.best_score
    step = fold.trainer.step
    if improved:
        fold.best_score, fold.best_step = value, step
        if fold.info.is_main:
            weights = {k: v.detach().cpu().contiguous() for k, v in fold.model.state_dict().items()}
            save_weights(fold.out / BEST_FILE, weights, {"step": str(step)}, fsync=True)
    fold.log.write({"event": "valid", "step": step, **scores, "best": improved})


def _test(fold: _Fold, assignment: DataSplit, cache: dict[Path, torch.Tensor]) -> dict[str, Any]:
    """Test scores of the best validation weights."""
    weights, meta = load_weights(fold.out / BEST_FILE)
    if int(meta.get("step", -1)) != fold.best_step:
        raise IntegrityError(
            f"{fold.out / BEST_FILE}: holds step {meta.get('step')}, expected {fold.best_step}"
        )
    fold.model.load_state_dict(weights, strict=True)
    test_clips = fold.task.clips(assignment.test)
    test = _evaluate(fold, load_spectrograms(test_clips, cache), fold.task.targets(test_clips))
    valid = _evaluate(fold, fold.valid_x, fold.valid_y)
    return {
        "test_split": "+".join(assignment.test),
        "validation_score": valid[fold.task.metrics[0]],
        "best_step": fold.best_step,
        "steps": fold.total_steps,
        "valid": valid,
        "test": test,
    }


# ---- checkpoints ----------------------------------------------------------------------------
def _checkpoint(fold: _Fold) -> None:
    best = {"best_score": fold.best_score, "best_step": fold.best_step}
    path = fold.trainer.save(fold.out / "checkpoints", KIND, best, keep=fold.cfg.checkpoint.keep)
    fold.log.write({"event": "checkpoint", "step": fold.trainer.step, "path": str(path)})


# ---- results --------------------------------------------------------------------------------
def aggregate(per_seed: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Scores of a task over seeds and folds.

    Each seed's test score is the mean over its folds. With one seed and k > 1 folds the
    interval is over the folds (scores = the k fold scores); otherwise over the seeds
    (scores = the per-seed fold means). Each: mean, std (ddof=1), ci95 = t_{0.975, n-1} *
    std / sqrt(n) (`mwmae.evaluation.report.summarize`)."""
    for s in per_seed:
        s["test"] = {m: float(np.mean([f["test"][m] for f in s["folds"]])) for m in metrics}
    over_folds = len(per_seed) == 1 and len(per_seed[0]["folds"]) > 1

    def values(m: str) -> list[float]:
        if over_folds:
            return [f["test"][m] for f in per_seed[0]["folds"]]
        return [s["test"][m] for s in per_seed]

    return {
        "scores": values(metrics[0]),
        **summarize(values(metrics[0])),
        "interval_over": "folds" if over_folds else "seeds",
        "metrics": {m: {"scores": values(m), **summarize(values(m))} for m in metrics},
        "seeds": per_seed,
    }


def results_record(
    cfg: FinetuneConfig, task: FinetuneTask, per_seed: list[dict[str, Any]]
) -> dict[str, Any]:
    """A results.json run (the schema of `mwmae.evaluation.report`) with `protocol`."""
    metric = task.metrics[0]
    result = {
        "task": task.name,
        "protocol": cfg.protocol,
        "embedding_type": "scene",
        "prediction_type": task.prediction_type,
        "split_mode": task.split_mode,
        "metric": metric,
        "higher_is_better": METRICS[metric].higher_is_better,
        **aggregate(per_seed, task.metrics),
    }
    return {
        "model": model_label(cfg.model),
        "protocol": cfg.protocol,
        "preset": cfg.name,
        "seeds": cfg.seeds,
        "settings": to_dict(cfg),
        "task_source": str(task.source),
        "skipped": task.skipped,  # bad clips left out: {path, reason}
        "tasks": {task.name: result},
    }


__all__ = [
    "aggregate",
    "batch_indices",
    "class_balanced_weights",
    "finetune",
    "mixup",
    "plan_steps",
    "predict",
    "results_record",
    "run_dir_for",
    "spec_augment",
]
