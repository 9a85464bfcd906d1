"""Audio files as pretraining clips: finding them, listing folders and manifests, and cutting
long files into clips that are read by seeking (never the whole file).

A file up to `clip_seconds` long is one clip, read whole. A longer file is listed once with its
frame count (`soundfile.info`, or a manifest's `frames` and `sample_rate` columns) and cut into
ceil(frames / clip_frames) nearly equal clips (none longer than `clip_seconds`, no short tail);
each clip is its own item, named `<path>#t=<start>,<end>` (seconds, media-fragment style,
`features.clip_name`), and read by `features.load_audio` with its `start`/`stop` frames.

Listings are `FileIndex` arrays (`mwmae.data.index`), saved and reused by `sources.prepare_index`
so that millions of headers are read once, not at every launch.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mwmae import features
from mwmae.data.clips import ClipSource
from mwmae.data.index import FileIndex, folder_prefix
from mwmae.errors import InputError, MissingFileError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# Files up to this long are one clip (as before long-file support); longer ones are cut.
DEFAULT_CLIP_SECONDS = 60.0
HEAR_AUDIO_FOLDER = "16000"  # a HEAR task's audio at 16 kHz, one folder per split
# Optional manifest columns: each file's frame count and sample rate (then no header is read).
MANIFEST_COLUMNS = ("frames", "sample_rate")


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


def _is_audio_name(name: str) -> bool:
    """`Path(name).suffix.lower() in AUDIO_EXTENSIONS`, without making a Path."""
    dot = name.rfind(".")
    return 0 < dot < len(name) - 1 and name[dot:].lower() in AUDIO_EXTENSIONS


def _walk(folder: str, prefix: str) -> Iterator[tuple[os.DirEntry, str]]:
    """(entry, path) of everything below `folder`, in `sorted(Path(folder).rglob("*"))` order
    (depth first, names sorted, a folder before what it holds), not following symbolic links
    to folders and passing over folders that cannot be listed, as rglob does."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except PermissionError:
        return
    for entry in entries:
        path = prefix + entry.name
        yield entry, path
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(entry.path, path + "/")


def _usable(entry: os.DirEntry, path: str) -> tuple[os.stat_result | None, str | None]:
    """(stat, None) of a readable regular file, else (None, `unusable_reason`), one stat."""
    try:
        st = entry.stat()
    except OSError:
        return None, unusable_reason(Path(path))  # broken link (or a race): today's checks
    if stat.S_ISDIR(st.st_mode):
        return None, "a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if not os.access(path, os.R_OK):
        return None, "not readable (permissions)"
    return st, None


def list_audio_folder(folder: str | Path) -> FileIndex:
    """`scan_audio_folder` as a `FileIndex` (paths relative to the folder, sizes and
    modification times; headers not read): one stat per file, no per-file Path objects."""
    root = Path(folder)
    if not root.is_dir():
        raise MissingFileError(f"{root}: not a directory")
    prefix = folder_prefix(str(root))
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    skipped: list[tuple[str, str]] = []
    for entry, path in _walk(str(root), prefix):
        if not _is_audio_name(entry.name):
            continue
        st, reason = _usable(entry, path)
        if st is None:
            skipped.append((path, str(reason)))
            continue
        paths.append(path)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    if skipped:
        log.warning(
            "%d audio-named entries under %s are not readable files and are skipped: %s",
            len(skipped),
            root,
            "; ".join(f"{p} ({why})" for p, why in skipped[:20]),
        )
    return FileIndex.from_paths(paths, prefix, sizes, mtimes, skipped=skipped)


def scan_audio_folder(folder: str | Path) -> AudioListing:
    """Everything named like audio (`AUDIO_EXTENSIONS`) below `folder`, recursive and sorted,
    split into usable files and skipped entries."""
    index = list_audio_folder(folder)
    return AudioListing(paths=list(map(Path, index.paths)), skipped=index.skipped)


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


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------
def resolve_entry(base: str, entry: str) -> str:
    """`str(Path(entry) if absolute else Path(base) / entry)` for a normalised `base`, by
    string joins where pathlib would change nothing (millions of entries)."""
    plain = (
        entry
        and "//" not in entry
        and "/./" not in entry
        and not entry.startswith("./")
        and not entry.endswith(("/", "/."))
        and entry != "."
    )
    if not plain:
        return str(Path(base) / entry)
    if entry.startswith("/"):
        return entry
    return folder_prefix(base) + entry


