"""Fine-tuning: learning, exact resume after SIGKILL, k-fold aggregation, layer-wise lr decay,
and one-line errors for bad tasks."""

from __future__ import annotations

import json
import logging
import math
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file
from test_pretrain import TINY_MODEL, assert_same_weights, interrupt_cli_run

import mwmae
from mwmae.cli import main
from mwmae.errors import InputError, MwmaeError, TaskLayoutError
from mwmae.finetuning import (
    FinetuneModel,
    aggregate,
    finetune,
    layer_decay_groups,
    layer_scales,
    load_finetune_task,
    predict,
)
from mwmae.training import LayerScaledAdamW

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16000


def _tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def make_task(root: Path, splits: dict[str, int] | None = None, classes=("low", "high")) -> Path:
    """A HEAR-layout scene task: tones at 200 Hz ('low') or 2 kHz ('high'), 1-3 s."""
    splits = splits or {"train": 8, "valid": 4, "test": 4}
    freq = {"low": 200.0, "high": 2000.0, "mid": 700.0}
    (root / "16000").mkdir(parents=True)
    meta = {
        "task_name": root.name,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "splits": list(splits),
        "evaluation": ["top1_acc"],
    }
    (root / "task_metadata.json").write_text(json.dumps(meta))
    k = 0
    for split, n in splits.items():
        (root / "16000" / split).mkdir()
        labels = {}
        for i in range(n):
            label = classes[i % len(classes)]
            name = f"{split}_{i:02d}.wav"
            sf.write(root / "16000" / split / name, _tone(freq[label], [1.0, 3.0][i % 2], k), SR)
            labels[name] = [label]
            k += 1
        (root / f"{split}.json").write_text(json.dumps(labels))
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return mwmae.create_model(**TINY_MODEL).save_pretrained(tmp_path_factory.mktemp("m") / "final")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_task(tmp_path_factory.mktemp("t") / "tones")


def config(out: Path, model: Path, task: Path, **sections) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": str(model),
        "task": str(task),
        "head": {"drop_path": 0.1, "layer_decay": 0.75},
        "optim": {"base_lr": 0.5},  # peak lr 0.5 * 4 / 256 ~ 7.8e-3
        "schedule": {"steps": 12, "warmup_steps": 2},
        "batch": {"size": 4},
        "augment": {"freqm": 8, "timem": 20, "mixup_alpha": 0.5, "label_smoothing": 0.1},
        "eval": {"every": 6},
        "train": {"num_threads": 1, "device": "cpu"},
        "log": {"every": 1},
        "output": {"dir": str(out), "run_name": "run"},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values} if isinstance(values, dict) else values
    return cfg


