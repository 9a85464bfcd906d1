"""Choosing a pretraining data source: a folder of audio, a CSV/JSONL manifest or tar shards.

At corpus scale the start-up is `prepare_index` once (rank 0 under torchrun: it lists the data
and reads the headers of new or changed files only, see `mwmae.data.index`), then
`build_source(..., index=...)` on every rank with what it prepared or saved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mwmae.data.clips import ClipSource
from mwmae.data.files import (
    AUDIO_EXTENSIONS,
    DEFAULT_CLIP_SECONDS,
    AudioListing,
    FileSource,
    list_audio_folder,
    list_manifest,
    read_manifest,
    scan_audio_folder,
    stat_files,
)
from mwmae.data.index import FileIndex, load_index, refresh_index, source_prefix
from mwmae.data.shards import SHARD_INDEX_NAME, ShardSource, find_shards
from mwmae.errors import ConfigError, InputError

log = logging.getLogger(__name__)

_TAG_FRACTION = 0x5EED_0003  # keeps the subset's seed stream apart from the others


def detect_kind(source: str | Path | Sequence[str | Path]) -> str:
    """'folder', 'manifest' or 'shards' for a data source specification."""
    if isinstance(source, (list, tuple)):
        return "shards"
    path = Path(source)
    if path.is_dir():
        if (path / SHARD_INDEX_NAME).is_file() or (
            not any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.iterdir())
            and any(path.glob("*.tar"))  # second: a folder of a million files has audio early
        ):
            return "shards"
        return "folder"
    name = path.name.lower()
    if name.endswith((".csv", ".tsv", ".jsonl", ".ndjson")):
        return "manifest"
    if name.endswith((".tar", ".json")) or any(ch in str(source) for ch in "*?["):
        return "shards"
    raise ConfigError(
        f"{source}: cannot tell the data source kind (folder of audio, .csv/.jsonl "
        f"manifest, or .tar shards); set data.kind"
    )


def scan_sources(source: str | Path, kind: str = "auto") -> AudioListing:
    """Audio files of a folder or manifest, with the folder's unusable audio-named entries."""
    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "folder":
        return scan_audio_folder(source)
    if kind == "manifest":
        return AudioListing(paths=read_manifest(source))
    raise InputError(f"{source}: expected a folder of audio files or a manifest, got {kind}")


def prepare_index(
    source: str | Path | Sequence[str | Path],
    kind: str = "auto",
    clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
    progress: bool = False,
) -> FileIndex | None:
    """The `FileIndex` of a folder or manifest, for `build_source(..., index=...)`: built once
    and saved (its `saved_at`) for the next start-up and the other ranks. A folder is listed
    (one stat per file); a manifest with `frames` and `sample_rate` columns is complete as it
    is (nothing read, nothing saved); a plain manifest's files are stat'ed (without
    `clip_seconds` it needs nothing either). Headers (with `clip_seconds`) are read only for
    files the saved index lacks or that changed (size or modification time). None for shards
    (they carry their own index)."""
    kind = detect_kind(source) if kind == "auto" else kind
    if kind == "shards":
        return None
    if kind == "folder":
        listing = list_audio_folder(source)  # type: ignore[arg-type]
    elif kind == "manifest":
        listing = list_manifest(source)  # type: ignore[arg-type]
        if not clip_seconds or not bool((listing.frames < 0).any()):
            return listing  # nothing to read
        stat_files(listing)
    else:
        raise ConfigError(f"unknown data kind {kind!r}: use auto, folder, manifest or shards")
    return refresh_index(listing, source, kind, bool(clip_seconds), progress)  # type: ignore[arg-type]


def _file_index(
    source: str | Path,
    kind: str,
    clip_seconds: float | None,
    index: FileIndex | str | Path | None,
) -> FileIndex:
    """`index` as given, read from where another process saved it, or prepared here."""
    if isinstance(index, FileIndex):
        return index
    if index is not None:
        loaded = load_index(index, kind, source_prefix(source, kind))
        if loaded is not None:
            return loaded
        log.warning("%s: the prepared clip index cannot be read; listing %s here", index, source)
    prepared = prepare_index(source, kind, clip_seconds)
    assert prepared is not None  # a folder or manifest
    return prepared


def build_source(
    source: str | Path | Sequence[str | Path],
    kind: str = "auto",
    fraction: float = 1.0,
    seed: int = 0,
    clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
    index: FileIndex | str | Path | None = None,
) -> ClipSource:
    """A `ClipSource` for a folder, manifest or shards, optionally a seeded random `fraction`
    of its clips (kept in their original order). Audio files longer than `clip_seconds` are cut
    into clips (see `mwmae.data.files`). `index` is the folder's or manifest's `FileIndex`
    (`prepare_index`) or where one was saved (`FileIndex.saved_at`, trusted as it is); without
    it the source is indexed here (`prepare_index`)."""
    if kind == "auto":
        kind = detect_kind(source)
    if kind in ("folder", "manifest"):
        files = _file_index(source, kind, clip_seconds, index)  # type: ignore[arg-type]
        src: ClipSource = FileSource(files, clip_seconds=clip_seconds)
    elif kind == "shards":
        src = ShardSource(find_shards(source))
    else:
        raise ConfigError(f"unknown data kind {kind!r}: use auto, folder, manifest or shards")
    if len(src) == 0:
        raise InputError(f"{source}: no clips found ({kind})")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        n = len(src)
        keep = max(1, int(round(n * fraction)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_FRACTION]))
        src = src.subset(np.sort(rng.permutation(n)[:keep]))
    return src
