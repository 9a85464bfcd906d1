"""Task folders, embedding with a fake HEAR module, end-to-end runs and the commands."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from test_evaluation_helpers import (
    blobs,
    make_event_audio_task,
    make_fake_hear_module,
    make_scene_audio_task,
    write_embedded_scene_task,
    write_task_metadata,
)

from mwmae.evaluation.embed import embed_task
from mwmae.evaluation.probe import ProbeConfig, TrainSettings
from mwmae.evaluation.protocol import evaluate_embeddings, evaluate_task
from mwmae.evaluation.stored import export_heareval, load_split_embeddings
from mwmae.evaluation.tasks import TaskError, load_metadata, load_task

FAST = TrainSettings(max_epochs=30, batch_size=256, patience=20)
SMALL_GRID = [ProbeConfig(1, 64, 0.1, 1e-2), ProbeConfig(1, 64, 0.25, 3e-3)]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Task folders
# --------------------------------------------------------------------------------------------
def test_load_task_builds_vocabulary_and_reads_labels(tmp_path):
    folder = make_scene_audio_task(tmp_path)
    task = load_task(folder)
    assert task.name == "tones" and task.metadata.primary_metric == "top1_acc"
    assert task.vocabulary == ["high", "low"]  # sorted when labelvocabulary.csv is absent
    assert task.labels["train"]["train_1.wav"] == ["high"]
    assert [p.name for p in task.audio_files("test")] == [f"test_{i}.wav" for i in range(4)]
    (folder / "labelvocabulary.csv").write_text("idx,label\n0,low\n1,high\n")
    assert load_task(folder).vocabulary == ["low", "high"]


def test_kfold_assignments_follow_heareval(tmp_path):
    write_task_metadata(tmp_path / "k", split_mode="presplit_kfold", nfolds=5, splits=None)
    meta = load_metadata(tmp_path / "k")
    folds = [f"fold{i:02d}" for i in range(5)]
    assert meta.splits == folds
    assignments = meta.data_splits()
    assert len(assignments) == 5
    assert assignments[0].test == ("fold00",) and assignments[0].valid == ("fold01",)
    assert assignments[0].train == ("fold02", "fold03", "fold04")
    assert assignments[4].test == ("fold04",) and assignments[4].valid == ("fold00",)
    for a in assignments:
        assert sorted(a.train + a.valid + a.test) == folds
    assert sorted(a.test[0] for a in assignments) == folds
    assert sorted(a.valid[0] for a in assignments) == folds
    write_task_metadata(tmp_path / "t")
    (a,) = load_metadata(tmp_path / "t").data_splits()
    assert (a.train, a.valid, a.test) == (("train",), ("valid",), ("test",))


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"embedding_type": None}, "missing field 'embedding_type'"),
        ({"prediction_type": "regression"}, "field 'prediction_type'"),
        ({"split_mode": "presplit_kfold", "splits": None}, "field 'nfolds'"),
        ({"evaluation": ["top5"]}, "unknown metric 'top5'"),
        ({"evaluation": ["segment_1s_er"]}, "does not apply to scene"),
        ({"splits": ["train", "test"]}, "field 'splits' lacks ['valid']"),
        ({"sample_duration": -1}, "field 'sample_duration'"),
    ],
)
def test_malformed_metadata_names_file_and_field(tmp_path, change, needle):
    folder = make_scene_audio_task(tmp_path)
    meta = json.loads((folder / "task_metadata.json").read_text())
    meta.update(change)
    meta = {k: v for k, v in meta.items() if v is not None}
    (folder / "task_metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TaskError) as e:
        load_task(folder)
    assert "task_metadata.json" in str(e.value) and needle in str(e.value)


def test_malformed_task_files(tmp_path):
    with pytest.raises(TaskError, match="task folder not found"):
        load_task(tmp_path / "nope")
    folder = make_scene_audio_task(tmp_path)
    (folder / "task_metadata.json").write_text("{not json")
    with pytest.raises(TaskError, match="task_metadata.json: not valid JSON"):
        load_task(folder)
    folder = make_scene_audio_task(tmp_path, name="b")
    (folder / "valid.json").unlink()
    with pytest.raises(TaskError, match=r"valid\.json: file not found"):
        load_task(folder)
    folder = make_scene_audio_task(tmp_path, name="c")
    (folder / "labelvocabulary.csv").write_text("idx,label\n0,low\n")
    with pytest.raises(TaskError, match=r"labelvocabulary\.csv: labels used .* \['high'\]"):
        load_task(folder)
    (folder / "labelvocabulary.csv").write_text("idx,label\n0,low\n2,high\n")
    with pytest.raises(TaskError, match="idx values must be 0..n-1"):
        load_task(folder)
    folder = make_event_audio_task(tmp_path, name="d")
    (folder / "test.json").write_text(json.dumps({"0.wav": [{"start": 5, "label": "x"}]}))
    with pytest.raises(TaskError, match=r"test\.json: entry '0\.wav'.*start, end, label"):
        load_task(folder)
    folder = make_scene_audio_task(tmp_path, name="e")
    (folder / "16000" / "test" / "test_2.wav").unlink()
    with pytest.raises(TaskError, match=r"1 file\(s\) listed in test\.json are missing"):
        load_task(folder).audio_files("test")


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------
def test_embed_scene_task_caches_and_exports(tmp_path):
    folder = make_scene_audio_task(tmp_path, lengths=(0.5, 0.3))  # cropped/padded to 0.5 s
    hear = make_fake_hear_module()
    model = hear.load_model()
    out = embed_task(hear, model, folder, tmp_path / "emb", batch_size=3, model_id="fake")
    assert out == tmp_path / "emb" / "tones"
    s = load_split_embeddings(out, "train")
    assert s.embeddings.shape == (4, 8) and s.embeddings.dtype == np.float32
    assert s.labels == [["low"], ["high"], ["low"], ["high"]]
    assert s.filenames == [f"train_{i}.wav" for i in range(4)]
    # Row i is the embedding of file i (batches of 3 must not shuffle rows).
    from test_evaluation_helpers import _band_energies

    from mwmae import features

    wave = features.load_audio(folder / "16000" / "train" / "train_3.wav")
    wave = np.pad(wave, (0, 8000 - len(wave)))
    np.testing.assert_allclose(
        s.embeddings[3], _band_energies(torch.from_numpy(wave)).numpy(), rtol=1e-5, atol=1e-5
    )
    calls = model.calls
    assert calls == 6  # 2 batches x 3 splits
    embed_task(hear, model, folder, tmp_path / "emb", batch_size=3, model_id="fake")
    assert model.calls == calls  # every split cached
    (out / "valid.done.json").unlink()  # as if interrupted before the marker was written
    embed_task(hear, model, folder, tmp_path / "emb", batch_size=3, model_id="fake")
    assert model.calls == calls + 2
    # Another model id (issue #12.1: the cache is keyed by content): every split re-embeds.
    embed_task(hear, model, folder, tmp_path / "emb", batch_size=3, model_id="other")
    assert model.calls == calls + 2 + 6
    with pytest.raises(TaskError, match="was not \\(completely\\) embedded"):
        (out / "test.done.json").unlink()
        load_split_embeddings(out, "test")

    dest = export_heareval(
        out
        if (out / "test.done.json").exists()
        else embed_task(hear, model, folder, tmp_path / "emb"),
        tmp_path / "he",
    )
    dims = json.loads((dest / "train.embedding-dimensions.json").read_text())
    raw = np.fromfile(dest / "train.embeddings.npy", dtype=np.float32).reshape(dims)
    np.testing.assert_array_equal(raw, s.embeddings)  # raw bytes, no .npy header
    assert (dest / "train.target-labels.pkl").stat().st_size > 0


def test_embed_groups_unequal_lengths_without_sample_duration(tmp_path):
    folder = make_scene_audio_task(tmp_path, lengths=(0.5, 0.25))
    meta = json.loads((folder / "task_metadata.json").read_text())
    del meta["sample_duration"]
    (folder / "task_metadata.json").write_text(json.dumps(meta))
    hear = make_fake_hear_module()
    seen = []
    inner = hear.get_scene_embeddings

    def spy(audio, model):
        seen.append(audio.shape[1])
        return inner(audio, model)

    hear.get_scene_embeddings = spy
    out = embed_task(hear, hear.load_model(), folder, tmp_path / "emb", batch_size=8)
    assert sorted(set(seen)) == [4000, 8000] and len(seen) == 6  # never mixed, never padded
    assert load_split_embeddings(out, "test").embeddings.shape == (4, 8)


def test_embed_event_task_frame_labels(tmp_path):
    folder = make_event_audio_task(tmp_path)
    hear = make_fake_hear_module()
    out = embed_task(hear, hear.load_model(), folder, tmp_path / "emb")
    s = load_split_embeddings(out, "valid")
    assert s.embeddings.shape == (40, 8)  # 2 files x 20 frames of 50 ms
    assert s.filenames[:20] == ["0.wav"] * 20
    np.testing.assert_allclose(s.timestamps[:3], [25.0, 75.0, 125.0])
    # Frames centred in [200, 600] ms carry the label: 225 .. 575.
    active = [t for t, labs in zip(s.timestamps[:20], s.labels[:20], strict=True) if labs]
    assert active == [225.0 + 50 * k for k in range(8)]
    assert s.events == {
        "0.wav": [{"start": 200.0, "end": 600.0, "label": "beep"}],
        "1.wav": [{"start": 200.0, "end": 600.0, "label": "beep"}],
    }


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------
def _blob_task(root, name, shuffle=False, seed=0, n=(240, 80, 160)):
    rng = np.random.default_rng(seed)
    x, y = blobs(sum(n), 16, 4, rng)
    if shuffle:
        y = rng.permutation(y)
    cuts = np.cumsum(n)[:-1]
    xs, ys = np.split(x, cuts), np.split(y, cuts)
    splits = ("train", "valid", "test")
    return write_embedded_scene_task(
        root,
        name,
        dict(zip(splits, xs, strict=True)),
        {s: [[f"c{k}"] for k in yy] for s, yy in zip(splits, ys, strict=True)},
    )


def test_separable_task_scores_high_and_shuffled_near_chance(tmp_path):
    good = evaluate_task(_blob_task(tmp_path, "good"), seeds=3, settings=FAST, grid=SMALL_GRID)
    assert good["metric"] == "top1_acc" and len(good["scores"]) == 3
    assert good["mean"] > 0.97
    assert good["ci95"] == pytest.approx(
        4.302652729911275 * np.std(good["scores"], ddof=1) / np.sqrt(3)
    )
    for s in good["seeds"]:
        assert s["grid_point"] in (0, 1) and len(s["grid"]) == 2
        best = max(g["validation_score"] for g in s["grid"])
        assert s["folds"][0]["validation_score"] == best
    bad = evaluate_task(
        _blob_task(tmp_path, "bad", shuffle=True), seeds=3, settings=FAST, grid=SMALL_GRID
    )
    assert 0.1 < bad["mean"] < 0.42  # 4 classes: chance is 0.25


def test_kfold_run_and_multilabel(tmp_path):
    rng = np.random.default_rng(4)
    x, y = blobs(150, 8, 3, rng)
    folds = {f"fold{i:02d}": x[i * 50 : (i + 1) * 50] for i in range(3)}
    labels = {
        f"fold{i:02d}": [
            [f"c{k}", "all"] if k == 0 else [f"c{k}"] for k in y[i * 50 : (i + 1) * 50]
        ]
        for i in range(3)
    }
    folder = write_embedded_scene_task(
        tmp_path,
        "kf",
        folds,
        labels,
        split_mode="new_split_kfold",
        nfolds=3,
        splits=list(folds),
        prediction_type="multilabel",
        evaluation=["mAP", "d_prime"],
    )
    res = evaluate_task(folder, seeds=2, settings=FAST, grid=SMALL_GRID)
    assert res["metric"] == "mAP" and set(res["metrics"]) == {"mAP", "d_prime"}
    for s in res["seeds"]:
        assert [f["test_split"] for f in s["folds"]] == list(folds)
        assert s["test"]["mAP"] == pytest.approx(np.mean([f["test"]["mAP"] for f in s["folds"]]))
    assert res["mean"] > 0.9


def test_event_task_end_to_end(tmp_path):
    folder = make_event_audio_task(tmp_path)
    hear = make_fake_hear_module()
    emb = embed_task(hear, hear.load_model(), folder, tmp_path / "emb")
    res = evaluate_task(emb, seeds=2, settings=FAST, grid=SMALL_GRID, standardize=True)
    assert res["metric"] == "event_onset_200ms_fms"
    assert set(res["metrics"]) == {"event_onset_200ms_fms", "segment_1s_er"}
    assert res["mean"] > 0.9  # loud 3 kHz beeps in quiet noise
    post = res["seeds"][0]["folds"][0]["postprocessing"]
    assert post["median_filter_ms"] == 250.0 and post["min_duration_ms"] in (125.0, 250.0)


def test_evaluate_embeddings_writes_json_and_markdown_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    _blob_task(root, "t1", seed=1)
    _blob_task(root, "t2", seed=2)
    run = evaluate_embeddings(
        root, seeds=2, settings=FAST, grid=SMALL_GRID, model_name="m1", out_dir=tmp_path / "r1"
    )
    saved = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert saved["model"] == "m1" and set(saved["tasks"]) == {"t1", "t2"}
    assert saved["tasks"]["t1"]["scores"] == run["tasks"]["t1"]["scores"]
    md = (tmp_path / "r1" / "results.md").read_text()
    assert md.startswith("| Model | t1 | t2 | s(m) |") and "| m1 | " in md
    # A second run with the same settings reuses finished tasks.
    import mwmae.evaluation.protocol as protocol

    monkeypatch.setattr(protocol, "evaluate_task", lambda *a, **k: pytest.fail("re-ran"))
    again = evaluate_embeddings(
        root, seeds=2, settings=FAST, grid=SMALL_GRID, model_name="m1", out_dir=tmp_path / "r1"
    )
    assert again["tasks"]["t1"]["scores"] == run["tasks"]["t1"]["scores"]
    # Other embeddings under the same folder (same shapes, same names): nothing is reused.
    monkeypatch.undo()
    _blob_task(root, "t1", seed=7)
    calls = []
    real = protocol.evaluate_task
    monkeypatch.setattr(protocol, "evaluate_task", lambda *a, **k: calls.append(1) or real(*a, **k))
    evaluate_embeddings(
        root, seeds=2, settings=FAST, grid=SMALL_GRID, model_name="m1", out_dir=tmp_path / "r1"
    )
    assert len(calls) == 2


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def test_commands_embed_evaluate_compare(tmp_path, monkeypatch, capsys):
    from mwmae.cli import main

    folder = make_scene_audio_task(tmp_path / "tasks", per_split=6)
    # A HEAR module importable by name, as --hear-module needs.
    monkeypatch.setitem(sys.modules, "fake_hear_cli", make_fake_hear_module())
    assert (
        main(
            [
                "embed",
                "--model",
                "x",
                "--hear-module",
                "fake_hear_cli",
                "--tasks",
                str(folder.parent),
                "--out",
                str(tmp_path / "emb"),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "tones: {'test': '6x8', 'train': '6x8', 'valid': '6x8'}" in out
    assert json.loads((tmp_path / "emb" / "embed.json").read_text())["tasks"][0]["task"] == "tones"

    for name in ("a", "b"):
        assert (
            main(
                [
                    "evaluate",
                    "--embeddings",
                    str(tmp_path / "emb"),
                    "--seeds",
                    "2",
                    "--max-epochs",
                    "3",
                    "--name",
                    name,
                    "--out",
                    str(tmp_path / name),
                    "--no-progress",
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "| Model | tones | s(m) |" in out and "results.json" in out
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a" / "results.json"),
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "cmp"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| a | " in out and "| b | " in out
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [s["model"] for s in summary] == ["a", "b"]
    assert main(["evaluate", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_heareval_task_overrides(tmp_path):
    from mwmae.evaluation.protocol import postprocessing_grid, task_check_every

    write_task_metadata(
        tmp_path / "a",
        task_name="dcase2016_task2",
        embedding_type="event",
        prediction_type="multilabel",
        evaluation=["event_onset_200ms_fms"],
    )
    meta = load_metadata(tmp_path / "a")
    assert task_check_every(meta, 3) == 10
    assert postprocessing_grid(meta) == [
        {"median_filter_ms": 250.0, "min_duration_ms": 125.0},
        {"median_filter_ms": 250.0, "min_duration_ms": 250.0},
    ]
    write_task_metadata(
        tmp_path / "b",
        evaluation_params={
            "task_specific_param_grid": {"check_val_every_n_epoch": [5]},
            "event_postprocessing_grid": {"median_filter_ms": [0, 100], "min_duration": [60]},
        },
    )
    meta = load_metadata(tmp_path / "b")
    assert task_check_every(meta, 3) == 5
    assert postprocessing_grid(meta) == [
        {"median_filter_ms": 0.0, "min_duration_ms": 60.0},
        {"median_filter_ms": 100.0, "min_duration_ms": 60.0},
    ]
    write_task_metadata(tmp_path / "c")
    assert task_check_every(load_metadata(tmp_path / "c"), 3) == 3


def test_fold_names_are_sorted_as_heareval_does(tmp_path):
    write_task_metadata(
        tmp_path / "k", split_mode="presplit_kfold", nfolds=3, splits=["fold02", "fold00", "fold01"]
    )
    first = load_metadata(tmp_path / "k").data_splits()[0]
    assert (first.test, first.valid, first.train) == (("fold00",), ("fold01",), ("fold02",))