def read_manifest(path: str | Path, column: str = "path") -> list[Path]:
    """Paths listed in a CSV (header with a `path` column) or JSONL (`{"path": ...}` lines).

    Relative paths are resolved against the manifest's folder. Order is kept.
    """
    return list(map(Path, list_manifest(path, column).paths))


def list_manifest(path: str | Path, column: str = "path") -> FileIndex:
    """The files a manifest lists (`read_manifest`) as a `FileIndex` relative to its folder
    where they all lie below it. With `frames` and `sample_rate` columns (`MANIFEST_COLUMNS`:
    each file's frame count and rate, as `soundfile.info` gives them) the index is complete and
    no header is ever read; without, sizes and modification times are not read yet
    (`stat_files`)."""
    path = Path(path)
    entries, extra = _manifest_columns(path, column)
    base = str(path.parent)
    paths = [resolve_entry(base, e) for e in entries]
    index = FileIndex.from_paths(paths, folder_prefix(base))
    if extra:
        index.frames, index.rate = _header_columns(path, entries, extra)
    return index


def stat_files(index: FileIndex) -> FileIndex:
    """Fill the sizes and modification times of `index` (-1 for a file that cannot be
    stat'ed: reading it reports why)."""
    for i, path in enumerate(index.paths):
        try:
            st = os.stat(path)
        except OSError:
            continue
        index.size[i], index.mtime_ns[i] = st.st_size, st.st_mtime_ns
    return index


