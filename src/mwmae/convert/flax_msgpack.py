"""Flax msgpack checkpoints without Flax: read and write `flax.serialization` bytes.

The format (flax.serialization, as used by `flax.training.checkpoints` with Orbax off):

- the file is one msgpack map (a pytree of str-keyed maps; tuples and lists were turned into
  maps keyed "0", "1", ... before packing; None is nil);
- an ndarray is ExtType 1 whose payload is itself msgpack of (shape, dtype name, C-order bytes);
  a numpy scalar is ExtType 3 with the same payload; a Python complex is ExtType 2 (re, im);
- arrays larger than 2**30 bytes are split into a map {"__msgpack_chunked_array__": True,
  "shape": {...}, "chunks": {"0": flat part, ...}}.

Flax 0.7 with Orbax on writes a directory `checkpoint_<step>/` instead. Orbax keeps leaves
either in an aggregate msgpack file named `checkpoint` inside it (readable here) or in
Tensorstore (zarr / OCDBT) files, marked in the aggregate file by "PLACEHOLDER://" strings (not
readable without tensorstore: a clear `FlaxCheckpointError` says so).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from mwmae._io import atomic_writer
from mwmae.errors import IntegrityError

EXT_NDARRAY = 1
EXT_NATIVE_COMPLEX = 2
EXT_NPSCALAR = 3
CHUNKED_ARRAY_KEY = "__msgpack_chunked_array__"
MAX_CHUNK_BYTES = 2**30  # flax.serialization.MAX_CHUNK_SIZE
ORBAX_AGGREGATE_FILE = "checkpoint"  # the aggregate msgpack file inside an Orbax directory
ORBAX_PLACEHOLDER = "PLACEHOLDER://"
CHECKPOINT_PREFIX = "checkpoint_"
_READ_SIZE = 1 << 20


class FlaxCheckpointError(IntegrityError):
    """A file or directory that is not a (readable) Flax checkpoint; the message says why."""


# --------------------------------------------------------------------------------------------
# Arrays inside ExtType payloads
# --------------------------------------------------------------------------------------------
def _bfloat16_to_float32(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    # numpy has no bfloat16 (ml_dtypes is not a dependency): its bits are the top half of a
    # float32, so widening is exact.
    half = np.frombuffer(raw, dtype="<u2")
    return (half.astype("<u4") << 16).view("<f4").reshape(shape)


def _array_from_payload(payload: bytes) -> np.ndarray:
    try:
        shape, dtype_name, raw = msgpack.unpackb(payload, raw=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise FlaxCheckpointError(f"corrupt array record ({exc})") from exc
    name = dtype_name.decode() if isinstance(dtype_name, bytes) else str(dtype_name)
    shape = tuple(int(s) for s in shape)
    if name == "bfloat16":
        if len(raw) != 2 * int(np.prod(shape, dtype=np.int64)):
            raise FlaxCheckpointError(
                f"bfloat16 array record of {len(raw)} bytes does not fit shape {shape}"
            )
        return _bfloat16_to_float32(raw, shape)
    try:
        dtype = np.dtype(name)
    except TypeError as exc:
        raise FlaxCheckpointError(f"array with unsupported dtype {name!r}") from exc
    # msgpack carries no checksum: a damaged shape or dtype shows up as a length mismatch.
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise FlaxCheckpointError(
            f"array record of {len(raw)} bytes, but shape {shape} x {dtype} needs {expected} "
            "(corrupt file)"
        )
    # A bytes-backed view: read-only, no copy.
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _array_from_payload(data)
    if code == EXT_NPSCALAR:
        return _array_from_payload(data)[()]
    if code == EXT_NATIVE_COMPLEX:
        re_, im = msgpack.unpackb(data)
        return complex(re_, im)
    raise FlaxCheckpointError(f"unknown msgpack extension type {code}")


def _array_to_payload(arr: np.ndarray) -> bytes:
    if arr.dtype.hasobject:
        raise TypeError("object arrays cannot be stored in a Flax msgpack checkpoint")
    return msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes("C")), use_bin_type=True)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(EXT_NDARRAY, _array_to_payload(obj))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(EXT_NPSCALAR, _array_to_payload(np.asarray(obj)))
    if isinstance(obj, complex):
        return msgpack.ExtType(EXT_NATIVE_COMPLEX, msgpack.packb((obj.real, obj.imag)))
    raise TypeError(f"cannot store {type(obj).__name__} in a Flax msgpack checkpoint")


# --------------------------------------------------------------------------------------------
# Pytree normalisation (what flax.serialization.to_state_dict / _chunk do)
# --------------------------------------------------------------------------------------------
def _to_state_tree(tree: Any) -> Any:
    """Maps with str keys (sorted, as jax's tree_map leaves them), tuples/lists as "0".. maps,
    torch tensors as numpy, big arrays chunked."""
    if isinstance(tree, Mapping):
        return {str(k): _to_state_tree(tree[k]) for k in sorted(tree, key=str)}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_state_tree(v) for i, v in enumerate(tree)}
    if hasattr(tree, "detach") and hasattr(tree, "numpy"):  # a torch tensor
        tree = tree.detach().cpu().numpy()
    if isinstance(tree, np.ndarray):
        # (np.ascontiguousarray would turn a 0-d array into shape (1,))
        arr = tree if tree.flags.c_contiguous else tree.copy(order="C")
        if arr.nbytes > MAX_CHUNK_BYTES:
            return _chunk(arr)
        return arr
    return tree


def _chunk(arr: np.ndarray) -> dict[str, Any]:
    per_chunk = max(1, MAX_CHUNK_BYTES // arr.dtype.itemsize)
    flat = arr.reshape(-1)
    chunks = [flat[i : i + per_chunk] for i in range(0, flat.size, per_chunk)]
    return {
        CHUNKED_ARRAY_KEY: True,
        "shape": {str(i): int(s) for i, s in enumerate(arr.shape)},
        "chunks": {str(i): c for i, c in enumerate(chunks)},
    }


def _unchunk_in_place(tree: Any) -> Any:
    if isinstance(tree, dict):
        if CHUNKED_ARRAY_KEY in tree:
            try:
                shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
                chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
                return np.concatenate(chunks).reshape(shape)
            except (KeyError, TypeError, ValueError) as exc:
                raise FlaxCheckpointError(f"corrupt chunked array record ({exc})") from exc
        for k, v in tree.items():
            tree[k] = _unchunk_in_place(v)
    return tree


# --------------------------------------------------------------------------------------------
# Bytes <-> pytrees
# --------------------------------------------------------------------------------------------
def msgpack_restore(data: bytes) -> Any:
    """Bytes written by `flax.serialization.msgpack_serialize` -> nested dict of numpy arrays.

    Arrays are read-only views on the decoded buffers (copy before writing into them);
    bfloat16 arrays are widened to float32 (exact)."""
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except FlaxCheckpointError:
        raise
    except Exception as exc:
        raise FlaxCheckpointError(f"not a msgpack stream ({type(exc).__name__}: {exc})") from exc
    return _unchunk_in_place(tree)


def msgpack_serialize(tree: Any) -> bytes:
    """A pytree (nested maps / lists of numpy arrays, torch tensors, scalars, None) -> the bytes
    `flax.serialization.msgpack_restore` reads back."""
    return msgpack.packb(
        _to_state_tree(tree), default=_default, use_bin_type=True, strict_types=True
    )


def write_msgpack_file(tree: Any, path: str | Path) -> Path:
    """Serialise `tree` into `path` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        packer = msgpack.Packer(default=_default, use_bin_type=True, strict_types=True)
        # Top-level entries one by one, so the whole file never sits in memory as one bytes.
        state = _to_state_tree(tree)
        if isinstance(state, dict):
            fh.write(packer.pack_map_header(len(state)))
            for k, v in state.items():
                fh.write(packer.pack(k))
                fh.write(packer.pack(v))
        else:
            fh.write(packer.pack(state))
    return path


def read_msgpack_file(path: str | Path, keys: Collection[str] | None = None) -> Any:
    """Read a Flax msgpack file. With `keys`, only those top-level entries are decoded (the
    others, e.g. a large optimizer state, are skipped without being built); keys absent from
    the file are simply absent from the result."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise FlaxCheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise FlaxCheckpointError(f"{path}: cannot be read ({exc})") from exc
    with fh:
        head = fh.read(1)
        if not head:
            raise FlaxCheckpointError(f"{path}: empty file, not a Flax checkpoint")
        fh.seek(0)
        first = head[0]
        is_map = 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)
        # Every declared length is bounded by the file's size (each item takes a byte at
        # least): a header announcing 2^31 entries must not make the decoder allocate for them.
        size = os.fstat(fh.fileno()).st_size
        unpacker = msgpack.Unpacker(
            fh,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            max_buffer_size=0,
            read_size=_READ_SIZE,
            max_bin_len=size,
            max_str_len=size,
            max_ext_len=size,
            max_array_len=size,
            max_map_len=size,
        )
        try:
            if keys is None or not is_map:
                tree = unpacker.unpack()
            else:
                tree = {}
                for _ in range(unpacker.read_map_header()):
                    key = unpacker.unpack()
                    if key in keys:
                        tree[key] = unpacker.unpack()
                    else:
                        unpacker.skip()
            if unpacker.tell() != size:  # flax's msgpack_restore would refuse extra data too
                raise FlaxCheckpointError(
                    f"{size - unpacker.tell()} bytes of extra data after "
                    "the checkpoint (corrupt or concatenated file)"
                )
        except FlaxCheckpointError as exc:
            raise FlaxCheckpointError(f"{path}: {exc}") from exc
        except msgpack.OutOfData as exc:
            raise FlaxCheckpointError(
                f"{path}: truncated msgpack data, not a complete Flax checkpoint"
            ) from exc
        except Exception as exc:
            raise FlaxCheckpointError(
                f"{path}: not a Flax msgpack checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    if not isinstance(tree, dict):
        raise FlaxCheckpointError(
            f"{path}: not a Flax checkpoint (the msgpack data is a {type(tree).__name__}, "
            "expected a map of named collections)"
        )
    return _unchunk_in_place(tree)


# --------------------------------------------------------------------------------------------
# Locating checkpoints: run directories, single files, Orbax directories
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointLocation:
    """Where a checkpoint was found: `file` is the msgpack file to read (for Orbax directories,
    the aggregate `checkpoint` file inside); `step` as named by the file (None if unnamed)."""

    file: Path
    step: int | None
    kind: str  # "legacy" (one msgpack file) or "orbax" (aggregate file in a directory)
    run_dir: Path | None  # the directory holding config.json, if any


def _step_of(name: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)", name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | Path, prefix: str = CHECKPOINT_PREFIX) -> dict[int, Path]:
    """{step: path} for `<prefix><step>` files or directories (temporary files skipped)."""
    run_dir = Path(run_dir)
    found = {}
    for p in run_dir.iterdir():
        step = _step_of(p.name, prefix)
        if step is not None:
            found[step] = p
    return dict(sorted(found.items()))


def _orbax_aggregate(directory: Path) -> Path:
    agg = directory / ORBAX_AGGREGATE_FILE
    if agg.is_file():
        return agg
    names = sorted(p.name for p in directory.iterdir())
    tensorstore_markers = {"manifest.ocdbt", "_METADATA", "_CHECKPOINT_METADATA", "d"}
    if tensorstore_markers & set(names) or any((directory / n / ".zarray").exists() for n in names):
        raise FlaxCheckpointError(
            f"{directory}: an Orbax checkpoint stored with Tensorstore (zarr/OCDBT files "
            f"{names[:6]}), which cannot be read without tensorstore. In a JAX environment, "
            "re-save it as one msgpack file: state = flax.training.checkpoints."
            "restore_checkpoint(DIR, None); open(OUT, 'wb').write(flax.serialization."
            "msgpack_serialize(state)); then convert OUT."
        )
    raise FlaxCheckpointError(
        f"{directory}: no Flax checkpoint in this directory (found "
        f"{names[:10]}; expected {CHECKPOINT_PREFIX}<step> files, or an "
        f"Orbax directory holding a '{ORBAX_AGGREGATE_FILE}' file)"
    )


def locate_checkpoint(
    src: str | Path, step: int | None = None, prefix: str = CHECKPOINT_PREFIX
) -> CheckpointLocation:
    """Resolve SRC, as `flax.training.checkpoints.restore_checkpoint` would:

    - a file: that checkpoint;
    - a directory holding `<prefix><step>` entries (a run directory): the highest step, or
      `step`; each entry a legacy file or an Orbax directory;
    - an Orbax directory (holding a `checkpoint` file): that checkpoint.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    if src.is_file():
        if step is not None and _step_of(src.name, prefix) not in (None, step):
            raise FlaxCheckpointError(
                f"{src}: is the checkpoint of step {_step_of(src.name, prefix)}, not of step {step}"
            )
        run_dir = src.parent if (src.parent / "config.json").is_file() else None
        return CheckpointLocation(src, _step_of(src.name, prefix), "legacy", run_dir)
    steps = list_checkpoints(src, prefix)
    if steps:
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise FlaxCheckpointError(
                f"{src}: no checkpoint for step {step} (steps present: {list(steps)})"
            )
        entry = steps[step]
        if entry.is_dir():
            return CheckpointLocation(_orbax_aggregate(entry), step, "orbax", src)
        return CheckpointLocation(entry, step, "legacy", src)
    if step is not None and _step_of(src.name, prefix) not in (None, step):
        raise FlaxCheckpointError(
            f"{src}: is the checkpoint of step {_step_of(src.name, prefix)}, not of step {step}"
        )
    # An Orbax checkpoint directory given directly (its config.json, if any, is one level up).
    agg = _orbax_aggregate(src)
    run_dir = src.parent if (src.parent / "config.json").is_file() else None
    if (src / "config.json").is_file():
        run_dir = src
    return CheckpointLocation(agg, _step_of(src.name, prefix), "orbax", run_dir)


def _placeholders(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _placeholders(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(tree, str) and tree.startswith(ORBAX_PLACEHOLDER):
        yield prefix


def read_checkpoint(
    src: str | Path,
    step: int | None = None,
    keys: Collection[str] | None = None,
    prefix: str = CHECKPOINT_PREFIX,
) -> tuple[dict[str, Any], CheckpointLocation]:
    """Locate (see `locate_checkpoint`) and read a checkpoint -> (tree, location)."""
    loc = locate_checkpoint(src, step, prefix)
    tree = read_msgpack_file(loc.file, keys=keys)
    missing = list(_placeholders(tree))
    if missing:
        raise FlaxCheckpointError(
            f"{loc.file}: Orbax checkpoint whose arrays are stored with Tensorstore "
            f"({len(missing)} leaves, e.g. {missing[:3]}), which cannot be read without "
            "tensorstore. In a JAX environment re-save it as one msgpack file: state = flax."
            "training.checkpoints.restore_checkpoint(DIR, None); open(OUT, 'wb').write(flax."
            "serialization.msgpack_serialize(state))."
        )
    return tree, loc


# --------------------------------------------------------------------------------------------
# Tree helpers
# --------------------------------------------------------------------------------------------
def flatten_tree(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}. Empty maps are kept as leaves ({})."""
    flat: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{path}{sep}{k}" if path else str(k))
        else:
            flat[path] = node

    walk(tree, "")
    return flat


def unflatten_tree(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Inverse of `flatten_tree`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, last = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: {p} is both a leaf and a subtree")
        node[last] = value
    return tree


def tree_summary(tree: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per leaf: path, shape, dtype (arrays) or the value's type, and the size."""
    rows = []
    for path, v in flatten_tree(tree).items():
        if isinstance(v, np.ndarray):
            rows.append(
                {"path": path, "shape": list(v.shape), "dtype": v.dtype.name, "size": int(v.size)}
            )
        else:
            rows.append(
                {
                    "path": path,
                    "shape": None,
                    "dtype": type(v).__name__,
                    "size": 0,
                    "value": v if isinstance(v, (int, float, str)) else None,
                }
            )
    return rows
