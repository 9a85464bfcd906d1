"""Pure-numpy sound synthesis for the built-in data: instruments, speech-like formant sequences,
environmental textures, short events, percussion, and the effects that make tasks non-trivial.

Every function draws its randomness only from the `rng` it is given and never branches on audio
values when drawing, so a clip is a pure function of its seed. All audio is float64 at 16 kHz.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

SR = 16000
NYQUIST_GUARD_HZ = 7600.0  # keep partials below Nyquist with some margin

FAMILIES = ("keyboard", "mallet", "organ", "guitar", "strings", "brass", "reed", "flute")
ENVIRONMENT_CLASSES = (
    "rain",
    "wind",
    "engine",
    "siren",
    "birds",
    "clock_tick",
    "footsteps",
    "crackling_fire",
    "phone_ring",
    "dog_bark",
)
EVENT_CLASSES = ("beep", "knock", "chirp", "bell")


# --------------------------------------------------------------------------------------------
# Basic helpers
# --------------------------------------------------------------------------------------------
def n_samples(seconds: float) -> int:
    return max(1, int(round(seconds * SR)))


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-12))


def normalize_rms(x: np.ndarray, target: float = 0.1) -> np.ndarray:
    return x * (target / rms(x))


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad to `length` samples."""
    if len(x) >= length:
        return x[:length]
    return np.concatenate([x, np.zeros(length - len(x))])


def add_at(dest: np.ndarray, src: np.ndarray, start: int) -> None:
    """Mix `src` into `dest` starting at sample `start`, dropping what falls outside."""
    if start >= len(dest) or start + len(src) <= 0:
        return
    s0 = max(0, -start)
    d0 = max(0, start)
    k = min(len(src) - s0, len(dest) - d0)
    dest[d0 : d0 + k] += src[s0 : s0 + k]


def fade(x: np.ndarray, fade_in: float = 0.005, fade_out: float = 0.01) -> np.ndarray:
    """Short raised-cosine fades so cut sounds do not click."""
    x = x.copy()
    n_in = min(n_samples(fade_in), len(x) // 2)
    n_out = min(n_samples(fade_out), len(x) // 2)
    if n_in >= 2:
        x[:n_in] *= 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, n_in))
    if n_out >= 2:
        x[-n_out:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, math.pi, n_out))
    return x


def adsr(n: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Linear-attack, exponential-decay envelope of `n` samples; the release ends the clip."""
    t = np.arange(n) / SR
    a = max(attack, 1e-3)
    env = np.where(t < a, t / a, sustain + (1.0 - sustain) * np.exp(-(t - a) / max(decay, 1e-3)))
    r = min(n_samples(release), n)
    if r > 1:
        env[-r:] *= np.linspace(1.0, 0.0, r) ** 2
    return env


def spectral_filter(x: np.ndarray, lo: float, hi: float, slope: float = 0.0) -> np.ndarray:
    """Zero-phase band-pass in the frequency domain with smooth edges and an optional tilt
    (dB per octave above `lo`)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    width_lo = max(lo * 0.25, 20.0)
    width_hi = max(hi * 0.15, 50.0)
    gain = (
        1.0 / (1.0 + np.exp(-(f - lo) / width_lo * 4.0)) / (1.0 + np.exp((f - hi) / width_hi * 4.0))
    )
    if slope:
        gain *= (np.maximum(f, lo) / max(lo, 1.0)) ** (slope / 6.02)
    return np.fft.irfft(spec * gain, n=len(x))


def colored_noise(rng: np.random.Generator, n: int, exponent: float = 1.0) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SR)
    spec *= 1.0 / np.maximum(f, 20.0) ** (exponent / 2.0)
    return normalize_rms(np.fft.irfft(spec, n=n), 1.0)


def band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return normalize_rms(spectral_filter(rng.standard_normal(n), lo, hi), 1.0)


def resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonator (formant filter) with unity gain at its peak, roughly."""
    freq = min(freq, SR / 2 - 200.0)
    r = math.exp(-math.pi * bandwidth / SR)
    a = [1.0, -2.0 * r * math.cos(2.0 * math.pi * freq / SR), r * r]
    return signal.lfilter([1.0 - r], a, x)


def smooth_random(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """A slowly varying random curve in about [-1, 1] (interpolated control points)."""
    points = max(2, int(n / SR * rate_hz) + 2)
    ctrl = rng.uniform(-1.0, 1.0, points)
    return np.interp(np.linspace(0, points - 1, n), np.arange(points), ctrl)


def reverb(rng: np.random.Generator, x: np.ndarray, rt60: float, wet: float) -> np.ndarray:
    """Convolve with exponentially decaying noise (a crude room) and mix; keeps the length."""
    length = n_samples(min(rt60, 1.2))
    t = np.arange(length) / SR
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / max(rt60, 0.05))
    ir = spectral_filter(ir, 60.0, rng.uniform(3000.0, 7500.0))
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    tail = signal.fftconvolve(x, ir)[: len(x)]
    return (1.0 - wet) * x + wet * tail * (rms(x) / rms(tail))


def random_eq(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random gentle spectral tilt and band limits, as different microphones would give."""
    lo = rng.uniform(30.0, 200.0)
    hi = rng.uniform(4500.0, 7900.0)
    return spectral_filter(x, lo, hi, slope=rng.uniform(-3.0, 1.5))


# --------------------------------------------------------------------------------------------
# Instruments: additive synthesis, one family per physical model caricature
# --------------------------------------------------------------------------------------------
def _vibrato_phase(rng: np.random.Generator, f0: float, n: int, depth_cents: float) -> np.ndarray:
    t = np.arange(n) / SR
    rate = rng.uniform(4.0, 6.5)
    onset = np.clip(t / rng.uniform(0.1, 0.4), 0.0, 1.0)  # vibrato fades in, as players do
    cents = depth_cents * onset * np.sin(2 * math.pi * rate * t + rng.uniform(0, 2 * math.pi))
    freq = f0 * 2.0 ** (cents / 1200.0)
    return 2.0 * math.pi * np.cumsum(freq) / SR


def _partials(
    phase: np.ndarray,
    ratios: np.ndarray,
    amps: np.ndarray,
    f0: float,
    envs: list[np.ndarray] | None,
    rng: np.random.Generator,
) -> np.ndarray:
    out = np.zeros(len(phase))
    offsets = rng.uniform(0.0, 2.0 * math.pi, len(ratios))
    for i, (ratio, amp) in enumerate(zip(ratios, amps, strict=True)):
        if ratio * f0 >= NYQUIST_GUARD_HZ or amp <= 0.0:
            continue
        partial = amp * np.sin(ratio * phase + offsets[i])
        if envs is not None:
            partial *= envs[i]
        out += partial
    return out


