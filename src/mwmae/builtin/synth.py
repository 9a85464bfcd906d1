"""Deterministic built-in data: an unlabelled pretraining corpus and HEAR-layout downstream tasks.

Layout written by `generate(out_dir)`::

    out_dir/manifest.json                 what was made, with which sources (written last)
    out_dir/corpus/00000.wav ...          unlabelled 2-5 s clips (16 kHz mono PCM_16)
    out_dir/tasks/<task>/task_metadata.json
    out_dir/tasks/<task>/labelvocabulary.csv          idx,label
    out_dir/tasks/<task>/<split>.json                 file name -> labels (scene) or events
    out_dir/tasks/<task>/16000/<split>/<file>.wav

Every clip is synthesised from its own seed ``(seed, task, split, index)``, so the same seed gives
byte-identical files (no time stamps anywhere; WAVs are PCM_16 because libsndfile stamps float
WAVs with the current time). Pure-numpy synthesis is always used; espeak-ng speech and
fluidsynth instrument notes are mixed in where those tools are installed (see the manifest's
``sources``). The task names and label sets are the same either way; only the sounds differ.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mwmae.builtin import sounds as snd
from mwmae.builtin.external import (
    GM_PROGRAMS,
    Espeak,
    EspeakVoice,
    ExternalTools,
    FluidNoteBank,
    detect_tools,
)
from mwmae.builtin.sounds import SR

log = logging.getLogger(__name__)
# The generator name manifests carry: the module's name before it moved to mwmae.builtin, kept so
# that data roots made before the move stay valid (not regenerated).
GENERATOR = "mwmae.data.synth"

GENERATOR_VERSION = "1"
SIZES = ("tiny", "small", "medium")
MANIFEST_NAME = "manifest.json"
TRAINVALTEST = ("train", "valid", "test")
NUM_FOLDS = 5
FOLDS = tuple(f"fold{i:02d}" for i in range(NUM_FOLDS))

# Number of pretraining clips (2-5 s each) per size.
CORPUS_CLIPS = {"tiny": 10, "small": 480, "medium": 2000}
CORPUS_SECONDS = (2.0, 5.0)

# Words espeak-ng speaks in the corpus and the counting task (digits and command words).
SPEECH_VOCABULARY = (
    "zero one two three four five six seven eight nine yes no up down left right on off stop go "
    "house river morning yellow bird follow water green table window happy music little under"
).split()

# Share of instrument notes taken from the fluidsynth bank when it is available.
FLUID_SHARE = 0.5


# --------------------------------------------------------------------------------------------
# Sources: numpy always, espeak-ng / fluidsynth when present
# --------------------------------------------------------------------------------------------
class SynthSources:
    """Hands out speech and instrument sounds from the best available source and counts use."""

    def __init__(self, tools: ExternalTools, size: str = "small") -> None:
        self.tools = tools
        self.espeak = Espeak(tools.espeak) if tools.has_espeak else None
        self.bank = (
            FluidNoteBank(tools.fluidsynth, tools.soundfont, 1 if size == "tiny" else None)
            if tools.has_fluidsynth
            else None
        )
        self.used: Counter[str] = Counter()  # calls per source; callers turn these into clip counts

    def instrument(
        self, rng: np.random.Generator, family: str, midi: int, duration: float
    ) -> np.ndarray:
        """One note of `family`, unit RMS; from fluidsynth for about FLUID_SHARE of notes."""
        use_fluid = self.bank is not None and rng.random() < FLUID_SHARE
        if use_fluid:
            self.used["fluidsynth"] += 1
            program = int(rng.integers(len(GM_PROGRAMS[family])))
            note = self.bank.note(family, program, midi, duration)
            note = snd.fit_length(snd.fade(note, 0.0, 0.03), snd.n_samples(duration))
            return snd.normalize_rms(note, 1.0)
        self.used["numpy-instrument"] += 1
        return snd.instrument_note(rng, family, midi, duration, velocity=rng.uniform(0.4, 1.0))

    def words(self, rng: np.random.Generator, words: list[str]) -> np.ndarray:
        """Spoken words in a random voice (espeak-ng), or formant-synthesised speech-like sound."""
        if self.espeak is not None:
            self.used["espeak-ng"] += 1
            return snd.normalize_rms(self.espeak.say(" ".join(words), EspeakVoice.random(rng)), 1.0)
        self.used["numpy-speech"] += 1
        speaker = snd.Speaker(rng)
        parts = []
        for word in words:
            if word in snd.KEYWORD_PHONEMES:
                parts.append(snd.speak_phonemes(rng, snd.KEYWORD_PHONEMES[word], speaker))
            else:
                parts.append(snd.babble(rng, rng.uniform(0.25, 0.5), speaker))
            parts.append(np.zeros(snd.n_samples(rng.uniform(0.03, 0.12))))
        return snd.normalize_rms(np.concatenate(parts), 1.0)

    def talker(self, rng: np.random.Generator, duration: float) -> np.ndarray:
        """One person talking for about `duration` seconds (random words, pauses)."""
        n = snd.n_samples(duration)
        count = max(2, int(duration * 2.6))
        chosen = [
            SPEECH_VOCABULARY[int(i)] for i in rng.integers(len(SPEECH_VOCABULARY), size=count)
        ]
        speech = self.words(rng, chosen)
        start = int(rng.integers(0, snd.n_samples(0.3)))
        out = np.zeros(n)
        snd.add_at(out, speech, start)
        return out


# --------------------------------------------------------------------------------------------
# Shared mixing helpers
# --------------------------------------------------------------------------------------------
def _mix_background(
    rng: np.random.Generator, fg: np.ndarray, snr_db: tuple[float, float]
) -> np.ndarray:
    noise = snd.noise_texture(rng, len(fg) / SR)
    level = snd.rms(fg) * snd.db_to_gain(-rng.uniform(*snr_db))
    return fg + noise * level


def _room(rng: np.random.Generator, x: np.ndarray, p_reverb: float = 0.5) -> np.ndarray:
    # draw every number up front so the random stream does not depend on the branch taken
    do_reverb, rt60, wet = rng.random() < p_reverb, rng.uniform(0.2, 0.9), rng.uniform(0.1, 0.5)
    if do_reverb:
        x = snd.reverb(rng, x, rt60, wet)
    return snd.random_eq(rng, x)


def _to_pcm16(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random loudness (RMS -34 to -16 dBFS), never clipping; int16 samples."""
    x = snd.normalize_rms(x, snd.db_to_gain(-rng.uniform(16.0, 34.0)))
    peak = float(np.max(np.abs(x)))
    if peak > 0.97:
        x = x * (0.97 / peak)
    return np.round(x * 32767.0).astype(np.int16)


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    import soundfile as sf

    # encode in memory: writing to a path makes libsndfile fsync every file, which is slow
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SR, subtype="PCM_16", format="WAV")
    path.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
