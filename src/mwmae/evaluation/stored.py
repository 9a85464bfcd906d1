"""Embedded tasks on disk: a split read back (mwmae's layout or heareval's), verified, at a cost
bounded by the files' sizes; and heareval's layout written (`export_heareval`).

mwmae's layout is written by `mwmae.evaluation.embed`; its `<split>.done.json`, written last,
records the size and SHA-256 of each other file of the split (`file_record`), so that a file
truncated or changed afterwards is re-embedded by `embed` and named by `evaluate`. Reading
allocates nothing a file only declares: an `.npy` header is checked against the bytes present
before the array is, and so are the lengths and memo indices of a label pickle before it is
unpickled. Complex, object and structured arrays are refused by name, and so are embeddings
that hold NaN or Inf (naming the task, split and row).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mwmae._io import atomic_write_bytes, sha256_file
from mwmae.errors import (
    InputError,
    IntegrityError,
    MissingFileError,
    NonFiniteError,
    reraise_as_output_errors,
)
from mwmae.evaluation.tasks import (
    TaskError,
    TaskMetadata,
    load_metadata,
    read_label_vocabulary,
    read_task_json,
    write_label_vocabulary,
)


@dataclass
class SplitEmbeddings:
    embeddings: np.ndarray  # (rows, D) float32
    labels: list[list[str]]  # per row
    filenames: list[str]  # per row (the file the row/frame belongs to)
    timestamps: np.ndarray | None  # (rows,) ms, event tasks only
    events: dict[str, list[dict]] | None  # reference events per file, event tasks only


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode())


def split_done(task_out: Path, split: str) -> bool:
    return (task_out / f"{split}.done.json").is_file()


# --------------------------------------------------------------------------------------------
# Recorded outputs
# --------------------------------------------------------------------------------------------
def file_record(path: Path) -> dict[str, Any]:
    """What `changed_files` compares a file with later: its size and SHA-256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def changed_files(folder: Path, records: dict[str, Any]) -> list[str]:
    """Each recorded file of `folder` that is missing or differs from its record, described
    (its size is compared first: a truncated file is not read)."""
    changed = []
    for name, record in records.items():
        path = folder / name
        if not isinstance(record, dict) or not path.is_file():
            changed.append(f"{path} (missing)")
        elif path.stat().st_size != record.get("bytes"):
            size, recorded = path.stat().st_size, record.get("bytes")
            changed.append(f"{path} ({size:,} bytes, {recorded!r} when it was written)")
        elif sha256_file(path) != record.get("sha256"):
            changed.append(f"{path} (its SHA-256 differs from the recorded one)")
    return changed


def recorded_outputs(task_out: Path, split: str) -> dict[str, Any] | None:
    """The output records of a split's `.done.json` (None for a split embedded before they
    were kept, or an unreadable marker: then `embed` re-embeds it)."""
    try:
        done = read_task_json(task_out / f"{split}.done.json")
    except TaskError:
        return None
    outputs = done.get("outputs") if isinstance(done, dict) else None
    return outputs if isinstance(outputs, dict) else None


# --------------------------------------------------------------------------------------------
# Bounded readers
# --------------------------------------------------------------------------------------------
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 10_000  # bytes: numpy's own limit for files it does not trust


