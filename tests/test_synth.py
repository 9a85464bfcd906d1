"""The built-in data generator: determinism, HEAR layout, label balance, sources, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mwmae.builtin import synth
from mwmae.builtin.external import detect_tools
from mwmae.cli import main as cli_main

REQUIRED_METADATA = (
    "task_name",
    "version",
    "embedding_type",
    "prediction_type",
    "split_mode",
    "splits",
    "sample_duration",
    "evaluation",
    "default_mode",
)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """Tiny numpy-only data (the same on every machine), generated through the library."""
    root = tmp_path_factory.mktemp("synth") / "seed0"
    synth.generate(root, size="tiny", seed=0, external=False)
    return root


def test_same_seed_gives_identical_bytes_and_cli_works(tiny_root, tmp_path, capsys):
    other = tmp_path / "again"
    code = cli_main(
        ["make-data", str(other), "--size", "tiny", "--seed", "0", "--numpy-only", "--json",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["reused"] is False
    first, second = _file_hashes(tiny_root), _file_hashes(other)
    assert len(first) > 100
    assert first == second


def test_different_seed_gives_different_audio(tiny_root, tmp_path):
    synth.generate_tasks(tmp_path, size="tiny", seed=1, tasks=["synth_pitch"], external=False)
    a = _file_hashes(tiny_root / "tasks" / "synth_pitch")
    b = _file_hashes(tmp_path / "synth_pitch")
    assert a.keys() == b.keys()  # same layout and file names
    wav_pairs = [(a[k], b[k]) for k in a if k.endswith(".wav")]
    assert sum(x != y for x, y in wav_pairs) == len(wav_pairs)


def test_every_task_has_hear_layout(tiny_root):
    manifest = json.loads((tiny_root / "manifest.json").read_text())
    assert sorted(manifest["tasks"]) == sorted(synth.TASK_NAMES)
    for name in synth.TASK_NAMES:
        task = tiny_root / "tasks" / name
        meta = json.loads((task / "task_metadata.json").read_text())
        for key in REQUIRED_METADATA:
            assert key in meta, (name, key)
        assert meta["task_name"] == name
        assert meta["embedding_type"] in ("scene", "event")
        assert meta["prediction_type"] in ("multiclass", "multilabel")
        assert meta["evaluation"] and all(isinstance(m, str) for m in meta["evaluation"])
        with open(task / "labelvocabulary.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        vocab = [r["label"] for r in rows]
        assert [int(r["idx"]) for r in rows] == list(range(len(vocab)))
        assert len(set(vocab)) == len(vocab) >= 2
        expected_samples = int(round(meta["sample_duration"] * 16000))
        names_seen = set()
        for split in meta["splits"]:
            labels = json.loads((task / f"{split}.json").read_text())
            audio_dir = task / "16000" / split
            on_disk = {p.name for p in audio_dir.glob("*.wav")}
            assert set(labels) == on_disk and on_disk, (name, split)
            assert not names_seen & on_disk  # file names are unique across splits
            names_seen |= on_disk
            for file_name, value in labels.items():
                if meta["embedding_type"] == "scene":
                    assert value and set(value) <= set(vocab), (name, file_name, value)
                    if meta["prediction_type"] == "multiclass":
                        assert len(value) == 1
                else:
                    for ev in value:
                        assert ev["label"] in vocab
                        assert 0 <= ev["start"] < ev["end"] <= meta["sample_duration"] * 1000
            info = sf.info(str(audio_dir / sorted(on_disk)[0]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == expected_samples


def test_fold_task_metadata(tiny_root):
    meta = json.loads((tiny_root / "tasks/synth_environment/task_metadata.json").read_text())
    assert meta["split_mode"] == "new_split_kfold"
    assert meta["nfolds"] == 5
    assert meta["splits"] == [f"fold{i:02d}" for i in range(5)]


def _label_counts(split_labels: dict) -> Counter:
    counts: Counter = Counter()
    for value in split_labels.values():
        counts.update(v["label"] if isinstance(v, dict) else v for v in value)
    return counts


def test_labels_are_balanced_per_split(tiny_root):
    """Multiclass: exactly equal counts per label and split; multilabel scene and event tasks:
    label counts within 1 of each other per split."""
    for name in synth.TASK_NAMES:
        task = tiny_root / "tasks" / name
        meta = json.loads((task / "task_metadata.json").read_text())
        vocab = [line.split(",", 1)[1] for line in (task / "labelvocabulary.csv").read_text()
                 .splitlines()[1:]]  # fmt: skip
        bound = 0 if meta["prediction_type"] == "multiclass" else 1
        for split in meta["splits"]:
            counts = _label_counts(json.loads((task / f"{split}.json").read_text()))
            per_label = [counts[lab] for lab in vocab]
            assert min(per_label) >= 1, (name, split, counts)
            assert max(per_label) - min(per_label) <= bound, (name, split, counts)


def test_clips_are_not_silent_and_vary(tiny_root):
    levels = []
    for path in sorted((tiny_root / "tasks/synth_keywords/16000/train").glob("*.wav"))[:8]:
        wave, _ = sf.read(str(path))
        assert np.isfinite(wave).all() and np.abs(wave).max() < 1.0
        levels.append(float(np.sqrt(np.mean(wave**2))))
    assert min(levels) > 1e-3
    assert max(levels) / min(levels) > 1.2  # random gains


def test_manifest_records_sources_and_is_machine_independent(tiny_root):
    manifest = json.loads((tiny_root / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["size"] == "tiny" and manifest["seed"] == 0
    assert manifest["sources"]["numpy"]["used"] is True
    assert manifest["sources"]["espeak-ng"]["used"] is False  # numpy-only run
    assert manifest["sources"]["fluidsynth"]["used"] is False
    keywords = manifest["tasks"]["synth_keywords"]
    assert keywords["clips_using"] == {"numpy-speech": sum(keywords["clips_per_split"].values())}
    assert str(tiny_root) not in json.dumps(manifest)  # only relative paths
    corpus = sorted((tiny_root / "corpus").glob("*.wav"))
    assert len(corpus) == manifest["corpus"]["num_clips"] == synth.CORPUS_CLIPS["tiny"]
    durations = [sf.info(str(p)).duration for p in corpus]
    assert min(durations) >= 2.0 and max(durations) <= 5.0
    assert len(set(durations)) > 1


def test_existing_data_is_reused_and_foreign_folders_are_refused(tiny_root, tmp_path):
    again = synth.generate(tiny_root, size="tiny", seed=0, external=False)
    assert again["reused"] is True
    (tmp_path / "notes.txt").write_text("not generated data")
    with pytest.raises(FileExistsError):
        synth.generate(tmp_path, size="tiny", seed=0, external=False)
    with pytest.raises(ValueError, match="size"):
        synth.generate(tmp_path / "x", size="huge")
    with pytest.raises(ValueError, match="unknown task"):
        synth.generate_tasks(tmp_path / "y", size="tiny", tasks=["no_such_task"])


tools = detect_tools()


@pytest.mark.skipif(
    not (tools.has_espeak and tools.has_fluidsynth), reason="espeak-ng/fluidsynth not installed"
)
def test_external_sources_are_used_and_deterministic(tmp_path):
    names = ["synth_keywords", "synth_instrument_family"]
    first = synth.generate_tasks(tmp_path / "a", size="tiny", seed=3, tasks=names)
    synth.generate_tasks(tmp_path / "b", size="tiny", seed=3, tasks=names)
    assert _file_hashes(tmp_path / "a") == _file_hashes(tmp_path / "b")
    assert first["synth_keywords"]["clips_using"].get("espeak-ng", 0) > 0
    assert first["synth_instrument_family"]["clips_using"].get("fluidsynth", 0) > 0
