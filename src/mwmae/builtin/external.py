"""Optional sound sources from Debian tools: espeak-ng (speech) and fluidsynth + the FluidR3 GM
soundfont (instrument notes). Both are detected at run time; without them the generator uses
the numpy synthesis in `mwmae.builtin.sounds` instead.

Both tools are deterministic for fixed arguments (checked: identical samples on repeated runs;
fluidsynth's float WAV header carries a time stamp, which is why its output is decoded and only
the samples are used).
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mwmae.builtin.sounds import SR

log = logging.getLogger(__name__)

SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
)
# General MIDI programs (0-based) grouped into the instrument families of `mwmae.builtin.sounds`.
GM_PROGRAMS = {
    "keyboard": (0, 1, 2, 4, 5),  # grand, bright, electric grand, electric pianos
    "mallet": (8, 9, 11, 12, 13),  # celesta, glockenspiel, vibraphone, marimba, xylophone
    "organ": (16, 17, 19, 20),  # drawbar, percussive, church, reed organ
    "guitar": (24, 25, 26, 27),  # nylon, steel, jazz, clean electric
    "strings": (40, 41, 42, 48),  # violin, viola, cello, string ensemble
    "brass": (56, 57, 60, 61),  # trumpet, trombone, french horn, brass section
    "reed": (64, 65, 68, 71),  # soprano sax, alto sax, oboe, clarinet
    "flute": (73, 72, 74, 75),  # flute, piccolo, recorder, pan flute
}
BANK_LOW, BANK_HIGH = 45, 86  # MIDI range rendered for every program
_BANK_HOLD_S = 0.95  # key held this long; the note is then released
_BANK_SLOT_S = 1.3  # hold + release tail, then all sound is cut
_TICKS_PER_SECOND = 960  # 480 ticks per quarter at the default 120 bpm

ESPEAK_LANGUAGES = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-us-nyc",
    "en-gb-x-gbcwmd",
    "en-gb-x-gbclan",
)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "croak", "Andy", "belinda", "grandma", "steph", "john", "linda",
)  # fmt: skip


@dataclass(frozen=True)
class ExternalTools:
    """Paths and versions of the optional tools found on this machine (None where absent)."""

    espeak: str | None = None
    espeak_version: str | None = None
    fluidsynth: str | None = None
    fluidsynth_version: str | None = None
    soundfont: str | None = None

    @property
    def has_espeak(self) -> bool:
        return self.espeak is not None

    @property
    def has_fluidsynth(self) -> bool:
        return self.fluidsynth is not None and self.soundfont is not None


def _tool_version(cmd: list[str]) -> str | None:
    """The first version number a tool prints, e.g. '1.51' (None if it does not run)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\d+\.\d+(\.\d+)?", proc.stdout or proc.stderr or "")
    return match.group(0) if match else None


def detect_tools(enabled: bool = True) -> ExternalTools:
    """Find espeak-ng, fluidsynth and a GM soundfont; `enabled=False` pretends none exist."""
    if not enabled:
        return ExternalTools()
    espeak = shutil.which("espeak-ng")
    espeak_version = None
    if espeak is not None:
        espeak_version = _tool_version([espeak, "--version"])
        # a smoke test: some minimal installs lack the voice data
        try:
            _run_espeak(espeak, "test", "en-us", 175, 50)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            log.warning("espeak-ng found but not working (%s); using numpy speech", err)
            espeak = espeak_version = None
    fluidsynth = shutil.which("fluidsynth")
    soundfont = next((p for p in SOUNDFONT_CANDIDATES if Path(p).is_file()), None)
    fluid_version = _tool_version([fluidsynth, "--version"]) if fluidsynth else None
    if fluidsynth and fluid_version is None:
        fluidsynth = None
    return ExternalTools(espeak, espeak_version, fluidsynth, fluid_version, soundfont)


# --------------------------------------------------------------------------------------------
# espeak-ng
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EspeakVoice:
    language: str
    variant: str
    speed: int  # words per minute
    pitch: int  # 0-99

    @classmethod
    def random(cls, rng: np.random.Generator) -> EspeakVoice:
        return cls(
            language=ESPEAK_LANGUAGES[int(rng.integers(len(ESPEAK_LANGUAGES)))],
            variant=ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))],
            speed=int(rng.integers(120, 230)),
            pitch=int(rng.integers(20, 85)),
        )


