"""Pretraining data from a user's audio: folders, CSV/JSONL manifests and WebDataset-style tar
shards (`files`, `shards`, `sources`; `index`: the saved file index of a folder or manifest),
the prepared format read at GPU rate (`prepared`, written with the other shard contents by
`prepare`), crops read alone (`crops`), checked reads of shard bytes (`binary`), the log-mel
cache (`melcache`), the dataset of normalised random crops (`dataset`) and the deterministic
sampler, loader and way to the device (`sampler`). Every clip goes through the front end in
`mwmae.features`. The built-in synthetic data lives in `mwmae.builtin`."""

from mwmae.data.clips import CLIP_ERRORS, ClipSource, SubsetSource
from mwmae.data.crops import CropReader, CropSource, crops_to_spec
from mwmae.data.dataset import PretrainDataset, collate_clips, compute_dataset_stats
from mwmae.data.files import (
    AUDIO_EXTENSIONS,
    DEFAULT_CLIP_SECONDS,
    AudioListing,
    FileSource,
    clip_bounds,
    find_audio_files,
    read_manifest,
    scan_audio_folder,
)
from mwmae.data.index import FileIndex
from mwmae.data.melcache import MelCache, build_mel_cache
from mwmae.data.prepare import write_shards
from mwmae.data.prepared import PreparedSource, is_prepared_shard
from mwmae.data.sampler import EpochBatchSampler, device_batches, make_loader
from mwmae.data.shards import (
    SHARD_EXTENSIONS,
    SHARD_INDEX_NAME,
    ShardSource,
    find_shards,
    index_shard,
    scan_shard,
    shard_index_path,
    write_shard_index,
)
from mwmae.data.sources import build_source, detect_kind, prepare_index, scan_sources
from mwmae.features import clip_file

__all__ = [
    "AUDIO_EXTENSIONS",
    "CLIP_ERRORS",
    "DEFAULT_CLIP_SECONDS",
    "SHARD_EXTENSIONS",
    "SHARD_INDEX_NAME",
    "AudioListing",
    "ClipSource",
    "CropReader",
    "CropSource",
    "EpochBatchSampler",
    "FileIndex",
    "FileSource",
    "MelCache",
    "PreparedSource",
    "PretrainDataset",
    "ShardSource",
    "SubsetSource",
    "build_mel_cache",
    "build_source",
    "clip_bounds",
    "clip_file",
    "collate_clips",
    "compute_dataset_stats",
    "crops_to_spec",
    "detect_kind",
    "device_batches",
    "find_audio_files",
    "find_shards",
    "index_shard",
    "is_prepared_shard",
    "make_loader",
    "prepare_index",
    "read_manifest",
    "scan_audio_folder",
    "scan_shard",
    "scan_sources",
    "shard_index_path",
    "write_shard_index",
    "write_shards",
]