ClipMaker = Callable[[SynthSources, np.random.Generator, object, float], tuple[np.ndarray, object]]


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task: its HEAR metadata, label set, sizes and clip synthesiser."""

    name: str
    description: str
    embedding_type: str  # scene | event
    prediction_type: str  # multiclass | multilabel
    split_mode: str  # trainvaltest | new_split_kfold
    labels: tuple[str, ...]
    evaluation: tuple[str, ...]
    duration: dict[str, float]  # size -> clip seconds
    # size -> split -> clips per class (multiclass) or clips (multilabel scene, event)
    counts: dict[str, dict[str, int]]
    make: ClipMaker = field(repr=False, compare=False)

    @property
    def splits(self) -> tuple[str, ...]:
        return FOLDS if self.split_mode.endswith("kfold") else TRAINVALTEST

    def metadata(self, size: str) -> dict:
        meta = {
            "task_name": self.name,
            "version": f"synth-{GENERATOR_VERSION}",
            "embedding_type": self.embedding_type,
            "prediction_type": self.prediction_type,
            "split_mode": self.split_mode,
            "splits": list(self.splits),
            "sample_duration": self.duration[size],
            "evaluation": list(self.evaluation),
            "default_mode": "full",
            "mode": "full",
            "sample_rate": SR,
            "description": self.description,
        }
        if self.split_mode.endswith("kfold"):
            meta["nfolds"] = NUM_FOLDS
        return meta


def _split_counts(tiny: tuple[int, ...], small: tuple[int, ...], medium: tuple[int, ...], splits):
    return {
        s: dict(zip(splits, c, strict=True))
        for s, c in zip(SIZES, (tiny, small, medium), strict=True)
    }


# -- pitch (NSynth-pitch-like) -----------------------------------------------------------------
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
PITCH_MIDI = tuple(range(60, 72))
PITCH_LABELS = tuple(f"{_NOTE_NAMES[m % 12]}{m // 12 - 1}" for m in PITCH_MIDI)


def _make_pitch(src: SynthSources, rng: np.random.Generator, label, duration: float):
    midi = PITCH_MIDI[PITCH_LABELS.index(label)]
    family = snd.FAMILIES[int(rng.integers(len(snd.FAMILIES)))]
    n = snd.n_samples(duration)
    clip = np.zeros(n)
    note = src.instrument(rng, family, midi, duration * rng.uniform(0.5, 0.95))
    snd.add_at(clip, note, int(rng.integers(0, snd.n_samples(0.08))))
    # a quieter note of another pitch and instrument: the loudest pitch is the label
    other_family = snd.FAMILIES[int(rng.integers(len(snd.FAMILIES)))]
    other_midi = int(rng.integers(48, 85))
    distractor = src.instrument(rng, other_family, other_midi, duration * rng.uniform(0.3, 0.9))
    gain = snd.db_to_gain(-rng.uniform(5.0, 12.0)) * (rng.random() < 0.8)
    snd.add_at(clip, distractor * gain, int(rng.integers(0, n // 2)))
    clip = _mix_background(rng, clip, (5.0, 20.0))
    return _room(rng, clip, 0.4), [label]


# -- instrument family (NSynth-instrument-family-like) ----------------------------------------
def _make_family(src: SynthSources, rng: np.random.Generator, label, duration: float):
    n = snd.n_samples(duration)
    clip = np.zeros(n)
    note = src.instrument(rng, label, int(rng.integers(50, 81)), duration * rng.uniform(0.6, 0.95))
    snd.add_at(clip, note, int(rng.integers(0, snd.n_samples(0.05))))
    others = [f for f in snd.FAMILIES if f != label]
    other = others[int(rng.integers(len(others)))]
    distractor = src.instrument(rng, other, int(rng.integers(50, 81)), duration * 0.6)
    gain = snd.db_to_gain(-rng.uniform(14.0, 22.0)) * (rng.random() < 0.4)
    snd.add_at(clip, distractor * gain, int(rng.integers(0, n // 2)))
    clip = _mix_background(rng, clip, (12.0, 30.0))
    return _room(rng, clip, 0.4), [label]


# -- speaker counting (LibriCount-like) ---------------------------------------------------------
COUNT_LABELS = tuple(str(k) for k in range(5))


def _make_count(src: SynthSources, rng: np.random.Generator, label, duration: float):
    n = snd.n_samples(duration)
    clip = np.zeros(n)
    for _ in range(int(label)):
        talker = src.talker(rng, duration)
        clip += snd.normalize_rms(talker, 1.0) * snd.db_to_gain(rng.uniform(-5.0, 5.0))
    noise = snd.noise_texture(rng, duration)
    noise_level = snd.db_to_gain(-rng.uniform(12.0, 28.0))
    clip = clip + noise * noise_level
    return _room(rng, clip, 0.5), [label]


# -- keyword spotting (Speech-Commands-like) ---------------------------------------------------
KEYWORD_LABELS = tuple(snd.KEYWORD_PHONEMES)


def _make_keyword(src: SynthSources, rng: np.random.Generator, label, duration: float):
    n = snd.n_samples(duration)
    word = src.words(rng, [label])[: n - snd.n_samples(0.02)]
    clip = np.zeros(n)
    snd.add_at(clip, snd.fade(word, 0.002, 0.01), int(rng.integers(0, n - len(word) + 1)))
    # another voice murmuring far away, as in a room with people
    murmur = src.talker(rng, duration) * snd.db_to_gain(-rng.uniform(14.0, 24.0))
    clip = clip + murmur * (rng.random() < 0.35)
    clip = _mix_background(rng, clip, (5.0, 22.0))
    return _room(rng, clip, 0.3), [label]


# -- which sources are present (multilabel scene) ----------------------------------------------
MIXTURE_LABELS = ("instrument", "speech", "percussion", "chirp", "noise_burst", "bell")


def _mixture_layer(src: SynthSources, rng: np.random.Generator, kind: str, duration: float):
    n = snd.n_samples(duration)
    layer_len = rng.uniform(0.4, 1.0) * duration
    out = np.zeros(n)
    start = int(rng.integers(0, n - snd.n_samples(layer_len) + 1))
    if kind == "instrument":
        family = snd.FAMILIES[int(rng.integers(len(snd.FAMILIES)))]
        sound = snd.melody(rng, layer_len, lambda r, m, d: src.instrument(r, family, m, d))
    elif kind == "speech":
        sound = src.talker(rng, layer_len)
    elif kind == "percussion":
        sound = snd.rhythm(rng, layer_len)
    elif kind == "chirp":
        sound = snd.random_chirps(rng, layer_len)
    elif kind == "noise_burst":
        sound = snd.noise_burst(rng, rng.uniform(0.15, 0.6))
    elif kind == "bell":
        sound = snd.event_sound(rng, "bell")
    else:
        raise ValueError(kind)
    snd.add_at(out, snd.normalize_rms(sound, 1.0), start)
    return out


def _make_mixture(src: SynthSources, rng: np.random.Generator, labels, duration: float):
    clip = np.zeros(snd.n_samples(duration))
    for kind in labels:
        layer = _mixture_layer(src, rng, kind, duration)
        clip += layer * snd.db_to_gain(-rng.uniform(0.0, 9.0))
    clip = _mix_background(rng, clip, (12.0, 28.0))
    return _room(rng, clip, 0.5), sorted(labels, key=MIXTURE_LABELS.index)


# -- environmental sounds, 5 folds (ESC-50-like) -----------------------------------------------
def _make_environment(src: SynthSources, rng: np.random.Generator, label, duration: float):
    clip = snd.environment_sound(rng, label, duration)
    others = [c for c in snd.ENVIRONMENT_CLASSES if c != label]
    other = others[int(rng.integers(len(others)))]
    distractor = snd.environment_sound(rng, other, duration)
    clip = clip + distractor * snd.db_to_gain(-rng.uniform(10.0, 20.0)) * (rng.random() < 0.5)
    clip = _mix_background(rng, clip, (6.0, 22.0))
    return _room(rng, clip, 0.5), [label]


# -- sound event detection (DCASE-2016-task-2-like) --------------------------------------------
def _make_events(src: SynthSources, rng: np.random.Generator, labels, duration: float):
    n = snd.n_samples(duration)
    clip = np.zeros(n)
    events = []
    for kind in labels:
        sound = snd.event_sound(rng, kind) * snd.db_to_gain(-rng.uniform(0.0, 8.0))
        start = int(rng.integers(snd.n_samples(0.1), n - len(sound) - snd.n_samples(0.1)))
        snd.add_at(clip, sound, start)
        # sample -> ms is exact in binary floating point at 16 kHz (1000 / 16000 = 1 / 16)
        events.append({"label": kind, "start": start / 16.0, "end": (start + len(sound)) / 16.0})
    # background: noise plus a faint talker or melody that is not to be detected
    distractor = src.talker(rng, duration) if rng.random() < 0.5 else snd.rhythm(rng, duration)
    clip = clip + snd.normalize_rms(distractor, 0.1) * snd.db_to_gain(-rng.uniform(6.0, 16.0))
    clip = _mix_background(rng, clip, (8.0, 20.0))
    events.sort(key=lambda e: (e["start"], e["label"]))
    return _room(rng, clip, 0.3), events


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="synth_pitch",
        description="Pitch (C4..B4) of a harmonic note across instrument timbres, with a "
        "quieter distractor note and noise (NSynth-pitch-like).",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="trainvaltest",
        labels=PITCH_LABELS,
        evaluation=("top1_acc",),
        duration={"tiny": 1.0, "small": 1.0, "medium": 1.0},
        counts=_split_counts((4, 1, 2), (14, 4, 6), (48, 12, 20), TRAINVALTEST),
        make=_make_pitch,
    ),
    TaskSpec(
        name="synth_instrument_family",
        description="Instrument family of a note at a random pitch (NSynth-family-like).",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="trainvaltest",
        labels=snd.FAMILIES,
        evaluation=("top1_acc",),
        duration={"tiny": 1.0, "small": 1.0, "medium": 1.0},
        counts=_split_counts((4, 1, 2), (16, 4, 6), (56, 14, 20), TRAINVALTEST),
        make=_make_family,
    ),
    TaskSpec(
        name="synth_count",
        description="Number of people talking at once, 0-4 (LibriCount-like).",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="trainvaltest",
        labels=COUNT_LABELS,
        evaluation=("top1_acc",),
        duration={"tiny": 2.0, "small": 2.0, "medium": 2.0},
        counts=_split_counts((3, 1, 2), (18, 5, 8), (70, 16, 24), TRAINVALTEST),
        make=_make_count,
    ),
    TaskSpec(
        name="synth_keywords",
        description="Ten spoken command words in noise (Speech-Commands-like); espeak-ng "
        "voices when installed, else formant-synthesised words.",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="trainvaltest",
        labels=KEYWORD_LABELS,
        evaluation=("top1_acc",),
        duration={"tiny": 1.0, "small": 1.0, "medium": 1.0},
        counts=_split_counts((3, 1, 2), (14, 4, 6), (50, 12, 20), TRAINVALTEST),
        make=_make_keyword,
    ),
    TaskSpec(
        name="synth_mixture_tags",
        description="Which of six source types are present in a mixture of one to three "
        "(multilabel).",
        embedding_type="scene",
        prediction_type="multilabel",
        split_mode="trainvaltest",
        labels=MIXTURE_LABELS,
        evaluation=("mAP", "d_prime"),
        duration={"tiny": 2.0, "small": 2.0, "medium": 2.0},
        counts=_split_counts((12, 6, 6), (120, 40, 40), (480, 120, 160), TRAINVALTEST),
        make=_make_mixture,
    ),
    TaskSpec(
        name="synth_environment",
        description="Ten environmental sound classes in five folds (ESC-50-like).",
        embedding_type="scene",
        prediction_type="multiclass",
        split_mode="new_split_kfold",
        labels=snd.ENVIRONMENT_CLASSES,
        evaluation=("top1_acc",),
        duration={"tiny": 2.0, "small": 2.0, "medium": 2.0},
        counts=_split_counts((1,) * NUM_FOLDS, (4,) * NUM_FOLDS, (16,) * NUM_FOLDS, FOLDS),
        make=_make_environment,
    ),
    TaskSpec(
        name="synth_events",
        description="Onsets and offsets of beeps, knocks, chirps and bells in longer clips "
        "over background sound (DCASE-2016-task-2-like).",
        embedding_type="event",
        prediction_type="multilabel",
        split_mode="trainvaltest",
        labels=snd.EVENT_CLASSES,
        evaluation=("event_onset_200ms_fms", "segment_1s_er"),
        duration={"tiny": 4.0, "small": 6.0, "medium": 6.0},
        counts=_split_counts((4, 2, 2), (40, 12, 12), (160, 40, 40), TRAINVALTEST),
        make=_make_events,
    ),
)
TASK_NAMES = tuple(t.name for t in TASKS)
_EVENTS_PER_CLIP = {"tiny": (2, 4), "small": (2, 6), "medium": (2, 6)}


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _balanced_multilabel(rng: np.random.Generator, n_clips: int, labels: tuple[str, ...]):
    """Label sets of 1-3 labels each, every label used within one of every other."""
    sizes = np.resize(np.arange(1, 4), n_clips)
    rng.shuffle(sizes)
    used = dict.fromkeys(labels, 0)
    plan = []
    for size in sizes:
        order = sorted(labels, key=lambda lab: (used[lab], rng.random()))
        chosen = order[: int(size)]
        for lab in chosen:
            used[lab] += 1
        plan.append(chosen)
    return plan


def plan_targets(spec: TaskSpec, size: str, seed: int) -> dict[str, list]:
    """The label (multiclass), label set (multilabel) or event labels of every clip per split,
    balanced across labels within each split."""
    rng = np.random.default_rng([seed, _stream_id(spec.name), 1])
    plan: dict[str, list] = {}
    for split in spec.splits:
        count = spec.counts[size][split]
        if spec.embedding_type == "event":
            low, high = _EVENTS_PER_CLIP[size]
            per_clip = rng.integers(low, high + 1, size=count)
            pool = list(np.resize(np.array(spec.labels), int(per_clip.sum())))
            rng.shuffle(pool)
            bounds = np.cumsum(per_clip)[:-1]
            plan[split] = [[str(x) for x in part] for part in np.split(np.array(pool), bounds)]
        elif spec.prediction_type == "multilabel":
            plan[split] = _balanced_multilabel(rng, count, spec.labels)
        else:
            targets = [lab for lab in spec.labels for _ in range(count)]
            rng.shuffle(targets)
            plan[split] = targets
    return plan


def _iter_progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from mwmae._progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="clip", leave=False)


def _generate_task(
    spec: TaskSpec, task_dir: Path, size: str, seed: int, sources: SynthSources, bar
) -> dict:
    plan = plan_targets(spec, size, seed)
    duration = spec.duration[size]
    task_dir.mkdir(parents=True, exist_ok=True)
    clips_using: Counter[str] = Counter()
    index = 0
    split_counts = {}
    for split_idx, split in enumerate(spec.splits):
        audio_dir = task_dir / str(SR) / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        split_labels: dict[str, list] = {}
        for target in plan[split]:
            rng = np.random.default_rng([seed, _stream_id(spec.name), 2, split_idx, index])
            before = sources.used.copy()
            audio, labels = spec.make(sources, rng, target, duration)
            clips_using.update(set(sources.used - before))
            name = f"{index:05d}.wav"
            _write_wav(
                audio_dir / name, _to_pcm16(rng, snd.fit_length(audio, snd.n_samples(duration)))
            )
            split_labels[name] = labels
            index += 1
            if bar is not None:
                bar.update(1)
        _write_json(task_dir / f"{split}.json", split_labels)
        split_counts[split] = len(split_labels)
    with open(task_dir / "labelvocabulary.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("idx,label\n")
        for i, label in enumerate(spec.labels):
            f.write(f"{i},{label}\n")
    _write_json(task_dir / "task_metadata.json", spec.metadata(size))
    return {
        "dir": task_dir.name,
        "embedding_type": spec.embedding_type,
        "prediction_type": spec.prediction_type,
        "split_mode": spec.split_mode,
        "num_labels": len(spec.labels),
        "clip_seconds": duration,
        "clips_per_split": split_counts,
        "clips_using": dict(sorted(clips_using.items())),
    }


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def generate_tasks(
    out_dir: str | Path,
    size: str = "small",
    seed: int = 0,
    tasks: Iterable[str] | None = None,
    progress: bool = False,
    external: bool = True,
    sources: SynthSources | None = None,
) -> dict[str, dict]:
    """Write the downstream tasks (all, or the named `tasks`) as `out_dir/<task>/...` folders.

    Returns {task name: summary}. `external=False` skips espeak-ng/fluidsynth even if present.
    """
    _check_size(size)
    names = list(TASK_NAMES if tasks is None else tasks)
    unknown = sorted(set(names) - set(TASK_NAMES))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(TASK_NAMES)}")
    sources = sources or SynthSources(detect_tools(external), size)
    out_dir = Path(out_dir)
    specs = [t for t in TASKS if t.name in names]
    total = sum(
        sum(s.counts[size].values()) * (1 if s.prediction_type == "multilabel" else len(s.labels))
        for s in specs
    )
    bar = _iter_progress(total, progress, "tasks")
    summaries = {}
    try:
        for spec in specs:
            if bar is not None:
                bar.set_postfix_str(spec.name)
            summaries[spec.name] = _generate_task(
                spec, out_dir / spec.name, size, seed, sources, bar
            )
            log.info("wrote task %s", spec.name)
    finally:
        if bar is not None:
            bar.close()
    return summaries


# --------------------------------------------------------------------------------------------
# Pretraining corpus
# --------------------------------------------------------------------------------------------
_CORPUS_LAYERS = ("melody", "speech", "rhythm", "environment", "chirps", "events", "note")
_CORPUS_WEIGHTS = np.array([0.22, 0.22, 0.12, 0.18, 0.08, 0.1, 0.08])


def _corpus_clip(sources: SynthSources, rng: np.random.Generator, duration: float) -> np.ndarray:
    n = snd.n_samples(duration)
    clip = np.zeros(n)
    n_layers = int(rng.choice([1, 1, 2, 2, 3]))
    kinds = rng.choice(
        len(_CORPUS_LAYERS), size=n_layers, p=_CORPUS_WEIGHTS / _CORPUS_WEIGHTS.sum()
    )
    for k in kinds:
        kind = _CORPUS_LAYERS[int(k)]
        if kind == "melody":
            family = snd.FAMILIES[int(rng.integers(len(snd.FAMILIES)))]
            layer = snd.melody(
                rng, duration, lambda r, m, d, fam=family: sources.instrument(r, fam, m, d)
            )
        elif kind == "note":
            family = snd.FAMILIES[int(rng.integers(len(snd.FAMILIES)))]
            note_len = min(duration, rng.uniform(0.5, 1.2))
            layer = sources.instrument(rng, family, int(rng.integers(45, 85)), note_len)
        elif kind == "speech":
            layer = sources.talker(rng, duration)
        elif kind == "rhythm":
            layer = snd.rhythm(rng, duration)
        elif kind == "environment":
            env = snd.ENVIRONMENT_CLASSES[int(rng.integers(len(snd.ENVIRONMENT_CLASSES)))]
            layer = snd.environment_sound(rng, env, duration)
        elif kind == "chirps":
            layer = snd.random_chirps(rng, duration)
        else:
            layer = np.zeros(n)
            for _ in range(int(rng.integers(1, 5))):
                ev = snd.event_sound(rng, snd.EVENT_CLASSES[int(rng.integers(4))])
                snd.add_at(layer, ev, int(rng.integers(0, n)))
        layer = snd.fit_length(layer, n)
        start = int(rng.integers(0, n // 3)) if kind in ("note", "speech") else 0
        shifted = np.zeros(n)
        snd.add_at(shifted, snd.normalize_rms(layer, 1.0), start)
        clip += shifted * snd.db_to_gain(-rng.uniform(0.0, 10.0))
    clip = _mix_background(rng, clip, (6.0, 30.0))
    return _room(rng, clip, 0.5)


def generate_corpus(
    out_dir: str | Path,
    size: str = "small",
    seed: int = 0,
    progress: bool = False,
    external: bool = True,
    sources: SynthSources | None = None,
) -> dict:
    """Write the unlabelled pretraining clips as `out_dir/NNNNN.wav`; returns a summary."""
    _check_size(size)
    sources = sources or SynthSources(detect_tools(external), size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = CORPUS_CLIPS[size]
    clips_using: Counter[str] = Counter()
    bar = _iter_progress(count, progress, "corpus")
    total_seconds = 0.0
    try:
        for i in range(count):
            rng = np.random.default_rng([seed, _stream_id("corpus"), i])
            # durations on a 0.1 s grid
            duration = round(float(rng.uniform(*CORPUS_SECONDS)), 1)
            before = sources.used.copy()
            audio = _corpus_clip(sources, rng, duration)
            clips_using.update(set(sources.used - before))
            _write_wav(out_dir / f"{i:05d}.wav", _to_pcm16(rng, audio))
            total_seconds += duration
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {
        "dir": out_dir.name,
        "num_clips": count,
        "total_seconds": round(total_seconds, 1),
        "clips_using": dict(sorted(clips_using.items())),
    }


# --------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------
def _sources_record(tools: ExternalTools, used: Counter) -> dict:
    return {
        "numpy": {"available": True, "used": True},
        "espeak-ng": {
            "available": tools.has_espeak,
            "used": used["espeak-ng"] > 0,
            "version": tools.espeak_version,
        },
        "fluidsynth": {
            "available": tools.has_fluidsynth,
            "used": used["fluidsynth"] > 0,
            "version": tools.fluidsynth_version,
            "soundfont": Path(tools.soundfont).name if tools.soundfont else None,
        },
    }


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a generated data root, or None if there is none (or it is incomplete)."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("generator") != GENERATOR or not manifest.get("complete", False):
        return None
    return manifest


def _prepare_root(out_dir: Path) -> None:
    """Refuse to write into a folder that holds anything but an earlier run of this generator."""
    if not out_dir.exists():
        out_dir.mkdir(parents=True)
        return
    entries = list(out_dir.iterdir())
    if not entries:
        return
    marker = out_dir / MANIFEST_NAME
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text(encoding="utf-8")).get("generator") == GENERATOR
        except (OSError, json.JSONDecodeError):
            ours = False
    if not ours:
        raise FileExistsError(
            f"{out_dir} is not empty and holds no data generated by mwmae; "
            "choose an empty or new folder"
        )
    for name in ("corpus", "tasks"):
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
    (out_dir / "probe.json").unlink(missing_ok=True)  # results of `make-data --probe`


def generate(
    out_dir: str | Path,
    size: str = "small",
    seed: int = 0,
    progress: bool = False,
    external: bool = True,
    force: bool = False,
) -> dict:
    """Generate the corpus and all tasks under `out_dir` and write `out_dir/manifest.json`.

    A folder already holding a complete run with the same size, seed, generator version and
    available sources is reused as is unless `force`. Returns the manifest plus `root` (the
    absolute folder) and `reused`.
    """
    _check_size(size)
    out_dir = Path(out_dir)
    tools = detect_tools(external)
    sources = SynthSources(tools, size)
    wanted = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "sample_rate": SR,
    }
    available = {k: v["available"] for k, v in _sources_record(tools, Counter()).items()}
    existing = read_manifest(out_dir)
    if (
        not force
        and existing is not None
        and all(existing.get(k) == v for k, v in wanted.items())
        and {k: v["available"] for k, v in existing["sources"].items()} == available
    ):
        log.info("reusing complete data in %s", out_dir)
        return {**existing, "root": str(out_dir.resolve()), "reused": True}
    _prepare_root(out_dir)
    # mark the folder as ours before writing, so a failed run can be overwritten later
    _write_json(out_dir / MANIFEST_NAME, {**wanted, "complete": False})
    corpus = generate_corpus(out_dir / "corpus", size, seed, progress, sources=sources)
    tasks = generate_tasks(out_dir / "tasks", size, seed, None, progress, sources=sources)
    for summary in tasks.values():
        summary["dir"] = f"tasks/{summary['dir']}"
    manifest = {
        **wanted,
        "complete": True,
        "sources": _sources_record(tools, sources.used),
        "corpus": corpus,
        "tasks": tasks,
        "layout": {
            "corpus": "corpus/*.wav (unlabelled, 16 kHz mono PCM_16)",
            "task": "tasks/<task>/{task_metadata.json,labelvocabulary.csv,<split>.json,"
            "16000/<split>/*.wav}",
        },
    }
    _write_json(out_dir / MANIFEST_NAME, manifest)
    return {**manifest, "root": str(out_dir.resolve()), "reused": False}


def total_task_seconds(manifest: dict) -> float:
    """Seconds of audio over all tasks in a manifest (for summaries)."""
    return math.fsum(
        t["clip_seconds"] * sum(t["clips_per_split"].values()) for t in manifest["tasks"].values()
    )
