"""`embed` cache keyed by content (issue #12.1), broken audio reported at once (#12.7) and
`embed_tasks`, the loop over task folders the commands and the demo share."""

from __future__ import annotations

import json
import os

import pytest
from test_evaluation_helpers import make_fake_hear_module, make_scene_audio_task

from mwmae.errors import InputError
from mwmae.evaluation.embed import embed_task, embed_tasks, load_hear_model
from mwmae.evaluation.stored import load_split_embeddings


def _calls_per_split(model, run):
    before = model.calls
    run()
    return model.calls - before  # batches embedded (2 per split here, batch_size 2)


def test_cache_is_keyed_by_weights_settings_and_files(tmp_path):
    folder = make_scene_audio_task(tmp_path / "tasks")
    weights = tmp_path / "run" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights v1")
    hear = make_fake_hear_module()
    model = hear.load_model()

    def run(**kw):
        return _calls_per_split(
            model,
            lambda: embed_task(
                hear, model, folder, tmp_path / "emb", batch_size=2, model_id=str(weights), **kw
            ),
        )

    assert run() == 6  # 3 splits x 2 batches
    assert run() == 0  # unchanged: reused
    cache = json.loads((tmp_path / "emb" / "tones" / "train.cache.json").read_text())
    assert cache["model"]["weights_sha256"]["model.safetensors"] != ""
    assert len(cache["files"]) == 5  # train.json + 4 wav files
    # Retrain into the same folder: new weights, same path -> everything re-embeds.
    weights.write_bytes(b"weights v2")
    assert run() == 6
    assert run() == 0
    # Touch one file of one split -> only that split.
    wav = folder / "16000" / "valid" / "valid_1.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert run() == 2
    # Add a file (and its label) to test -> only test.
    (folder / "16000" / "test" / "test_4.wav").write_bytes(
        (folder / "16000" / "test" / "test_0.wav").read_bytes()
    )
    labels = json.loads((folder / "test.json").read_text())
    labels["test_4.wav"] = ["low"]
    (folder / "test.json").write_text(json.dumps(labels))
    assert run() == 3
    assert len(load_split_embeddings(tmp_path / "emb" / "tones", "test").labels) == 5
    # A setting of the model that changes embeddings (its sample rate / sizes) -> all.
    model.scene_embedding_size = 99
    assert run() == 7  # test now holds 5 files: 3 batches
    assert run() == 0
    assert run(overwrite=True) == 7  # --force


def test_broken_audio_lists_every_file_and_keeps_good_splits(tmp_path):
    folder = make_scene_audio_task(tmp_path / "tasks")
    bad = [folder / "16000" / "valid" / "valid_2.wav", folder / "16000" / "test" / "test_1.wav"]
    bad[0].write_bytes(b"not a wav file at all")
    bad[1].write_bytes(bad[1].read_bytes()[:30])  # truncated header
    hear = make_fake_hear_module()
    model = hear.load_model()
    with pytest.raises(InputError) as info:
        embed_task(hear, model, folder, tmp_path / "emb", batch_size=2)
    msg = str(info.value)
    assert "\n" not in msg and "2 audio file(s)" in msg
    assert all(str(p) in msg for p in bad)
    out = tmp_path / "emb" / "tones"
    assert (out / "train.done.json").is_file()
    assert not (out / "valid.done.json").exists() and not (out / "test.done.json").exists()
    calls = model.calls
    assert calls == 2  # train's 2 batches; a split with a broken file is scanned, not embedded
    with pytest.raises(InputError) as again:  # train is reused, the broken splits re-checked
        embed_task(hear, model, folder, tmp_path / "emb", batch_size=2)
    assert model.calls == calls and str(again.value) == msg


def test_embed_tasks_is_embed_task_per_folder(tmp_path):
    """embed_tasks (what `mwmae embed` and the demo run) writes what embed_task writes with the
    module loaded by hand, records the given model id and reads a folder of tasks too."""
    from mwmae.builtin import logmel

    module, model = load_hear_model("logmel")
    assert module is logmel and isinstance(model, logmel.LogMelBaseline) and not model.training
    folder = make_scene_audio_task(tmp_path / "tasks")
    rows = embed_tasks("logmel", [folder], tmp_path / "a", model_id="baseline")
    embed_task(logmel, logmel.load_model(), folder, tmp_path / "b", model_id="baseline")
    assert [r["task"] for r in rows] == ["tones"]
    assert set(rows[0]["splits"]) == {"train", "valid", "test"}
    assert rows[0]["splits"]["train"]["model_id"] == "baseline"
    for split in ("train", "valid", "test"):
        for suffix in ("embeddings.npy", "labels.json", "cache.json", "done.json"):
            name = f"tones/{split}.{suffix}"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = embed_tasks("logmel", tmp_path / "tasks", tmp_path / "a", model_id="baseline")
    assert again[0]["splits"] == rows[0]["splits"]