def _npy_header(fh: BinaryIO, path: Path, size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a `.npy` header, read only once its declared length
    is known to fit the file."""
    lead = fh.read(12)
    if len(lead) < 10 or lead[:6] != _NPY_MAGIC or lead[6:8] not in (b"\x01\x00", b"\x02\x00"):
        raise IntegrityError(f"{path}: not a .npy file (format 1.0 or 2.0)")
    start = 10 if lead[6] == 1 else 12
    length = int.from_bytes(lead[8:start], "little")
    if length > min(_MAX_NPY_HEADER, size - start):
        raise IntegrityError(
            f"{path}: its .npy header declares {length:,} bytes, the file holds {size - start:,} "
            "after it (truncated or damaged)"
        )
    fh.seek(8)
    fmt = np.lib.format
    reader = fmt.read_array_header_1_0 if lead[6] == 1 else fmt.read_array_header_2_0
    try:
        shape, fortran, dtype = reader(fh)
    except (ValueError, TypeError, SyntaxError, RecursionError) as exc:  # a malformed header
        reason = " ".join(str(exc).split())
        raise IntegrityError(f"{path}: unreadable .npy header ({reason[:200]})") from None
    if any(d < 0 for d in shape):
        raise IntegrityError(f"{path}: its .npy header declares the shape {shape}")
    return shape, fortran, dtype


def _refuse_unreal(dtype: np.dtype, path: Path) -> None:
    """Embeddings are real numbers: complex, object, structured and other arrays are refused
    by name (a complex array used to be read as its real part)."""
    if dtype.kind in "fiu" and dtype.names is None:
        return
    if dtype.names is not None:
        kind = "a structured"
    elif dtype.hasobject:
        kind = "an object"
    else:
        kind = {"c": "a complex"}.get(dtype.kind, "a non-numeric")
    raise InputError(f"{path}: {kind} array ({dtype}); embeddings must be real numbers")


def read_npy(path: Path) -> np.ndarray:
    """A `.npy` file's real-valued array (no pickle). Its header is checked against the bytes
    present before anything is allocated: `IntegrityError` naming the file when it is truncated
    or not `.npy`, `InputError` for complex, object and structured arrays."""
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    size = path.stat().st_size
    with path.open("rb") as fh:
        shape, fortran, dtype = _npy_header(fh, path, size)
        _refuse_unreal(dtype, path)
        count = math.prod(shape)
        declared, held = count * dtype.itemsize, size - fh.tell()
        if declared != held:
            raise IntegrityError(
                f"{path}: its header declares a {shape} {dtype} array ({declared:,} bytes), "
                f"the file holds {held:,} (truncated or damaged)"
            )
        data = np.fromfile(fh, dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran else "C")


class _LabelsOnlyUnpickler(pickle.Unpickler):
    """Reads heareval's target-labels.pkl (lists of label strings/numbers) and nothing else:
    any class or function reference in the pickle is refused, so loading it runs no code."""

    def find_class(self, module: str, name: str) -> Any:
        raise TaskError(f"target-labels.pkl refers to {module}.{name}; only plain lists allowed")


def _check_pickle_sizes(data: bytes, path: Path) -> None:
    """Walk a pickle's opcodes (building nothing): every declared length must fit the bytes
    present and every memo index follow the entries before it, since the unpickler allocates
    those before it reads them (a pickle declaring 2^40 bytes raised MemoryError)."""
    memo = 0
    try:
        for op, arg, pos in pickletools.genops(data):  # checks each length against the bytes
            if op.name == "FRAME" and arg > len(data) - pos:
                raise ValueError(f"a frame of {arg:,} bytes at byte {pos}")
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > memo:
                    raise ValueError(f"memo index {arg:,} after {memo:,} entries")
                memo = max(memo, arg + 1)
            memo += op.name == "MEMOIZE"
    except ValueError as exc:
        raise TaskError(f"{path}: not a readable label pickle ({exc})") from None


def read_label_pickle(path: Path, rows: int, vocabulary: int) -> list[list[str]]:
    """heareval's `<split>.target-labels.pkl`: `rows` lists of at most `vocabulary` labels
    (strings or numbers, returned as strings), read in memory bounded by the file's size; a
    class or function reference, a declared size past the bytes present or any other shape is
    a `TaskError` naming the file."""
    data = path.read_bytes()
    _check_pickle_sizes(data, path)
    try:
        raw = _LabelsOnlyUnpickler(io.BytesIO(data)).load()
    except TaskError:
        raise
    except Exception as exc:  # the unpickler reports damaged data several ways
        raise TaskError(f"{path}: not a readable label pickle ({type(exc).__name__})") from exc
    if not isinstance(raw, list):
        raise TaskError(f"{path}: expected a list of label lists, not {type(raw).__name__}")
    if len(raw) != rows:
        raise TaskError(f"{path}: {len(raw)} rows, expected {rows}")
    for i, row in enumerate(raw):
        if not isinstance(row, (list, tuple)) or len(row) > vocabulary:
            raise TaskError(f"{path}: row {i} is not a list of at most {vocabulary} labels")
        if not all(isinstance(lab, (str, int, float)) for lab in row):
            raise TaskError(f"{path}: row {i} holds a label that is not a string or number")
    return [[str(lab) for lab in row] for row in raw]


_FINITE_ROWS = 1 << 14  # rows per block: the check's temporaries stay small


def check_finite(emb: np.ndarray, where: str, row_names: Sequence[str]) -> None:
    """`NonFiniteError` naming `where` and the first row (and its file) holding NaN or Inf."""
    for start in range(0, len(emb), _FINITE_ROWS):
        ok = np.isfinite(emb[start : start + _FINITE_ROWS]).all(axis=1)
        if not ok.all():
            i = start + int(np.argmin(ok))
            raise NonFiniteError(
                f"{where}: row {i} (of {row_names[i]}) holds NaN or Inf; the model gave "
                "non-finite embeddings, which cannot be scored"
            )


# --------------------------------------------------------------------------------------------
# Reading a split back
# --------------------------------------------------------------------------------------------
def is_kit_split(task_out: Path, split: str) -> bool:
    """True if `split` is in heareval's embedding layout (see `export_heareval`)."""
    return all(
        (task_out / f"{split}.{suffix}").is_file()
        for suffix in ("embedding-dimensions.json", "embeddings.npy", "target-labels.pkl")
    )


def _kit_dims(path: Path) -> tuple[int, int]:
    dims = read_task_json(path)
    if (
        not isinstance(dims, list)
        or len(dims) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in dims)
        or dims[0] < 0
        or dims[1] < 1
    ):
        raise TaskError(f"{path}: expected [rows, dim], not {str(dims)[:100]}")
    return dims[0], dims[1]


