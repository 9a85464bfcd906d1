"""Both embedding layouts (issue #13.3): mwmae's and hear-eval-kit's, round-tripped."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from test_evaluation_helpers import (
    blobs,
    make_event_audio_task,
    make_fake_hear_module,
    write_embedded_scene_task,
)

from mwmae.cli import main
from mwmae.evaluation.embed import embed_task
from mwmae.evaluation.probe import ProbeConfig, TrainSettings
from mwmae.evaluation.protocol import evaluate_task
from mwmae.evaluation.stored import load_split_embeddings
from mwmae.evaluation.tasks import TaskError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = TrainSettings(max_epochs=12, batch_size=256, patience=20)
GRID = [ProbeConfig(1, 32, 0.1, 1e-2)]


def test_scene_task_round_trips_through_the_kit_layout(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = blobs(200, 8, 3, rng)
    parts = {"train": x[:120], "valid": x[120:160], "test": x[160:]}
    ys = np.split(y, [120, 160])
    labels = {s: [[f"c{k}"] for k in yy] for s, yy in zip(parts, ys, strict=True)}
    ours = write_embedded_scene_task(tmp_path / "emb", "blobs", parts, labels)
    assert main(["export-heareval", str(tmp_path / "emb"), "--out", str(tmp_path / "kit")]) == 0
    kit = tmp_path / "kit" / "blobs"
    assert not (kit / "train.done.json").exists()  # what heareval's runner wrote: no marker
    # heareval's files: raw float32 without header, dims JSON, a pickled list of label lists.
    dims = json.loads((kit / "train.embedding-dimensions.json").read_text())
    assert dims == [120, 8] and (kit / "train.embeddings.npy").stat().st_size == 120 * 8 * 4
    assert pickle.loads((kit / "train.target-labels.pkl").read_bytes()) == labels["train"]
    back = load_split_embeddings(kit, "train")
    np.testing.assert_array_equal(back.embeddings, parts["train"])
    assert back.labels == labels["train"]
    a = evaluate_task(ours, seeds=2, settings=FAST, grid=GRID)
    b = evaluate_task(kit, seeds=2, settings=FAST, grid=GRID)
    assert a["scores"] == b["scores"]
    # And through the CLI, which used to say "split 'train' was not (completely) embedded".
    capsys.readouterr()
    args = ["evaluate", "--embeddings", str(kit), "--out", str(tmp_path / "r"), "--seeds", "1"]
    assert main([*args, "--max-epochs", "3", "--no-progress"]) == 0
    assert "blobs" in capsys.readouterr().out


def test_event_task_round_trips_with_kit_style_file_paths(tmp_path):
    folder = make_event_audio_task(tmp_path)
    hear = make_fake_hear_module()
    emb = embed_task(hear, hear.load_model(), folder, tmp_path / "emb")
    assert main(["export-heareval", str(emb), "--out", str(tmp_path / "kit")]) == 0
    kit = tmp_path / "kit" / emb.name
    # heareval's runner names rows by the path of its per-file embedding: "<dir>/<file>".
    for split in ("train", "valid", "test"):
        path = kit / f"{split}.filename-timestamps.json"
        rows = json.loads(path.read_text())
        path.write_text(json.dumps([[f"/tmp/heareval/{split}/{f}", t] for f, t in rows]))
        ours, theirs = load_split_embeddings(emb, split), load_split_embeddings(kit, split)
        assert theirs.filenames == ours.filenames and theirs.labels == ours.labels
        np.testing.assert_array_equal(theirs.timestamps, ours.timestamps)
    a = evaluate_task(emb, seeds=1, settings=FAST, grid=GRID, standardize=True)
    b = evaluate_task(kit, seeds=1, settings=FAST, grid=GRID, standardize=True)
    assert a["scores"] == b["scores"] and a["metrics"].keys() == b["metrics"].keys()


def test_kit_layout_is_checked_and_its_pickle_runs_no_code(tmp_path):
    rng = np.random.default_rng(1)
    x, y = blobs(30, 4, 2, rng)
    parts = {"train": x[:10], "valid": x[10:20], "test": x[20:]}
    labels = {s: [["c0"]] * 10 for s in parts}
    write_embedded_scene_task(tmp_path / "emb", "t", parts, labels)
    main(["export-heareval", str(tmp_path / "emb"), "--out", str(tmp_path / "kit")])
    kit = tmp_path / "kit" / "t"
    (kit / "valid.target-labels.pkl").write_bytes(pickle.dumps([["c0"], ["c0"], [np.int64(1)]]))
    with pytest.raises(TaskError, match="only plain lists"):
        load_split_embeddings(kit, "valid")
    (kit / "test.embeddings.npy").write_bytes(b"\0" * 12)
    with pytest.raises(TaskError, match="expected 10 x 4 float32"):
        load_split_embeddings(kit, "test")
