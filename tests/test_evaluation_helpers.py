"""Shared fixtures-by-function for the evaluation tests (no tests here): small generated HEAR
tasks and a fake HEAR-API module."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import soundfile as sf
import torch

SR = 16000


def write_task_metadata(folder: Path, **overrides) -> dict:
    meta = {
        "task_name": folder.name,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "splits": ["train", "valid", "test"],
        "evaluation": ["top1_acc"],
        "sample_duration": 0.5,
    }
    meta.update(overrides)
    meta = {k: v for k, v in meta.items() if v is not None}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task_metadata.json").write_text(json.dumps(meta))
    return meta


def tone(freq: float, seconds: float, rng: np.random.Generator, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(size=t.shape)).astype(np.float32)


def make_scene_audio_task(
    root: Path, name: str = "tones", per_split: int = 4, lengths: tuple[float, ...] = (0.5,)
) -> Path:
    """Two classes of sine tones (low/high) in train/valid/test; wav files at 16 kHz."""
    rng = np.random.default_rng(0)
    folder = root / name
    write_task_metadata(folder)
    for split in ("train", "valid", "test"):
        labels = {}
        d = folder / "16000" / split
        d.mkdir(parents=True)
        for i in range(per_split):
            cls = ["low", "high"][i % 2]
            f = 300.0 if cls == "low" else 3000.0
            sec = lengths[i % len(lengths)]
            sf.write(d / f"{split}_{i}.wav", tone(f, sec, rng), SR)
            labels[f"{split}_{i}.wav"] = [cls]
        (folder / f"{split}.json").write_text(json.dumps(labels))
    return folder


def make_event_audio_task(root: Path, name: str = "beeps") -> Path:
    """1 s files; a 3 kHz beep from 200 to 600 ms labelled 'beep'."""
    rng = np.random.default_rng(1)
    folder = root / name
    write_task_metadata(
        folder,
        embedding_type="event",
        prediction_type="multilabel",
        evaluation=["event_onset_200ms_fms", "segment_1s_er"],
        sample_duration=1.0,
    )
    for split in ("train", "valid", "test"):
        d = folder / "16000" / split
        d.mkdir(parents=True)
        labels = {}
        for i in range(2):
            x = 0.01 * rng.normal(size=SR).astype(np.float32)
            x[int(0.2 * SR) : int(0.6 * SR)] += tone(3000.0, 0.4, rng)
            sf.write(d / f"{i}.wav", x, SR)
            labels[f"{i}.wav"] = [{"start": 200.0, "end": 600.0, "label": "beep"}]
        (folder / f"{split}.json").write_text(json.dumps(labels))
    return folder


class FakeModel(torch.nn.Module):
    sample_rate = SR
    scene_embedding_size = 8
    timestamp_embedding_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0


def _band_energies(x: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (..., 8) log energies in 8 equal frequency bands."""
    spec = torch.fft.rfft(x, dim=-1).abs() ** 2
    bands = torch.tensor_split(spec, 8, dim=-1)
    return torch.log(torch.stack([b.sum(-1) for b in bands], dim=-1) + 1e-6)


def make_fake_hear_module() -> ModuleType:
    """A HEAR-API module: scene = band energies of the clip, timestamps every 50 ms."""
    mod = ModuleType("fake_hear")

    def load_model(path: str = "") -> FakeModel:
        return FakeModel()

    def get_scene_embeddings(audio: torch.Tensor, model: FakeModel) -> torch.Tensor:
        model.calls += 1
        return _band_energies(audio)

    def get_timestamp_embeddings(audio: torch.Tensor, model: FakeModel):
        model.calls += 1
        hop = SR // 20
        n_frames = audio.shape[1] // hop
        frames = audio[:, : n_frames * hop].reshape(audio.shape[0], n_frames, hop)
        ts = (torch.arange(n_frames, dtype=torch.float64) * 50.0 + 25.0).expand(audio.shape[0], -1)
        return _band_energies(frames), ts

    mod.load_model = load_model
    mod.get_scene_embeddings = get_scene_embeddings
    mod.get_timestamp_embeddings = get_timestamp_embeddings
    return mod


def write_embedded_scene_task(
    root: Path, name: str, x: dict[str, np.ndarray], labels: dict[str, list[list[str]]], **meta
) -> Path:
    """An embedded task folder in mwmae's layout, straight from arrays (no audio)."""
    folder = root / name
    m = write_task_metadata(folder, **meta)
    vocab = sorted({lab for ls in labels.values() for row in ls for lab in row})
    with (folder / "labelvocabulary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        for i, lab in enumerate(vocab):
            w.writerow([i, lab])
    for split in x:
        np.save(folder / f"{split}.embeddings.npy", x[split].astype(np.float32))
        (folder / f"{split}.labels.json").write_text(json.dumps(labels[split]))
        (folder / f"{split}.filenames.json").write_text(
            json.dumps([f"{split}_{i}.wav" for i in range(len(x[split]))])
        )
        (folder / f"{split}.done.json").write_text(json.dumps({"rows": len(x[split])}))
    assert set(x) >= set(m.get("splits", []))
    return folder


def blobs(
    n: int, dim: int, n_classes: int, rng: np.random.Generator, sep: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable Gaussian blobs: (x (n, dim), class index (n,))."""
    centres = rng.normal(size=(n_classes, dim)) * sep
    y = np.arange(n) % n_classes
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y