def instrument_note(
    rng: np.random.Generator, family: str, midi: float, duration: float, velocity: float = 0.8
) -> np.ndarray:
    """One note of an instrument `family` (see FAMILIES), unit RMS, `duration` seconds long.

    Each call draws its own timbre details (spectral tilt, envelope times, vibrato, body
    resonance), so two notes of the same family differ the way two instruments would.
    """
    n = n_samples(duration)
    t = np.arange(n) / SR
    f0 = midi_to_hz(midi) * 2.0 ** (rng.uniform(-15.0, 15.0) / 1200.0)
    k = np.arange(1, 41, dtype=np.float64)
    bright = 0.6 + 0.6 * velocity  # louder notes are brighter
    envs = None
    noise_part = np.zeros(n)
    if family == "keyboard":
        stretch = rng.uniform(1e-4, 5e-4)
        ratios = k * np.sqrt(1.0 + stretch * k**2)
        hammer = np.abs(np.sin(math.pi * k * rng.uniform(0.08, 0.16)))
        amps = hammer * k ** -rng.uniform(1.6, 2.3) * bright
        base_decay = rng.uniform(0.8, 2.5)
        envs = [np.exp(-t * base_decay * (1.0 + 0.25 * i)) for i in range(len(k))]
        env = adsr(n, 0.004, 10.0, 1.0, 0.08)
        phase = 2.0 * math.pi * f0 * t
    elif family == "mallet":
        shapes = (
            np.array([1.0, 3.93, 9.54, 14.2]),  # marimba-like bars
            np.array([1.0, 2.76, 5.40, 8.93]),  # free bar (glockenspiel)
            np.array([1.0, 4.0, 10.0, 16.0]),  # tuned vibraphone bar
        )
        ratios = shapes[int(rng.integers(len(shapes)))] * rng.uniform(0.99, 1.01, 4)
        ratios[0] = 1.0
        amps = np.array([1.0, rng.uniform(0.2, 0.6), rng.uniform(0.05, 0.3), rng.uniform(0, 0.1)])
        decay = rng.uniform(3.0, 9.0)
        envs = [np.exp(-t * decay * (1.0 + 1.5 * i)) for i in range(4)]
        env = adsr(n, 0.002, 10.0, 1.0, 0.05)
        if rng.random() < 0.4:  # vibraphone motor tremolo
            env = env * (1.0 - 0.35 * (0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(4, 7) * t)))
        phase = 2.0 * math.pi * f0 * t
    elif family == "organ":
        ratios = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
        amps = rng.choice([0.0, 0.3, 0.6, 1.0], size=len(ratios), p=[0.35, 0.25, 0.2, 0.2])
        amps[1] = 1.0
        env = adsr(n, rng.uniform(0.01, 0.03), 1.0, 1.0, 0.04)
        if rng.random() < 0.5:  # rotating speaker
            env = env * (1.0 - 0.2 * (0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(5, 7) * t)))
        phase = 2.0 * math.pi * f0 * t
    elif family == "guitar":
        ratios = k * np.sqrt(1.0 + rng.uniform(0, 1e-4) * k**2)
        pluck = rng.uniform(0.1, 0.3)
        amps = np.abs(np.sin(math.pi * k * pluck)) / k * bright
        base_decay = rng.uniform(1.0, 3.0)
        envs = [np.exp(-t * base_decay * (1.0 + 0.04 * i * i)) for i in range(len(k))]
        env = adsr(n, 0.002, 10.0, 1.0, 0.05)
        phase = 2.0 * math.pi * f0 * t
    elif family == "strings":
        ratios = k
        amps = k ** -rng.uniform(0.9, 1.3) * bright
        env = adsr(n, rng.uniform(0.06, 0.25), 0.5, rng.uniform(0.7, 1.0), 0.12)
        phase = _vibrato_phase(rng, f0, n, rng.uniform(8.0, 25.0))
        noise_part = 0.03 * band_noise(rng, n, 1500.0, 6000.0) * env
    elif family == "brass":
        ratios = k
        amps = k ** -rng.uniform(0.7, 1.1)
        env = adsr(n, rng.uniform(0.03, 0.09), 0.3, rng.uniform(0.6, 0.9), 0.08)
        # higher partials grow faster with loudness: the brass "blare"
        envs = [np.power(np.clip(env, 0, 1), 1.0 + 0.25 * i / bright) for i in range(len(k))]
        phase = _vibrato_phase(rng, f0, n, rng.uniform(0.0, 10.0))
    elif family == "reed":
        ratios = k
        even = rng.uniform(0.05, 0.5)  # clarinet (low) to saxophone-ish (high)
        amps = np.where(k % 2 == 1, 1.0, even) * k ** -rng.uniform(0.8, 1.3) * bright
        env = adsr(n, rng.uniform(0.02, 0.06), 0.4, rng.uniform(0.75, 1.0), 0.06)
        phase = _vibrato_phase(rng, f0, n, rng.uniform(0.0, 12.0))
        noise_part = 0.02 * band_noise(rng, n, 1000.0, 5000.0) * env
    elif family == "flute":
        ratios = k[:6]
        amps = np.array([1.0, rng.uniform(0.1, 0.5), rng.uniform(0.05, 0.25), 0.05, 0.02, 0.01])
        env = adsr(n, rng.uniform(0.05, 0.15), 0.5, rng.uniform(0.8, 1.0), 0.08)
        phase = _vibrato_phase(rng, f0, n, rng.uniform(5.0, 20.0))
        noise_part = rng.uniform(0.05, 0.15) * band_noise(rng, n, f0, min(6 * f0, 7000.0)) * env
    else:
        raise ValueError(f"unknown instrument family {family!r}; expected one of {FAMILIES}")
    tone = _partials(phase, ratios, amps, f0, envs, rng) * env + noise_part
    if family in ("strings", "guitar", "keyboard") or rng.random() < 0.3:
        body = rng.uniform(250.0, 2500.0)  # a body/formant resonance
        tone = tone + 0.5 * normalize_rms(resonator(tone, body, body * 0.3), rms(tone))
    return normalize_rms(fade(tone, 0.001, 0.02), 1.0)