def train_losses(fold_dir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (fold_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


# --------------------------------------------------------------------------------------------
def test_a_few_steps_reduce_the_training_loss(tmp_path, tiny_model, task):
    cfg = config(
        tmp_path,
        tiny_model,
        task,
        augment={"freqm": 0, "timem": 0, "mixup_alpha": 0.0, "label_smoothing": 0.0},
        head={"drop_path": 0.0},
        schedule={"steps": 16, "warmup_steps": 1},
    )
    run_dir = finetune(cfg, progress=False)
    losses = train_losses(run_dir / "seed_0" / "test")
    assert sorted(losses) == list(range(1, 17))
    first, last = losses[1], np.mean([losses[s] for s in (14, 15, 16)])
    assert first == pytest.approx(math.log(2), abs=0.05)  # near-zero head: uniform
    assert last < 0.6 * first, losses
    results = json.loads((run_dir / "results.json").read_text())
    result = results["tasks"]["tones"]
    assert results["protocol"] == result["protocol"] == "finetune"
    assert result["metric"] == "top1_acc" and result["interval_over"] == "seeds"
    assert 0.0 <= result["mean"] <= 1.0 and result["n"] == 1
    assert "tones" in mwmae.evaluation.report.compare([run_dir])  # `mwmae compare` reads it


def test_kfold_manifest_runs_every_fold_and_reports_the_fold_interval(tmp_path, tiny_model):
    rows = ["path,label,split"]
    for i in range(12):
        label = ["low", "high"][i % 2]
        sf.write(tmp_path / f"c{i}.wav", _tone(200.0 if label == "low" else 2000.0, 1, i), SR)
        rows.append(f"c{i}.wav,{label},f{i // 4}")  # three folds of four clips
    (tmp_path / "k.csv").write_text("\n".join(rows) + "\n")
    cfg = config(tmp_path / "runs", tiny_model, tmp_path / "k.csv", schedule={"steps": 2})
    run_dir = finetune(cfg, ["eval.every=1"], progress=False)
    result = json.loads((run_dir / "results.json").read_text())["tasks"]["k"]
    folds = [
        json.loads((run_dir / "seed_0" / f / "result.json").read_text()) for f in "f0 f1 f2".split()
    ]
    assert result["split_mode"] == "new_split_kfold" and result["interval_over"] == "folds"
    assert result["scores"] == [f["test"]["top1_acc"] for f in folds] and result["n"] == 3
    assert result["mean"] == pytest.approx(np.mean(result["scores"]))


def test_sigkill_and_resume_is_bit_identical(tmp_path, tiny_model, task):
    cfg = config(
        tmp_path / "runs",
        tiny_model,
        task,
        schedule={"steps": 10, "warmup_steps": 2},
        eval={"every": 5},
        checkpoint={"every": 4, "keep": 3},
        debug={"step_sleep": 0.25},
    )
    cfg_path = tmp_path / "ft.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    fold = tmp_path / "runs" / "run" / "seed_0" / "test"
    returncode, _ = interrupt_cli_run(
        "finetune",
        cfg_path,
        lambda: (fold / "checkpoints" / "step_00000004").is_dir(),
        signal.SIGKILL,
        timeout=120,
        what="checkpoint",
        settle=0.6,  # a couple of steps past step 4
    )
    assert returncode == -signal.SIGKILL
    assert not (fold / "result.json").exists()
    killed_at = max(train_losses(fold))
    assert 4 <= killed_at < 10
    finetune(cfg_path, ["debug.step_sleep=0"], progress=False)  # resumes the killed run
    reference = finetune(
        cfg, ["debug.step_sleep=0", f"output.dir={tmp_path / 'ref'}"], progress=False
    )
    ref_fold = reference / "seed_0" / "test"
    last = "checkpoints/step_00000010/model.safetensors"
    assert_same_weights(load_file(str(fold / last)), load_file(str(ref_fold / last)), atol=0.0)
    ref_loss, got = train_losses(ref_fold), train_losses(fold)
    assert all(got[s] == ref_loss[s] for s in range(5, 11))  # the steps after the resume
    assert json.loads((fold / "result.json").read_text()) == json.loads(
        (ref_fold / "result.json").read_text()
    )
    records = [json.loads(x) for x in (fold / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "resume"] == [4]


def test_ctrl_c_checkpoints_and_the_printed_command_resumes(tmp_path, tiny_model, task):
    cfg = config(
        tmp_path / "runs", tiny_model, task, eval={"every": 100}, debug={"step_sleep": 0.25}
    )
    cfg_path = tmp_path / "ft.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    fold = tmp_path / "runs" / "run" / "seed_0" / "test"
    returncode, err = interrupt_cli_run(
        "finetune",
        cfg_path,
        lambda: (fold / "log.jsonl").is_file(),
        signal.SIGINT,
        timeout=120,
        what="training step",
    )
    assert returncode == 130, err
    records = [json.loads(x) for x in (fold / "log.jsonl").read_text().splitlines()]
    step = next(r["step"] for r in records if r["event"] == "interrupted")
    assert 1 <= step < 12 and (fold / "checkpoints" / f"step_{step:08d}").is_dir()
    command = err.strip().splitlines()[-1].partition("resume with: ")[2]
    argv = shlex.split(command)
    assert argv[:2] == ["mwmae", "finetune"]
    assert main([*argv[1:], "debug.step_sleep=0"]) == 0
    records = [json.loads(x) for x in (fold / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "resume"] == [step]
    assert (fold / "result.json").is_file()


def test_kfold_aggregation_matches_hand_worked_numbers():
    folds = [0.8, 0.9, 0.7, 0.85, 0.75]
    one_seed = [{"seed": 0, "folds": [{"test": {"top1_acc": v}} for v in folds]}]
    res = aggregate(one_seed, ["top1_acc"])
    # mean 0.8; deviations 0, .1, -.1, .05, -.05 -> std = sqrt(.025 / 4) = 0.0790569;
    # t_{0.975, 4} = 2.776445 (t table) -> half-width 2.776445 * 0.0790569 / sqrt(5) = 0.098163
    assert res["interval_over"] == "folds" and res["scores"] == folds
    assert res["mean"] == pytest.approx(0.8, abs=1e-12)
    assert res["std"] == pytest.approx(0.0790569, abs=1e-6)
    assert res["ci95"] == pytest.approx(0.098163, abs=1e-5)
    assert res["seeds"][0]["test"]["top1_acc"] == pytest.approx(0.8)
    # Two seeds: the interval is over the seeds' fold means (0.7 and 0.8):
    # std = 0.0707107, t_{0.975, 1} = 12.7062 -> 12.7062 * 0.0707107 / sqrt(2) = 0.63531
    two = [
        {"seed": 0, "folds": [{"test": {"top1_acc": 0.6}}, {"test": {"top1_acc": 0.8}}]},
        {"seed": 1, "folds": [{"test": {"top1_acc": 0.9}}, {"test": {"top1_acc": 0.7}}]},
    ]
    res = aggregate(two, ["top1_acc"])
    assert res["interval_over"] == "seeds"
    assert res["scores"] == pytest.approx([0.7, 0.8])
    assert res["mean"] == pytest.approx(0.75) and res["ci95"] == pytest.approx(0.63531, abs=1e-4)


def test_layer_decay_assigns_the_documented_learning_rates():
    torch.manual_seed(0)
    encoder = mwmae.create_model(**{**TINY_MODEL, "depth": 2})
    # float64 and a large head init: gradients far above eps, so update sizes are exact
    model = FinetuneModel(encoder, num_classes=3, init_std=0.5).double()
    decay, lr = 0.5, 1e-3
    # By hand, depth 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, norm/fc_norm/head 1.
    expected = {"embed": 0.125, "blocks.0": 0.25, "blocks.1": 0.5, "top": 1.0}
    assert layer_scales(2, decay) == [0.125, 0.25, 0.5, 1.0]

    def part(name: str) -> str:
        if name.startswith(("encoder.patch_embed", "encoder.pos_embed")):
            return "embed"
        if name.startswith("encoder.blocks."):
            return "blocks." + name.split(".")[2]
        return "top"

    groups = layer_decay_groups(model, weight_decay=0.0, decay=decay)
    seen = set()
    for g in groups:
        for name in g["names"]:
            assert g["lr_scale"] == expected[part(name)], name
            seen.add(name)
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}
    # The first AdamW step moves every parameter by lr * scale (m / sqrt(v) = sign(g)).
    opt = LayerScaledAdamW(groups, lr=lr, eps=1e-16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 200, 80, dtype=torch.float64)).square().sum().backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = (p.detach() - before[name]).abs()
        moved = moved[moved > 0]
        if moved.numel():
            assert float(moved.max()) == pytest.approx(lr * expected[part(name)], rel=1e-6), name
    assert all(g["lr"] == lr for g in opt.param_groups)  # the base lr is left as set


def test_whole_clip_scores_are_the_mean_of_200_frame_unit_logits(tiny_model):
    model = FinetuneModel(mwmae.from_pretrained(tiny_model), num_classes=2, init_std=0.5)
    spec = torch.randn(450, 80)  # 450 frames: reflect-padded to 600, three units
    scores = predict(model, [spec], 200, 2, multilabel=False, device=torch.device("cpu"))
    idx = list(range(450)) + [448 - i for i in range(150)]  # NumPy reflect of 150 frames
    units = spec[idx].reshape(3, 200, 80)
    with torch.no_grad():
        want = torch.softmax(model.eval()(units).double().mean(0), -1)
    np.testing.assert_allclose(scores[0], want.numpy(), rtol=1e-5)


def test_manifest_without_split_is_split_with_the_seed(tmp_path):
    for i in range(20):
        sf.write(tmp_path / f"c{i}.wav", _tone(300, 0.5, i), SR)
    rows = ["path,labels"] + [f"c{i}.wav,{'a;b' if i % 3 else 'b'}" for i in range(20)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    a = load_finetune_task(tmp_path / "m.csv", seed=3)
    b = load_finetune_task(tmp_path / "m.csv", seed=3)
    assert a.multilabel and a.metrics == ["mAP", "d_prime"] and a.vocabulary == ["a", "b"]
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 14, "valid": 2, "test": 4}
    assert a.splits == b.splits
    assert a.splits != load_finetune_task(tmp_path / "m.csv", seed=4).splits


@pytest.mark.parametrize(
    ("damage", "error", "names"),
    [
        ("vocabulary", TaskLayoutError, ["labelvocabulary.csv", "mid"]),
        ("test_only_label", InputError, ["test.json", "'mid'", "test_00.wav"]),
        ("empty_split", InputError, ["valid.json", "'valid' has no clips"]),
        ("one_class", InputError, ["at least two classes", "['low']"]),
    ],
)
def test_bad_tasks_give_one_line_errors_naming_the_file(tmp_path, damage, error, names):
    if damage == "one_class":
        folder = make_task(tmp_path / "t", classes=("low",))
    else:
        folder = make_task(tmp_path / "t")
    if damage == "vocabulary":
        (folder / "labelvocabulary.csv").write_text("idx,label\n0,low\n1,high\n")
        labels = json.loads((folder / "train.json").read_text())
        labels["train_00.wav"] = ["mid"]
        (folder / "train.json").write_text(json.dumps(labels))
    elif damage == "test_only_label":
        labels = json.loads((folder / "test.json").read_text())
        labels["test_00.wav"] = ["mid"]
        (folder / "test.json").write_text(json.dumps(labels))
    elif damage == "empty_split":
        (folder / "valid.json").write_text("{}")
    with pytest.raises(error) as info:
        load_finetune_task(folder)
    assert isinstance(info.value, MwmaeError) and "\n" not in str(info.value)
    for text in names:
        assert text in str(info.value)


def _add_bad_clips(folder: Path, split: str, replace: bool = False) -> list[str]:
    """A corrupt file and a 10-sample clip in `split` of a HEAR task folder (or instead of
    its clips); returns their names."""
    audio = folder / "16000" / split
    (audio / "corrupt.wav").write_bytes(b"RIFF, but not audio")
    sf.write(audio / "short.wav", np.zeros(10, np.float32), SR)
    labels = {} if replace else json.loads((folder / f"{split}.json").read_text())
    labels.update({"corrupt.wav": ["low"], "short.wav": ["high"]})
    (folder / f"{split}.json").write_text(json.dumps(labels))
    return ["corrupt.wav", "short.wav"]


def test_bad_clips_are_skipped_named_and_recorded(tmp_path, tiny_model, caplog):
    folder = make_task(tmp_path / "t")
    bad = _add_bad_clips(folder, "train")
    cfg = config(tmp_path / "runs", tiny_model, folder, schedule={"steps": 2})
    with caplog.at_level(logging.WARNING, logger="mwmae.finetuning"):
        run_dir = finetune(cfg, progress=False)
    warned = [r.getMessage() for r in caplog.records if "skipping bad clip" in r.getMessage()]
    assert len(warned) == 2
    assert f"{folder / '16000' / 'train' / 'corrupt.wav'}: could not decode audio" in warned[0]
    assert f"{folder / '16000' / 'train' / 'short.wav'}: audio too short: 10 samples" in warned[1]
    results = json.loads((run_dir / "results.json").read_text())
    assert [Path(s["path"]).name for s in results["skipped"]] == bad
    assert [s["reason"] for s in results["skipped"]] == [w.split(": ", 1)[1] for w in warned]
    assert math.isfinite(results["tasks"]["t"]["mean"])
    task = load_finetune_task(folder)  # the task itself still lists them; loading skips them
    assert len(task.splits["train"]) == 10 and not task.skipped


def test_a_split_left_without_usable_clips_is_refused_in_one_line(
    tmp_path, capsys, caplog, tiny_model
):
    folder = make_task(tmp_path / "t")
    _add_bad_clips(folder, "valid", replace=True)
    argv = ["finetune", "--config", "finetune_tiny_cpu", f"model={tiny_model}"]
    assert main([*argv, f"task={folder}", f"output.dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mwmae finetune: error:") and "\n" not in err
    assert f"{folder / 'valid.json'}: split 'valid' has no usable clips: all 2" in err
    assert len([r for r in caplog.records if "skipping bad clip" in r.getMessage()]) == 2
    assert not (tmp_path / "runs").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, tiny_model):
    argv = ["finetune", "--config", "finetune_tiny_cpu", f"model={tiny_model}"]
    assert main([*argv, f"task={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mwmae finetune: error:") and "nope" in err and "\n" not in err
    assert main([*argv, "task=x", "head.layer_decay=2"]) == 2
    assert "head.layer_decay" in capsys.readouterr().err
    assert main(["finetune", "--list-configs"]) == 0
    listed = capsys.readouterr().out.split()
    for preset in ("finetune_tiny_cpu", "finetune_ssast_esc50", "finetune_audiomae_as20k"):
        assert preset in listed
        assert main(["finetune", "--config", preset, "model=m", "task=t", "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["name"] == preset


def test_freezing_and_drop_path():
    from mwmae.finetuning.model import add_drop_path, freeze

    torch.manual_seed(0)
    model = FinetuneModel(mwmae.create_model(**{**TINY_MODEL, "depth": 3}), 2, init_std=0.5)
    freeze(model, 1)
    names = {n for g in layer_decay_groups(model, 0.05, 0.75) for n in g["names"]}
    assert not any(n.startswith(("encoder.blocks.0.", "encoder.patch_embed")) for n in names)
    assert any(n.startswith("encoder.blocks.1.") for n in names)
    x = torch.randn(4, 200, 80)
    with torch.no_grad():
        plain = model.eval()(x)
        handles = add_drop_path(model, 0.5)
        # Block 0 is frozen (no hooks); blocks 1 and 2 get p = 0.25 and 0.5.
        assert len(handles) == 4
        assert torch.equal(model.eval()(x), plain)  # no drop path at inference
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(1)
        assert torch.equal(model(x), a) and not torch.allclose(a, plain)
    freeze(model, "all")
    names = {n for g in layer_decay_groups(model, 0.05, 0.75) for n in g["names"]}
    assert names == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
