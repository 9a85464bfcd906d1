"""Audio files as pretraining clips: finding them, listing folders and manifests, and cutting
long files into clips that are read by seeking (never the whole file).

A file up to `clip_seconds` long is one clip, read whole. A longer file is listed once with its
frame count (`soundfile.info`) and cut into ceil(frames / clip_frames) nearly equal clips (none
longer than `clip_seconds`, no short tail); each clip is its own item, named
`<path>#t=<start>,<end>` (seconds, media-fragment style, `features.clip_name`), and read by
`features.load_audio` with its `start`/`stop` frames.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mwmae import features
from mwmae.data.clips import ClipSource
from mwmae.errors import InputError, MissingFileError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Files up to this long are one clip (as before long-file support); longer ones are cut.
DEFAULT_CLIP_SECONDS = 60.0
HEAR_AUDIO_FOLDER = "16000"  # a HEAR task's audio at 16 kHz, one folder per split


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------
@dataclass
class AudioListing:
    """Usable audio files of a folder, and the audio-named entries that are not usable files
    (a directory called `x.wav`, a broken symlink, an unreadable file) as (path, reason)."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def unusable_reason(path: Path) -> str | None:
    """Why `path` cannot be read as an audio file, or None when it is a readable regular file."""
    if path.is_symlink() and not path.exists():
        return "broken symbolic link"
    if path.is_dir():
        return "a directory, not a file"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permissions)"
    return None


def scan_audio_folder(folder: str | Path) -> AudioListing:
    """Everything named like audio (`AUDIO_EXTENSIONS`) below `folder`, recursive and sorted,
    split into usable files and skipped entries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: not a directory")
    listing = AudioListing()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        reason = unusable_reason(path)
        if reason is None:
            listing.paths.append(path)
        else:
            listing.skipped.append((str(path), reason))
    if listing.skipped:
        log.warning(
            "%d audio-named entries under %s are not readable files and are skipped: %s",
            len(listing.skipped),
            folder,
            "; ".join(f"{p} ({why})" for p, why in listing.skipped[:20]),
        )
    return listing


def find_audio_files(path: str | Path) -> list[Path]:
    """Audio files at `path`, sorted for a stable order: one file; a HEAR task folder (only the
    audio of its `16000/` folder); or any folder, searched recursively (entries that are not
    readable files are logged, see `scan_audio_folder`). Raises `MissingFileError` naming the
    path when it does not exist or holds no audio file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"{path}: no such file or folder")
    hear_audio = path / HEAR_AUDIO_FOLDER
    files = scan_audio_folder(hear_audio if hear_audio.is_dir() else path).paths
    if not files:
        raise MissingFileError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return files


def read_manifest(path: str | Path, column: str = "path") -> list[Path]:
    """Paths listed in a CSV (header with a `path` column) or JSONL (`{"path": ...}` lines).

    Relative paths are resolved against the manifest's folder. Order is kept.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        entries = _manifest_jsonl(path, column)
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise InputError(f"{path}: no {column!r} column (columns: {reader.fieldnames})")
            entries = [row[column] for row in reader if row[column]]
    else:
        raise InputError(f"{path}: a manifest must be .csv, .tsv or .jsonl")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _manifest_jsonl(path: Path, column: str) -> list[str]:
    entries: list[str] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict) or column not in row:
                raise InputError(f"{path}:{lineno}: no {column!r} field")
            entries.append(str(row[column]))
    return entries


# --------------------------------------------------------------------------------------------
# Cutting long files into clips
# --------------------------------------------------------------------------------------------
def clip_bounds(frames: int, clip_frames: int) -> list[tuple[int, int]]:
    """(start, stop) frames of the clips of a `frames`-long file: the whole file when it fits
    in `clip_frames`, else ceil(frames / clip_frames) nearly equal consecutive clips."""
    if frames <= clip_frames:
        return [(0, features.WHOLE)]
    n = -(-frames // clip_frames)
    return [(k * frames // n, (k + 1) * frames // n) for k in range(n)]


def plan_clips(
    paths: Sequence[str | Path], clip_seconds: float | None
) -> Iterator[tuple[str, int, int, int]]:
    """(path, start, stop, sample rate) of every clip; stop is `features.WHOLE` for a whole file.

    Only the headers are read. A file whose header cannot be read is one whole-file clip, so
    that it is reported as bad where it is loaded (as any other bad file)."""
    import soundfile as sf

    for path in map(str, paths):
        if not clip_seconds:
            yield path, 0, features.WHOLE, 0
            continue
        try:
            info = sf.info(path)
            frames, sr = int(info.frames), int(info.samplerate)
        except Exception:  # soundfile raises several types; the load reports it
            yield path, 0, features.WHOLE, 0
            continue
        clip_frames = max(1, int(round(clip_seconds * sr)))
        for start, stop in clip_bounds(frames, clip_frames):
            yield path, start, stop, sr


class FileSource(ClipSource):
    """Audio files decoded with soundfile (resampled to 16 kHz, mono); files longer than
    `clip_seconds` are cut into clips (None or 0: every file is one clip, no header read)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        sample_rate: int = features.SAMPLE_RATE,
        clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.skipped = list(skipped)
        ids = {p: i for i, p in enumerate(self.paths)}
        plan = list(plan_clips(self.paths, clip_seconds))
        # Arrays, not tuples: millions of items stay compact and cheap to send to workers.
        self.file_id = np.asarray([ids[p] for p, *_ in plan], dtype=np.int64)
        self.start = np.asarray([c[1] for c in plan], dtype=np.int64)
        self.stop = np.asarray([c[2] for c in plan], dtype=np.int64)
        self.rate = np.asarray([c[3] for c in plan], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.file_id)

    def _clip(self, index: int) -> tuple[str, int, int, int]:
        path = self.paths[int(self.file_id[index])]
        return path, int(self.start[index]), int(self.stop[index]), int(self.rate[index])

    def name(self, index: int) -> str:
        return features.clip_name(*self._clip(index))

    def file(self, index: int) -> str:
        return self.paths[int(self.file_id[index])]

    def load(self, index: int) -> tuple[str, np.ndarray]:
        path, start, stop, _ = self._clip(index)
        return "audio", features.load_audio(path, self.sample_rate, start=start, stop=stop)