def melody(
    rng: np.random.Generator,
    duration: float,
    note_fn,
    low: int = 48,
    high: int = 84,
) -> np.ndarray:
    """A random melody of notes from `note_fn(rng, midi, note_duration) -> audio`."""
    n = n_samples(duration)
    out = np.zeros(n)
    tempo_step = rng.uniform(0.15, 0.5)
    pos = 0.0
    midi = int(rng.integers(low + 6, high - 6))
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
    while pos < duration - 0.1:
        length = tempo_step * float(rng.choice([1, 1, 2, 3]))
        note = note_fn(rng, midi, min(length * 1.3, duration - pos + 0.05))
        add_at(out, note * rng.uniform(0.5, 1.0), n_samples(pos))
        pos += length
        midi = int(np.clip(midi + rng.choice(scale) - 6, low, high))
    return out


# --------------------------------------------------------------------------------------------
# Speech-like formant synthesis (the fallback when espeak-ng is absent)
# --------------------------------------------------------------------------------------------
# Adult-male formants (F1, F2, F3) in Hz for vowels and voiced consonants (Peterson & Barney
# style averages); diphthongs list two targets.
_VOWELS = {
    "i": [(270, 2290, 3010)],
    "I": [(390, 1990, 2550)],
    "E": [(530, 1840, 2480)],
    "ae": [(660, 1720, 2410)],
    "A": [(730, 1090, 2440)],
    "O": [(570, 840, 2410)],
    "U": [(440, 1020, 2240)],
    "u": [(300, 870, 2240)],
    "V": [(640, 1190, 2390)],
    "@": [(500, 1500, 2500)],
    "aI": [(730, 1090, 2440), (300, 2200, 2900)],
    "aU": [(730, 1090, 2440), (320, 900, 2300)],
    "oU": [(550, 950, 2400), (320, 870, 2240)],
    "eI": [(500, 1800, 2480), (300, 2200, 2900)],
}
_SONORANTS = {  # formants, relative level
    "j": ((280, 2250, 2900), 0.6),
    "w": ((300, 700, 2200), 0.6),
    "r": ((310, 1060, 1380), 0.6),
    "l": ((360, 1000, 2500), 0.5),
    "n": ((250, 1700, 2600), 0.3),
    "m": ((250, 1200, 2200), 0.3),
}
_FRICATIVES = {  # noise band (Hz), level, voiced
    "s": ((4000, 7800), 0.35, False),
    "S": ((1800, 5000), 0.35, False),
    "f": ((1200, 7800), 0.12, False),
    "h": ((500, 4000), 0.1, False),
    "z": ((4000, 7800), 0.25, True),
    "v": ((1200, 7000), 0.1, True),
}
_PLOSIVES = {  # burst band, voiced
    "p": ((400, 2000), False),
    "t": ((3000, 7000), False),
    "k": ((1500, 3500), False),
    "b": ((300, 1800), True),
    "d": ((2500, 6000), True),
    "g": ((1200, 3000), True),
}
# The keyword vocabulary in this phoneme alphabet (roughly how the words are pronounced).
KEYWORD_PHONEMES = {
    "yes": ["j", "E", "s"],
    "no": ["n", "oU"],
    "up": ["V", "p"],
    "down": ["d", "aU", "n"],
    "left": ["l", "E", "f", "t"],
    "right": ["r", "aI", "t"],
    "on": ["A", "n"],
    "off": ["O", "f"],
    "stop": ["s", "t", "A", "p"],
    "go": ["g", "oU"],
}
_CONSONANTS = list(_SONORANTS) + list(_FRICATIVES) + list(_PLOSIVES)


class Speaker:
    """Voice parameters of one synthetic talker: pitch, vocal-tract scale, rate, breathiness."""

    def __init__(self, rng: np.random.Generator) -> None:
        kind = rng.integers(3)  # male, female, child-like
        self.f0 = float(rng.uniform(*((85, 150), (165, 255), (230, 330))[kind]))
        self.tract = float(rng.uniform(*((0.9, 1.05), (1.08, 1.22), (1.2, 1.35))[kind]))
        self.rate = float(rng.uniform(0.75, 1.3))
        self.breath = float(rng.uniform(0.01, 0.08))
        self.tilt = float(rng.uniform(0.85, 0.97))  # glottal low-pass: higher = darker voice


