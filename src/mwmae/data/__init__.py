"""Pretraining data from a user's audio: folders, CSV/JSONL manifests and WebDataset-style tar
shards (`files`, `shards`, `sources`), the dataset of normalised random crops (`dataset`) and
the deterministic sampler and loader (`sampler`). The built-in synthetic data lives in
`mwmae.builtin`."""

from mwmae.data.clips import ClipSource, SubsetSource
from mwmae.data.dataset import (
    PretrainDataset,
    attach_mel_cache,
    collate_clips,
    compute_dataset_stats,
)
from mwmae.data.files import (
    AUDIO_EXTENSIONS,
    DEFAULT_CLIP_SECONDS,
    AudioListing,
    FileSource,
    clip_bounds,
    clip_file,
    find_audio_files,
    read_clip,
    read_manifest,
    scan_audio_folder,
)
from mwmae.data.sampler import EpochBatchSampler, make_loader
from mwmae.data.shards import (
    SHARD_EXTENSIONS,
    SHARD_INDEX_NAME,
    ShardSource,
    find_shards,
    index_shard,
    scan_shard,
    shard_index_path,
    write_shard_index,
    write_shards,
)
from mwmae.data.sources import build_source, detect_kind, list_sources, scan_sources

__all__ = [
    "AUDIO_EXTENSIONS",
    "DEFAULT_CLIP_SECONDS",
    "SHARD_EXTENSIONS",
    "SHARD_INDEX_NAME",
    "AudioListing",
    "ClipSource",
    "EpochBatchSampler",
    "FileSource",
    "PretrainDataset",
    "ShardSource",
    "SubsetSource",
    "attach_mel_cache",
    "build_source",
    "clip_bounds",
    "clip_file",
    "collate_clips",
    "compute_dataset_stats",
    "detect_kind",
    "find_audio_files",
    "find_shards",
    "index_shard",
    "list_sources",
    "make_loader",
    "read_clip",
    "read_manifest",
    "scan_audio_folder",
    "scan_shard",
    "scan_sources",
    "shard_index_path",
    "write_shard_index",
    "write_shards",
]