def _load_kit_split(task_out: Path, split: str, event: bool) -> SplitEmbeddings:
    n, d = _kit_dims(task_out / f"{split}.embedding-dimensions.json")
    path = task_out / f"{split}.embeddings.npy"
    if path.stat().st_size != n * d * 4:
        raise TaskError(f"{path}: {path.stat().st_size} bytes, expected {n} x {d} float32 (raw)")
    emb = np.fromfile(path, dtype=np.float32).reshape(n, d)
    vocabulary = read_label_vocabulary(task_out / "labelvocabulary.csv")
    labels = read_label_pickle(task_out / f"{split}.target-labels.pkl", n, len(vocabulary))
    if not event:  # heareval keeps no file names for scene rows
        return SplitEmbeddings(emb, labels, [f"{split}#{i}" for i in range(n)], None, None)
    events = read_task_json(task_out / f"{split}.json")
    stamps = read_task_json(task_out / f"{split}.filename-timestamps.json")
    # heareval writes the path of its per-file embedding ("<dir>/<file>"): match by name.
    names = [f if f in events else Path(f).name for f, _ in stamps]
    ts = np.array([t for _, t in stamps], dtype=np.float64)
    return SplitEmbeddings(emb, labels, names, ts, events)


def _load_mwmae_split(task_out: Path, split: str, meta: TaskMetadata) -> SplitEmbeddings:
    done = read_task_json(task_out / f"{split}.done.json")  # a damaged marker: one line
    outputs = done.get("outputs") if isinstance(done, dict) else None
    changed = changed_files(task_out, outputs) if isinstance(outputs, dict) else []
    if changed:
        raise IntegrityError(
            f"{task_out}: split {split!r} changed after it was embedded (truncated, damaged or "
            f"edited): {'; '.join(changed)}; `mwmae embed` re-embeds it"
        )
    emb = read_npy(task_out / f"{split}.embeddings.npy")
    labels = read_task_json(task_out / f"{split}.labels.json")
    names = read_task_json(task_out / f"{split}.filenames.json")
    if emb.ndim != 2 or len(labels) != len(emb) or len(names) != len(emb):
        raise TaskError(
            f"{task_out}: split {split!r} has {emb.shape} embeddings, "
            f"{len(labels)} label rows, {len(names)} file rows"
        )
    if meta.embedding_type == "scene":
        return SplitEmbeddings(emb, labels, list(names), None, None)
    events = read_task_json(task_out / f"{split}.json")
    return SplitEmbeddings(
        emb,
        labels,
        [n for n, _ in names],
        np.array([t for _, t in names], dtype=np.float64),
        events,
    )