def _glottal_source(
    rng: np.random.Generator, n: int, f0_curve: np.ndarray, tilt: float
) -> np.ndarray:
    jitter = 1.0 + 0.01 * smooth_random(rng, n, 30.0)
    phase = np.cumsum(f0_curve * jitter) / SR
    pulses = np.diff(np.floor(phase), prepend=0.0)
    return signal.lfilter([1.0], [1.0, -tilt], pulses - pulses.mean())


def _formant_filter(x: np.ndarray, formants, tract: float) -> np.ndarray:
    out = x
    for i, f in enumerate(formants):
        out = resonator(out, f * tract, 60.0 + 40.0 * i)
    return out


def speak_phonemes(rng: np.random.Generator, phonemes: list[str], speaker: Speaker) -> np.ndarray:
    """Formant synthesis of a phoneme list (see KEYWORD_PHONEMES), unit RMS."""
    segments: list[np.ndarray] = []
    for p in phonemes:
        if p in _VOWELS:
            dur = rng.uniform(0.11, 0.2) / speaker.rate * (1.3 if len(_VOWELS[p]) > 1 else 1.0)
        elif p in _PLOSIVES:
            dur = rng.uniform(0.05, 0.08) / speaker.rate
        else:
            dur = rng.uniform(0.06, 0.11) / speaker.rate
        n = n_samples(dur)
        # a falling intonation with a little random wobble
        f0 = speaker.f0 * (1.0 + 0.06 * smooth_random(rng, n, 4.0)) * rng.uniform(0.92, 1.08)
        voice = _glottal_source(rng, n, np.full(n, f0), speaker.tilt)
        voice = voice + speaker.breath * rng.standard_normal(n) * rms(voice) * 10
        if p in _VOWELS:
            targets = _VOWELS[p]
            if len(targets) == 1:
                seg = _formant_filter(voice, targets[0], speaker.tract)
            else:  # glide between the two targets in a few steady pieces
                pieces = np.array_split(np.arange(n), 4)
                seg = np.zeros(n)
                for j, idx in enumerate(pieces):
                    w = j / (len(pieces) - 1)
                    formants = [a * (1 - w) + b * w for a, b in zip(*targets, strict=True)]
                    seg[idx] = _formant_filter(voice, formants, speaker.tract)[idx]
            seg = normalize_rms(seg, 1.0)
        elif p in _SONORANTS:
            formants, level = _SONORANTS[p]
            seg = normalize_rms(_formant_filter(voice, formants, speaker.tract), level)
        elif p in _FRICATIVES:
            (lo, hi), level, voiced = _FRICATIVES[p]
            seg = level * band_noise(rng, n, lo * speaker.tract, min(hi * speaker.tract, 7800))
            if voiced:
                seg = seg + normalize_rms(
                    _formant_filter(voice, (250, 1500, 2500), speaker.tract), 0.2
                )
        else:
            (lo, hi), voiced = _PLOSIVES[p]
            seg = np.zeros(n)
            burst = n_samples(0.015)
            seg[-burst:] = 0.6 * band_noise(rng, burst, lo, hi) * np.exp(-np.arange(burst) / 80.0)
            if voiced:  # voice bar during the closure
                seg[:-burst] += normalize_rms(
                    signal.lfilter([1.0], [1.0, -0.97], voice[:-burst]), 0.1
                )
        segments.append(fade(seg, 0.008, 0.008))
    out = np.concatenate(segments)
    return normalize_rms(out, 1.0)


def babble(rng: np.random.Generator, duration: float, speaker: Speaker | None = None) -> np.ndarray:
    """Nonsense syllables in one voice, filling `duration` seconds (pauses included)."""
    speaker = speaker or Speaker(rng)
    n = n_samples(duration)
    out = np.zeros(n)
    pos = int(rng.integers(0, n_samples(0.2)))
    vowels = list(_VOWELS)
    while pos < n:
        syllables = []
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.7:
                syllables.append(_CONSONANTS[int(rng.integers(len(_CONSONANTS)))])
            syllables.append(vowels[int(rng.integers(len(vowels)))])
            if rng.random() < 0.4:
                syllables.append(_CONSONANTS[int(rng.integers(len(_CONSONANTS)))])
        word = speak_phonemes(rng, syllables, speaker)
        add_at(out, word, pos)
        pos += len(word) + n_samples(rng.uniform(0.03, 0.25))
    return out


