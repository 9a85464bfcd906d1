"""Choosing a pretraining data source: a folder of audio, a CSV/JSONL manifest or tar shards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mwmae.data.clips import ClipSource
from mwmae.data.files import (
    AUDIO_EXTENSIONS,
    DEFAULT_CLIP_SECONDS,
    AudioListing,
    FileSource,
    read_manifest,
    scan_audio_folder,
)
from mwmae.data.shards import SHARD_INDEX_NAME, ShardSource, find_shards
from mwmae.errors import ConfigError, InputError

_TAG_FRACTION = 0x5EED_0003  # keeps the subset's seed stream apart from the others


def detect_kind(source: str | Path | Sequence[str | Path]) -> str:
    """'folder', 'manifest' or 'shards' for a data source specification."""
    if isinstance(source, (list, tuple)):
        return "shards"
    path = Path(source)
    if path.is_dir():
        if (path / SHARD_INDEX_NAME).is_file() or (
            any(path.glob("*.tar"))
            and not any(p.suffix.lower() in AUDIO_EXTENSIONS for p in path.iterdir())
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


def build_source(
    source: str | Path | Sequence[str | Path],
    kind: str = "auto",
    fraction: float = 1.0,
    seed: int = 0,
    clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
) -> ClipSource:
    """A `ClipSource` for a folder, manifest or shards, optionally a seeded random `fraction`
    of its clips (kept in their original order). Audio files longer than `clip_seconds` are cut
    into clips (see `mwmae.data.files`)."""
    if kind == "auto":
        kind = detect_kind(source)
    if kind in ("folder", "manifest"):
        listing = scan_sources(source, kind)  # type: ignore[arg-type]
        src: ClipSource = FileSource(
            listing.paths, clip_seconds=clip_seconds, skipped=listing.skipped
        )
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
        src = src.subset(sorted(rng.permutation(n)[:keep].tolist()))
    return src