def load_split_embeddings(task_out: str | Path, split: str) -> SplitEmbeddings:
    """One split, from mwmae's layout (checked against the sizes and digests its `.done.json`
    records) or heareval's (what its embedding runner writes). Embeddings holding NaN or Inf
    are a `NonFiniteError` naming the task, split and row."""
    task_out = Path(task_out)
    done = split_done(task_out, split)
    if not done and not is_kit_split(task_out, split):
        raise TaskError(
            f"{task_out / (split + '.done.json')}: split {split!r} was not (completely) embedded"
        )
    meta = load_metadata(task_out)
    if done:
        loaded = _load_mwmae_split(task_out, split, meta)
    else:
        loaded = _load_kit_split(task_out, split, meta.embedding_type == "event")
    where = f"{task_out / (split + '.embeddings.npy')}: task {meta.task_name!r}, split {split!r}"
    check_finite(loaded.embeddings, where, loaded.filenames)
    return loaded


def iter_embedded_tasks(root: str | Path) -> Iterator[Path]:
    """`root` if it is an embedded task folder, else its embedded task sub-folders."""
    root = Path(root)
    if (root / "task_metadata.json").is_file():
        yield root
        return
    if not root.is_dir():
        raise TaskError(f"{root}: folder not found")
    found = False
    for p in sorted(root.iterdir()):
        if (p / "task_metadata.json").is_file():
            found = True
            yield p
    if not found:
        raise TaskError(f"{root}: no embedded task folder (with task_metadata.json) found")


def export_heareval(task_out: str | Path, dest: str | Path) -> Path:
    """Write one embedded task in the layout `heareval.predictions.runner` reads.

    heareval wants `<split>.embeddings.npy` as raw float32 bytes without a header,
    `<split>.embedding-dimensions.json`, `<split>.target-labels.pkl` (a pickled list of label
    lists: the only pickle this project writes; it reads one only through
    `read_label_pickle`, which refuses every class or function reference) and, for event tasks,
    `<split>.filename-timestamps.json` and `<split>.json`.
    """
    task_out, dest = Path(task_out), Path(dest)
    meta = load_metadata(task_out)
    vocab = read_label_vocabulary(task_out / "labelvocabulary.csv")
    with reraise_as_output_errors(dest):
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(task_out / "task_metadata.json", dest / "task_metadata.json")
        write_label_vocabulary(dest / "labelvocabulary.csv", vocab)
    for split in meta.splits:
        s = load_split_embeddings(task_out, split)
        with reraise_as_output_errors(dest):
            _write_kit_split(dest, split, s)
    return dest


def _write_kit_split(dest: Path, split: str, s: SplitEmbeddings) -> None:
    atomic_write_bytes(
        dest / f"{split}.embeddings.npy",
        np.ascontiguousarray(s.embeddings, dtype=np.float32).tobytes(),
    )
    atomic_write_json(dest / f"{split}.embedding-dimensions.json", list(s.embeddings.shape))
    atomic_write_bytes(dest / f"{split}.target-labels.pkl", pickle.dumps(s.labels))
    if s.events is not None:
        assert s.timestamps is not None
        atomic_write_json(
            dest / f"{split}.filename-timestamps.json",
            [[f, float(t)] for f, t in zip(s.filenames, s.timestamps, strict=True)],
        )
        atomic_write_json(dest / f"{split}.json", s.events)