# --------------------------------------------------------------------------------------------
# Percussion, chirps, events
# --------------------------------------------------------------------------------------------
def drum_hit(rng: np.random.Generator, kind: str) -> np.ndarray:
    """One hit: 'kick', 'snare', 'hat' or 'click'."""
    if kind == "kick":
        n = n_samples(rng.uniform(0.2, 0.4))
        t = np.arange(n) / SR
        f = rng.uniform(45, 70) + rng.uniform(60, 120) * np.exp(-t * 30)
        x = np.sin(2 * math.pi * np.cumsum(f) / SR) * np.exp(-t * rng.uniform(8, 15))
    elif kind == "snare":
        n = n_samples(rng.uniform(0.15, 0.3))
        t = np.arange(n) / SR
        tone = np.sin(2 * math.pi * rng.uniform(150, 250) * t) * np.exp(-t * 25)
        x = 0.6 * tone + band_noise(rng, n, 1000, 7000) * np.exp(-t * rng.uniform(15, 30))
    elif kind == "hat":
        n = n_samples(rng.uniform(0.04, 0.12))
        t = np.arange(n) / SR
        x = band_noise(rng, n, 6000, 7900) * np.exp(-t * rng.uniform(40, 80))
    elif kind == "click":
        n = n_samples(0.02)
        x = resonator(np.eye(1, n).ravel(), rng.uniform(1500, 5000), 300.0)
    else:
        raise ValueError(f"unknown drum {kind!r}")
    return normalize_rms(fade(x, 0.0005, 0.005), 1.0)


def rhythm(rng: np.random.Generator, duration: float) -> np.ndarray:
    """A looped drum pattern at a random tempo (16 steps of kick/snare/hat)."""
    n = n_samples(duration)
    out = np.zeros(n)
    step = 60.0 / rng.uniform(80, 160) / 4.0
    pattern = {
        "kick": rng.random(16) < np.where(np.arange(16) % 4 == 0, 0.9, 0.15),
        "snare": rng.random(16) < np.where(np.arange(16) % 8 == 4, 0.9, 0.08),
        "hat": rng.random(16) < np.where(np.arange(16) % 2 == 0, 0.8, 0.3),
    }
    levels = {"kick": 1.0, "snare": 0.7, "hat": 0.3}
    for i in range(int(duration / step) + 1):
        for kind, hits in pattern.items():
            if hits[i % 16]:
                add_at(out, drum_hit(rng, kind) * levels[kind], n_samples(i * step))
    return out


def chirp(rng: np.random.Generator, duration: float, f_start: float, f_end: float) -> np.ndarray:
    """Exponential sweep with a few harmonics."""
    n = n_samples(duration)
    f = f_start * (f_end / f_start) ** (np.arange(n) / n)
    phase = 2 * math.pi * np.cumsum(f) / SR
    x = np.zeros(n)
    for h, a in ((1, 1.0), (2, rng.uniform(0, 0.4)), (3, rng.uniform(0, 0.2))):
        x += a * np.sin(h * phase) * (h * f < NYQUIST_GUARD_HZ)
    return normalize_rms(fade(x, 0.005, 0.02), 1.0)


def random_chirps(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = n_samples(duration)
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 5))):
        lo, hi = sorted(rng.uniform(200, 5000, 2))
        f0, f1 = (lo, hi) if rng.random() < 0.5 else (hi, lo)
        c = chirp(rng, rng.uniform(0.1, 0.8), f0, f1)
        add_at(out, c * rng.uniform(0.4, 1.0), int(rng.integers(0, n)))
    return out