def _manifest_columns(path: Path, column: str) -> tuple[list[str], dict[str, list]]:
    """The `column` entries of a manifest and its `MANIFEST_COLUMNS` (both or none)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        entries, extra = _manifest_jsonl(path, column)
    elif suffix in (".csv", ".tsv"):
        entries, extra = _manifest_csv(path, column, "\t" if suffix == ".tsv" else ",")
    else:
        raise InputError(f"{path}: a manifest must be .csv, .tsv or .jsonl")
    if len(extra) == 1:
        raise InputError(
            f"{path}: a manifest gives each file's {' and '.join(MANIFEST_COLUMNS)} together "
            f"(it has only {next(iter(extra))!r})"
        )
    return entries, extra


def _manifest_csv(path: Path, column: str, delimiter: str) -> tuple[list[str], dict[str, list]]:
    # csv.reader by column (as DictReader reads it: the last column of that name, rows
    # without a value skipped), not a dict per row
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None or column not in header:
            raise InputError(f"{path}: no {column!r} column (columns: {header})")
        at = {name: len(header) - 1 - header[::-1].index(name) for name in header}
        names = [name for name in MANIFEST_COLUMNS if name in at]
        entries: list[str] = []
        extra: dict[str, list] = {name: [] for name in names}
        col = at[column]
        for row in reader:
            if len(row) <= col or not row[col]:
                continue
            entries.append(row[col])
            for name in names:
                extra[name].append(row[at[name]] if len(row) > at[name] else "")
    return entries, extra


def _manifest_jsonl(path: Path, column: str) -> tuple[list[str], dict[str, list]]:
    entries: list[str] = []
    extra: dict[str, list] | None = None
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
            if extra is None:  # the first row says which columns the manifest has
                extra = {name: [] for name in MANIFEST_COLUMNS if name in row}
            for name, values in extra.items():
                if name not in row:
                    raise InputError(f"{path}:{lineno}: no {name!r} field")
                values.append(row[name])
    return entries, extra or {}


def _whole_number(value: object) -> int:
    if isinstance(value, str):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(value)


def _header_columns(
    path: Path, entries: list[str], extra: dict[str, list]
) -> tuple[np.ndarray, np.ndarray]:
    """The `frames` (>= 0) and `sample_rate` (> 0) columns as int64 arrays."""
    frames, rates = (
        _whole_numbers(path, entries, extra[name], name, least)
        for name, least in zip(MANIFEST_COLUMNS, (0, 1), strict=True)
    )
    return frames, rates


def _whole_numbers(
    path: Path, entries: list[str], values: list, name: str, least: int
) -> np.ndarray:
    """`values` as int64; an InputError names the first entry whose value is not a whole
    number >= `least`."""
    try:
        array = np.fromiter(map(_whole_number, values), np.int64, len(values))
        if bool((array >= least).all()):
            return array
    except (ValueError, TypeError, OverflowError):
        pass
    i = next(i for i, v in enumerate(values) if not _is_whole(v, least))
    raise InputError(
        f"{path}: {entries[i]}: {name} must be a whole number >= {least}, got {values[i]!r}"
    )


def _is_whole(value: object, least: int) -> bool:
    try:
        return _whole_number(value) >= least
    except (ValueError, TypeError, OverflowError):
        return False


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


def cut_clips(
    frames: np.ndarray, rates: np.ndarray, clip_seconds: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(file id, start, stop, sample rate) int64 arrays of the clips of files of `frames`
    frames at `rates`: `clip_bounds` of each file with clips of `clip_seconds`, in file order,
    in array operations (millions of files). A file of unknown length (`frames` < 0) or
    any file when `clip_seconds` is None or 0 is one whole-file clip of rate 0."""
    known = frames >= 0 if clip_seconds else np.zeros(len(frames), dtype=bool)
    clip_frames = np.maximum(1, np.rint(float(clip_seconds or 0) * rates).astype(np.int64))
    count = np.where(known & (frames > clip_frames), -(-frames // clip_frames), 1)
    file_id = np.repeat(np.arange(len(frames), dtype=np.int64), count)
    first = np.cumsum(count) - count  # each file's first clip
    k = np.arange(len(file_id), dtype=np.int64) - first[file_id]
    n, length = count[file_id], frames[file_id]
    cut = n > 1
    start = np.where(cut, k * length // np.maximum(n, 1), 0)
    stop = np.where(cut, (k + 1) * length // np.maximum(n, 1), features.WHOLE)
    return file_id, start, stop, np.where(known, rates, 0)[file_id]


def plan_clips(
    paths: Sequence[str | Path], clip_seconds: float | None
) -> Iterator[tuple[str, int, int, int]]:
    """(path, start, stop, sample rate) of every clip; stop is `features.WHOLE` for a whole file.

    Only the headers are read. A file whose header cannot be read is one whole-file clip, so
    that it is reported as bad where it is loaded (as any other bad file)."""
    index = FileIndex.from_paths(map(str, paths))
    if clip_seconds:
        index.read_headers()
    clips = cut_clips(index.frames, index.rate, clip_seconds)
    for file_id, start, stop, rate in zip(*(c.tolist() for c in clips), strict=True):
        yield index.paths[file_id], start, stop, rate


class FileSource(ClipSource):
    """Audio files decoded with soundfile (resampled to 16 kHz, mono); files longer than
    `clip_seconds` are cut into clips (None or 0: every file is one clip, no header read).

    `paths` may be a `FileIndex` (`mwmae.data.index`; then only the headers it lacks are
    read). Every field is an array (the paths one `PathTable`): millions of clips stay compact,
    and forked DataLoader workers touch no per-clip Python objects."""

    def __init__(
        self,
        paths: Sequence[str | Path] | FileIndex,
        sample_rate: int = features.SAMPLE_RATE,
        clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        index = paths if isinstance(paths, FileIndex) else FileIndex.from_paths(map(str, paths))
        if clip_seconds:
            index.read_headers()
        self.paths = index.paths
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.skipped = list(skipped or index.skipped)
        self.file_id, self.start, self.stop, self.rate = cut_clips(
            index.frames, index.rate, clip_seconds
        )

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