def _run_espeak(exe: str, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    import soundfile as sf

    proc = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 or len(proc.stdout) < 100:
        raise RuntimeError(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float64", always_2d=True)
    wave = wave.mean(axis=1)
    if sr != SR:
        import soxr

        wave = soxr.resample(wave, sr, SR)
    return wave


def trim_silence(wave: np.ndarray, threshold_db: float = -45.0, pad_s: float = 0.01) -> np.ndarray:
    """Drop leading/trailing samples quieter than `threshold_db` below the peak."""
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if peak <= 0.0:
        return wave
    loud = np.nonzero(np.abs(wave) > peak * 10 ** (threshold_db / 20))[0]
    pad = int(pad_s * SR)
    return wave[max(0, loud[0] - pad) : loud[-1] + pad + 1]


class Espeak:
    """espeak-ng speech at 16 kHz with a cache (the same words recur across clips)."""

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self._cache: dict[tuple, np.ndarray] = {}

    def say(self, text: str, voice: EspeakVoice) -> np.ndarray:
        key = (text, voice)
        if key not in self._cache:
            wave = _run_espeak(
                self.exe, text, f"{voice.language}+{voice.variant}", voice.speed, voice.pitch
            )
            self._cache[key] = trim_silence(wave)
            if len(self._cache) > 4096:  # bound memory on big runs
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key].copy()


# --------------------------------------------------------------------------------------------
# fluidsynth
# --------------------------------------------------------------------------------------------
def _vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file_bytes(events: list[tuple[int, bytes]]) -> bytes:
    """A format-0 standard MIDI file from (absolute tick, message bytes) pairs."""
    track = b""
    last = 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        track += _vlq(tick - last) + message
        last = tick
    track += _vlq(0) + b"\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


class FluidNoteBank:
    """Single notes of General-MIDI instruments rendered by fluidsynth.

    On the first request every note of BANK_LOW..BANK_HIGH is rendered for every program of
    every family, a dozen programs per fluidsynth call (each call loads the 140 MB soundfont, and
    one call for everything would need a large temporary file), then sliced. Reverb and chorus
    are off so the slices do not bleed into each other.
    """

    PROGRAMS_PER_CALL = 12

    def __init__(self, exe: str, soundfont: str, programs_per_family: int | None = None) -> None:
        self.exe = exe
        self.soundfont = soundfont
        self.programs_per_family = programs_per_family
        self._notes: dict[str, np.ndarray] = {}  # family -> (programs * notes, slot samples)

    def programs(self, family: str) -> tuple[int, ...]:
        return GM_PROGRAMS[family][: self.programs_per_family]

    def _render(self, programs: list[int]) -> np.ndarray:
        """(len(programs) * notes, slot samples) float32, one row per (program, note)."""
        import soundfile as sf

        slot = int(_BANK_SLOT_S * _TICKS_PER_SECOND)
        hold = int(_BANK_HOLD_S * _TICKS_PER_SECOND)
        events: list[tuple[int, bytes]] = []
        tick = 0
        for program in programs:
            for note in range(BANK_LOW, BANK_HIGH + 1):
                events.append((tick, bytes([0xC0, program])))
                events.append((tick + 1, bytes([0x90, note, 100])))
                events.append((tick + 1 + hold, bytes([0x80, note, 0])))
                events.append((tick + slot - 24, bytes([0xB0, 120, 0])))  # all sound off
                tick += slot
        with tempfile.TemporaryDirectory(prefix="mwmae-fluid-") as tmp:
            mid = Path(tmp) / "notes.mid"
            wav = Path(tmp) / "notes.wav"
            mid.write_bytes(midi_file_bytes(events))
            cmd = [self.exe, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(SR)]
            cmd += ["-O", "float", "-T", "wav", "-F", str(wav), self.soundfont, str(mid)]
            proc = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
            if proc.returncode != 0 or not wav.is_file():
                err = proc.stderr.decode(errors="replace").strip()
                raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {err}")
            audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
        if sr != SR:
            raise RuntimeError(f"fluidsynth rendered at {sr} Hz, expected {SR}")
        mono = audio.mean(axis=1)
        slot_len = int(round(_BANK_SLOT_S * SR))
        count = len(programs) * (BANK_HIGH - BANK_LOW + 1)
        mono = np.concatenate([mono, np.zeros(max(0, slot_len * count - len(mono)), np.float32)])
        return mono[: slot_len * count].reshape(count, slot_len)

    def _render_all(self) -> None:
        notes = BANK_HIGH - BANK_LOW + 1
        groups: list[list[str]] = [[]]
        for fam in GM_PROGRAMS:  # whole families, at most PROGRAMS_PER_CALL programs a call
            if sum(len(self.programs(f)) for f in groups[-1] + [fam]) > self.PROGRAMS_PER_CALL:
                groups.append([])
            groups[-1].append(fam)
        for group in groups:
            log.info("rendering %s notes with fluidsynth", ", ".join(group))
            rows = self._render([p for fam in group for p in self.programs(fam)])
            offset = 0
            for fam in group:
                count = len(self.programs(fam)) * notes
                self._notes[fam] = rows[offset : offset + count]
                offset += count

    def note(self, family: str, program_index: int, midi: int, duration: float) -> np.ndarray:
        """`duration` seconds (at most the bank slot) of one rendered note, float64."""
        if not self._notes:
            self._render_all()
        midi = int(np.clip(midi, BANK_LOW, BANK_HIGH))
        programs = self.programs(family)
        row = (program_index % len(programs)) * (BANK_HIGH - BANK_LOW + 1) + midi - BANK_LOW
        wave = trim_silence(self._notes[family][row].astype(np.float64), -60.0, 0.0)
        return wave[: int(round(duration * SR))]