def event_sound(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A short foreground event of one of EVENT_CLASSES; its length is its labelled extent."""
    if kind == "beep":
        n = n_samples(rng.uniform(0.12, 0.5))
        t = np.arange(n) / SR
        f = rng.uniform(600, 3000)
        x = np.sin(2 * math.pi * f * t) + rng.uniform(0, 0.3) * np.sin(4 * math.pi * f * t)
    elif kind == "knock":
        hits = int(rng.integers(2, 5))
        gap = rng.uniform(0.07, 0.15)
        f = rng.uniform(120, 400)
        n = n_samples(gap * (hits - 1) + 0.08)
        x = np.zeros(n)
        for i in range(hits):
            m = n_samples(0.08)
            t = np.arange(m) / SR
            hit = np.sin(2 * math.pi * f * t) * np.exp(-t * 60) + 0.3 * band_noise(
                rng, m, 500, 3000
            ) * np.exp(-t * 120)
            add_at(x, hit, n_samples(i * gap))
    elif kind == "chirp":
        lo = rng.uniform(300, 1200)
        x = chirp(rng, rng.uniform(0.15, 0.6), lo, lo * rng.uniform(2.5, 5.0))
    elif kind == "bell":
        n = n_samples(rng.uniform(0.4, 1.0))
        t = np.arange(n) / SR
        f = rng.uniform(500, 1800)
        x = np.zeros(n)
        for ratio, amp in ((1.0, 1.0), (2.0, 0.6), (2.4, 0.4), (3.0, 0.25), (4.2, 0.2), (5.4, 0.1)):
            if f * ratio < NYQUIST_GUARD_HZ:
                x += amp * np.sin(2 * math.pi * f * ratio * t) * np.exp(-t * (3 + 2 * ratio))
    else:
        raise ValueError(f"unknown event {kind!r}; expected one of {EVENT_CLASSES}")
    return normalize_rms(fade(x, 0.002, 0.01), 1.0)


def noise_burst(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = n_samples(duration)
    lo = rng.uniform(100, 3000)
    x = band_noise(rng, n, lo, min(lo * rng.uniform(1.5, 6), 7900))
    return normalize_rms(fade(x * adsr(n, 0.01, rng.uniform(0.05, 0.5), 0.3, 0.05), 0.002), 1.0)


# --------------------------------------------------------------------------------------------
# Environmental textures (ESC-50-like classes)
# --------------------------------------------------------------------------------------------
def noise_texture(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Background: colored noise, band-limited, slowly fluctuating in level."""
    n = n_samples(duration)
    x = colored_noise(rng, n, rng.uniform(0.0, 2.0))
    x = spectral_filter(x, rng.uniform(20, 300), rng.uniform(2000, 7900))
    x *= 1.0 + rng.uniform(0.0, 0.5) * smooth_random(rng, n, rng.uniform(0.5, 4.0))
    return normalize_rms(x, 1.0)


def environment_sound(rng: np.random.Generator, kind: str, duration: float) -> np.ndarray:
    """`duration` seconds of one of ENVIRONMENT_CLASSES, unit RMS."""
    n = n_samples(duration)
    t = np.arange(n) / SR
    x = np.zeros(n)
    if kind == "rain":
        x += 0.3 * colored_noise(rng, n, 0.5)
        for pos in rng.integers(0, n, int(duration * rng.uniform(80, 300))):
            m = n_samples(0.01)
            drop = resonator(np.eye(1, m).ravel(), rng.uniform(2000, 7000), 800.0)
            add_at(x, drop * rng.uniform(0.5, 3.0) * 30, int(pos))
    elif kind == "wind":
        cutoff = 300 + 900 * (0.5 + 0.5 * smooth_random(rng, n, 0.7))
        base = colored_noise(rng, n, 1.5)
        x = base * (0.4 + 0.6 * (0.5 + 0.5 * smooth_random(rng, n, 0.8)))
        x = spectral_filter(x, 40.0, float(np.mean(cutoff)))
        # a whistling resonance that wanders with the gusts
        x += (
            0.2
            * normalize_rms(resonator(base, float(rng.uniform(400, 900)), 40.0), 1.0)
            * (0.5 + 0.5 * smooth_random(rng, n, 0.5))
        )
    elif kind == "engine":
        rpm = rng.uniform(20, 60) * (1.0 + 0.1 * smooth_random(rng, n, 0.5))
        phase = 2 * math.pi * np.cumsum(rpm) / SR
        for h in range(1, 12):
            x += np.sin(h * phase + rng.uniform(0, 6.3)) / h**0.7
        x += 0.4 * colored_noise(rng, n, 1.5) * (1 + 0.5 * np.sin(phase))
        x = spectral_filter(x, 25.0, rng.uniform(800, 2500))
    elif kind == "siren":
        low, high = rng.uniform(500, 800), rng.uniform(1100, 1700)
        rate = rng.uniform(0.3, 2.5)
        sweep = 0.5 + 0.5 * np.sin(2 * math.pi * rate * t + rng.uniform(0, 6.3))
        if rng.random() < 0.5:  # two-tone siren
            sweep = (sweep > 0.5).astype(float)
            sweep = np.convolve(sweep, np.ones(80) / 80, mode="same")
        phase = 2 * math.pi * np.cumsum(low + (high - low) * sweep) / SR
        x = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
    elif kind == "birds":
        pos = int(rng.integers(0, n_samples(0.3)))
        while pos < n:
            for _ in range(int(rng.integers(2, 7))):
                f0 = rng.uniform(2500, 5500)
                c = chirp(rng, rng.uniform(0.03, 0.12), f0, f0 * rng.uniform(0.6, 1.6))
                add_at(x, c, pos)
                pos += n_samples(rng.uniform(0.05, 0.15))
            pos += n_samples(rng.uniform(0.2, 0.8))
    elif kind == "clock_tick":
        period = rng.uniform(0.25, 0.6)
        f_tick = rng.uniform(1500, 4500)
        pos = rng.uniform(0, period)
        i = 0
        while pos < duration:
            m = n_samples(0.03)
            tick = resonator(np.eye(1, m).ravel(), f_tick * (1.15 if i % 2 else 1.0), 200.0)
            add_at(x, tick * 50, n_samples(pos))
            pos += period
            i += 1
    elif kind == "footsteps":
        period = rng.uniform(0.4, 0.7)
        pos = rng.uniform(0, period)
        while pos < duration:
            m = n_samples(0.15)
            tt = np.arange(m) / SR
            thump = np.sin(2 * math.pi * rng.uniform(60, 120) * tt) * np.exp(-tt * 35)
            scuff = 0.5 * band_noise(rng, m, 800, 5000) * np.exp(-tt * rng.uniform(20, 50))
            add_at(x, thump + scuff, n_samples(pos))
            pos += period * rng.uniform(0.9, 1.1)
    elif kind == "crackling_fire":
        x += 0.4 * spectral_filter(colored_noise(rng, n, 2.0), 30, 600)
        for pos in rng.integers(0, n, int(duration * rng.uniform(15, 50))):
            m = n_samples(rng.uniform(0.003, 0.02))
            crack = rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4))
            add_at(x, crack * rng.uniform(1.0, 6.0), int(pos))
    elif kind == "phone_ring":
        f1, f2 = rng.uniform(400, 1000), rng.uniform(1000, 2000)
        tone = np.sin(2 * math.pi * f1 * t) + np.sin(2 * math.pi * f2 * t)
        trill = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * rng.uniform(15, 25) * t))
        on_time, off_time = rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.6)
        cadence = ((t + rng.uniform(0, on_time + off_time)) % (on_time + off_time)) < on_time
        x = tone * (0.3 + 0.7 * trill) * np.convolve(cadence, np.ones(40) / 40, mode="same")
    elif kind == "dog_bark":
        speaker_f0 = rng.uniform(250, 600)
        pos = int(rng.integers(0, n_samples(0.4)))
        while pos < n:
            for _ in range(int(rng.integers(1, 4))):
                m = n_samples(rng.uniform(0.08, 0.2))
                f0 = speaker_f0 * np.linspace(1.2, 0.8, m)
                src = _glottal_source(rng, m, f0, 0.6) + 0.3 * rng.standard_normal(m) * 0.05
                bark = _formant_filter(
                    src, (rng.uniform(600, 900), rng.uniform(1300, 1800), 2600), 1.0
                )
                bark = normalize_rms(bark, 1.0) * adsr(m, 0.01, 0.05, 0.5, 0.03)
                add_at(x, bark, pos)
                pos += m + n_samples(rng.uniform(0.1, 0.25))
            pos += n_samples(rng.uniform(0.3, 1.0))
    else:
        raise ValueError(
            f"unknown environment class {kind!r}; expected one of {ENVIRONMENT_CLASSES}"
        )
    return normalize_rms(fade(x, 0.01, 0.02), 1.0)
