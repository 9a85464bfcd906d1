"""Pretraining sources at corpus scale: the saved file index (used, refreshed, moved, broken),
manifests that carry frames and sample rates, and an index held in arrays."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mwmae import features
from mwmae.data import (
    AUDIO_EXTENSIONS,
    FileSource,
    build_source,
    clip_bounds,
    find_audio_files,
    prepare_index,
    read_manifest,
    scan_audio_folder,
)
from mwmae.data import index as file_index
from mwmae.data.files import cut_clips, list_manifest, resolve_entry, unusable_reason
from mwmae.data.index import INDEX_NAME, PathTable, index_locations
from mwmae.errors import InputError

SR = 16000


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path, monkeypatch):
    """Indexes that cannot be saved beside the data go to this test's folder, not ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def write_folder(folder: Path) -> Path:
    """Short files, one long enough to be cut at 2 s, a corrupt one, nested folders."""
    rng = np.random.default_rng(0)
    for i, (name, seconds) in enumerate(
        [("a.wav", 0.5), ("sub/b.flac", 1.5), ("sub/deeper/c.wav", 5.0), ("d.wav", 1.0)]
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        x = 0.2 * np.sin(np.arange(int(seconds * SR)) * (0.05 + 0.01 * i))
        sf.write(folder / name, (x + 0.01 * rng.standard_normal(x.size)).astype(np.float32), SR)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio")
    return folder


def clips_of(source) -> list[tuple[str, str]]:
    return [(source.name(i), source.file(i)) for i in range(len(source))]


class HeaderCount:
    """`soundfile.info` that counts its calls, or fails the test when `fail`."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.calls: list[str] = []
        real = sf.info

        def info(path, *args, **kwargs):
            if fail:
                pytest.fail(f"a header was read: {path}")
            self.calls.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(sf, "info", info)


# --------------------------------------------------------------------------------------------
# The saved index of a folder
# --------------------------------------------------------------------------------------------
def test_saved_index_is_used_on_the_second_build(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    first = build_source(folder, clip_seconds=2.0)
    assert (folder / INDEX_NAME).is_file()
    assert len(first) == 3 + 3 + 1  # c.wav (5 s) is cut into 3 clips of 2 s or less
    assert first.name(4).endswith("c.wav#t=0.000,1.667")
    HeaderCount(monkeypatch, fail=True)
    again = build_source(folder, clip_seconds=2.0)
    assert clips_of(again) == clips_of(first)
    # Another rank: reads the file rank 0 saved, without listing the folder.
    index = prepare_index(folder, clip_seconds=2.0)
    assert index is not None and index.saved_at == folder / INDEX_NAME
    monkeypatch.setattr(os, "scandir", lambda *a: pytest.fail("the folder was listed"))
    other = build_source(folder, clip_seconds=2.0, index=str(index.saved_at))
    assert clips_of(other) == clips_of(first)
    # The same clips as FileSource of the files, whose headers are all read.
    monkeypatch.undo()
    plain = FileSource(find_audio_files(folder), clip_seconds=2.0)
    assert clips_of(plain) == clips_of(first)


def test_saved_index_is_refreshed_when_a_file_changes_or_is_added(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    build_source(folder, clip_seconds=2.0)
    headers = HeaderCount(monkeypatch)
    # A changed file (other size): only its header is read again, and it is cut anew.
    sf.write(folder / "d.wav", np.zeros(int(4.5 * SR), np.float32) + 0.1, SR)
    changed = build_source(folder, clip_seconds=2.0)
    assert headers.calls == [str(folder / "d.wav")]
    assert [n for n, f in clips_of(changed) if f.endswith("d.wav")] == [
        f"{folder / 'd.wav'}#t={a:.3f},{b:.3f}" for a, b in ((0, 1.5), (1.5, 3), (3, 4.5))
    ]
    # The same size, another modification time.
    headers.calls.clear()
    stat = os.stat(folder / "a.wav")
    os.utime(folder / "a.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build_source(folder, clip_seconds=2.0)
    assert headers.calls == [str(folder / "a.wav")]
    # An added file; a removed one.
    headers.calls.clear()
    shutil.copy(folder / "a.wav", folder / "sub" / "e.wav")
    (folder / "sub" / "b.flac").unlink()
    grown = build_source(folder, clip_seconds=2.0)
    assert headers.calls == [str(folder / "sub" / "e.wav")]
    (folder / INDEX_NAME).unlink()
    assert clips_of(grown) == clips_of(build_source(folder, clip_seconds=2.0))
    # Nothing changed: nothing read.
    headers.calls.clear()
    build_source(folder, clip_seconds=2.0)
    assert headers.calls == []


def test_index_without_headers_is_completed_when_clips_are_cut(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    headers = HeaderCount(monkeypatch)
    whole = build_source(folder, clip_seconds=None)  # every file one clip: no header read
    assert headers.calls == [] and (folder / INDEX_NAME).is_file()
    assert len(whole) == 5
    cut = build_source(folder, clip_seconds=2.0)
    assert len(headers.calls) == 5 and len(cut) == 7


def test_index_of_a_moved_folder_is_kept(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    first = build_source(folder, clip_seconds=2.0)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    folder.rename(moved)  # sizes and modification times stay
    HeaderCount(monkeypatch, fail=True)
    again = build_source(moved, clip_seconds=2.0)
    assert clips_of(again) == [
        (n.replace(str(folder), str(moved)), f.replace(str(folder), str(moved)))
        for n, f in clips_of(first)
    ]
    monkeypatch.chdir(moved.parent)  # a relative spelling of the same folder
    assert clips_of(build_source("data", clip_seconds=2.0))[0] == ("data/a.wav", "data/a.wav")


def test_index_goes_to_the_cache_folder_when_the_data_folder_is_read_only(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    beside = folder / INDEX_NAME
    real_writer = file_index.atomic_writer

    def read_only(path, *args, **kwargs):
        if Path(path) == beside:
            raise PermissionError(13, "Permission denied", str(path))
        return real_writer(path, *args, **kwargs)

    monkeypatch.setattr(file_index, "atomic_writer", read_only)
    index = prepare_index(folder, clip_seconds=2.0)
    assert index is not None and not beside.exists()
    assert index.saved_at == index_locations(folder, "folder")[1]
    assert str(index.saved_at).startswith(str(tmp_path / "xdg" / "mwmae" / "index"))
    first = build_source(folder, clip_seconds=2.0, index=index)
    HeaderCount(monkeypatch, fail=True)
    assert clips_of(build_source(folder, clip_seconds=2.0)) == clips_of(first)


def test_broken_or_foreign_saved_index_is_rebuilt(tmp_path, monkeypatch, caplog):
    folder = write_folder(tmp_path / "data")
    first = build_source(folder, clip_seconds=2.0)
    (folder / INDEX_NAME).write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level("WARNING"):
        again = build_source(folder, clip_seconds=2.0)
    assert "unreadable clip index" in caplog.text and clips_of(again) == clips_of(first)
    with np.load(folder / INDEX_NAME) as saved:
        arrays = dict(saved)
    arrays["meta"] = np.frombuffer(json.dumps({"format": "x"}).encode(), dtype=np.uint8)
    with open(folder / INDEX_NAME, "wb") as fh:
        np.savez(fh, **arrays)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert clips_of(build_source(folder, clip_seconds=2.0)) == clips_of(first)
    assert "not a clip index of this version" in caplog.text
    # A prepared index that another rank cannot read: it indexes the folder itself.
    caplog.clear()
    with caplog.at_level("WARNING"):
        other = build_source(folder, clip_seconds=2.0, index=tmp_path / "gone.npz")
    assert clips_of(other) == clips_of(first) and "cannot be read" in caplog.text


def test_unusable_entries_travel_with_the_index(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    (folder / "x.wav").mkdir()
    (folder / "gone.flac").symlink_to(folder / "missing.flac")
    reasons = {
        str(folder / "gone.flac"): "broken symbolic link",
        str(folder / "x.wav"): "a directory, not a file",
    }
    assert dict(build_source(folder).skipped) == reasons
    index = prepare_index(folder)
    assert index is not None and dict(index.skipped) == reasons
    other = build_source(folder, index=str(index.saved_at))
    assert dict(other.skipped) == reasons
    (folder / "x.wav").rmdir()  # a listing change that only the skipped entries show
    assert dict(build_source(folder, index=prepare_index(folder)).skipped) == {
        str(folder / "gone.flac"): "broken symbolic link"
    }


# --------------------------------------------------------------------------------------------
# Listing: the same files in the same order as sorted(rglob) + unusable_reason
# --------------------------------------------------------------------------------------------
def reference_scan(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The listing as it was written before the walk (sorted rglob, then the checks)."""
    paths, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        reason = unusable_reason(path)
        if reason is None:
            paths.append(path)
        else:
            skipped.append((str(path), reason))
    return paths, skipped


def test_folder_walk_matches_sorted_rglob(tmp_path):
    root = tmp_path / "tree"
    names = [
        "a.wav", "a-b/x.wav", "a/x.wav", "a/y.FLAC", "A.wav", "b.ogg", ".hidden.wav", ".wav",
        "x.wav.", "c.mp3x", "é/ü.wav", "z/z/z/deep.wav", "aa..wav", "sp ace/q r.wav", "a.b/c.mp3",
    ]  # fmt: skip
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "dir.wav").mkdir()
    (root / "dir.wav" / "in.wav").write_bytes(b"x")
    (root / "broken.flac").symlink_to(root / "nope.flac")
    (root / "good_link.wav").symlink_to(root / "a.wav")
    (root / "linkdir").symlink_to(root / "a", target_is_directory=True)  # not followed
    os.mkfifo(root / "fifo.wav")
    if sys.platform.startswith("linux"):  # a name that is not UTF-8
        (root / os.fsdecode(b"\xff\xfe.wav")).write_bytes(b"x")
    paths, skipped = reference_scan(root)
    listing = scan_audio_folder(root)
    assert listing.paths == paths and listing.skipped == skipped
    assert len(paths) == 15 and {why for _, why in skipped} == {
        "broken symbolic link",
        "a directory, not a file",
        "not a regular file",
    }
    assert [str(p) for p in paths] == list(prepare_index(root, clip_seconds=None).paths)


def test_path_table_round_trips_and_factors_its_prefix():
    strings = ["/d/a.wav", "/d/sub/é.flac", "/d/" + os.fsdecode(b"\xff.wav"), "/d/x"]
    table = PathTable.from_strings(strings, "/d/")
    assert table.prefix == "/d/" and list(table) == strings and len(table) == 4
    assert [table[i] for i in range(-4, 4)] == strings + strings
    assert table.parts()[1] == "sub/é.flac".encode()
    with pytest.raises(IndexError):
        table[4]
    whole = PathTable.from_strings([*strings, "elsewhere.wav"], "/d/")
    assert whole.prefix == "" and list(whole) == [*strings, "elsewhere.wav"]


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------
def test_resolve_entry_equals_pathlib():
    rng = np.random.default_rng(0)
    alphabet = ["a", "b", ".", "..", "/", "//", "é"]
    bases = [".", "/", "meta", "/data/meta", "a/b", "//net"]
    for _ in range(3000):
        entry = "".join(rng.choice(alphabet, size=rng.integers(0, 7)))
        base = str(rng.choice(bases))
        assert resolve_entry(base, entry) == str(Path(base) / entry), (base, entry)


def write_manifests(folder: Path, tmp_path: Path) -> dict[str, Path]:
    """The same files as plain and frames/sample_rate CSV and JSONL manifests (relative)."""
    files = find_audio_files(folder)
    rel = [os.path.relpath(p, tmp_path) for p in files]
    infos = []
    for p in files:
        try:
            info = sf.info(str(p))
            infos.append((info.frames, info.samplerate))
        except Exception:
            infos.append((0, SR))  # the corrupt file: a bad clip either way
    out = {
        "plain.csv": "path,label\n" + "".join(f"{r},x\n" for r in rel),
        "full.csv": "label,path,sample_rate,frames\n"
        + "".join(f"x,{r},{sr},{n}\n" for r, (n, sr) in zip(rel, infos, strict=True)),
        "full.jsonl": "".join(
            json.dumps({"path": r, "frames": n, "sample_rate": sr}) + "\n"
            for r, (n, sr) in zip(rel, infos, strict=True)
        ),
    }
    for name, text in out.items():
        (tmp_path / name).write_text(text)
    return {name: tmp_path / name for name in out}


def test_manifest_with_frames_reads_no_header_and_gives_the_same_clips(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    manifests = write_manifests(folder, tmp_path)
    plain = clips_of(build_source(manifests["plain.csv"], clip_seconds=2.0))
    assert len(plain) == 7
    HeaderCount(monkeypatch, fail=True)
    for name in ("full.csv", "full.jsonl"):
        index = prepare_index(manifests[name], clip_seconds=2.0)
        assert index is not None and index.saved_at is None  # complete: nothing to save
        assert clips_of(build_source(manifests[name], clip_seconds=2.0)) == plain
        assert not (tmp_path / f".{name}{INDEX_NAME}").exists()
    assert read_manifest(manifests["full.csv"]) == read_manifest(manifests["plain.csv"])


def test_plain_manifest_index_is_saved_and_refreshed(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "data")
    manifest = write_manifests(folder, tmp_path)["plain.csv"]
    first = build_source(manifest, clip_seconds=2.0)
    assert (tmp_path / f".plain.csv{INDEX_NAME}").is_file()
    headers = HeaderCount(monkeypatch)
    assert clips_of(build_source(manifest, clip_seconds=2.0)) == clips_of(first)
    assert headers.calls == []
    sf.write(folder / "a.wav", np.full(3 * SR, 0.1, np.float32), SR)
    assert len(build_source(manifest, clip_seconds=2.0)) == len(first) + 1
    assert headers.calls == [str(folder / "a.wav")]
    headers.calls.clear()
    assert len(build_source(manifest, clip_seconds=None)) == 5 and headers.calls == []


def test_manifest_frame_columns_are_checked(tmp_path):
    def manifest(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text)
        return tmp_path / name

    with pytest.raises(InputError, match="frames and sample_rate together"):
        list_manifest(manifest("one.csv", "path,frames\na.wav,10\n"))
    with pytest.raises(InputError, match=r"b\.wav: frames must be a whole number >= 0, got 'x'"):
        list_manifest(manifest("bad.csv", "path,frames,sample_rate\na.wav,1,2\nb.wav,x,2\n"))
    with pytest.raises(InputError, match=r"a\.wav: sample_rate must be a whole number >= 1"):
        list_manifest(manifest("zero.csv", "path,frames,sample_rate\na.wav,1,0\n"))
    with pytest.raises(InputError, match="frames must be a whole number >= 0, got -1"):
        list_manifest(manifest("neg.jsonl", '{"path": "a", "frames": -1, "sample_rate": 8}\n'))
    with pytest.raises(InputError, match=r"got 1\.5"):
        list_manifest(manifest("f.jsonl", '{"path": "a", "frames": 1.5, "sample_rate": 8}\n'))
    with pytest.raises(InputError, match=r"f2\.jsonl:2: no 'frames' field"):
        list_manifest(
            manifest("f2.jsonl", '{"path": "a", "frames": 1, "sample_rate": 8}\n{"path": "b"}\n')
        )
    index = list_manifest(
        manifest("ok.jsonl", '{"path": "a", "frames": 2.0, "sample_rate": "8"}\n')
    )
    assert index.frames.tolist() == [2] and index.rate.tolist() == [8]


# --------------------------------------------------------------------------------------------
# Cutting and memory layout
# --------------------------------------------------------------------------------------------
def test_cut_clips_equals_clip_bounds_file_by_file():
    rng = np.random.default_rng(0)
    frames = np.concatenate([[-2, -1, 0, 1], rng.integers(0, 3_000_000, 400)]).astype(np.int64)
    rates = np.concatenate([[0, 0, 16000, 8000], rng.choice([8000, 16000, 44100, 48000], 400)])
    for clip_seconds in (None, 0.0, 2.0, 10.0, 33.3, 60.0):
        file_id, start, stop, rate = cut_clips(frames, rates.astype(np.int64), clip_seconds)
        expected = []
        for i, (n, sr) in enumerate(zip(frames.tolist(), rates.tolist(), strict=True)):
            if not clip_seconds or n < 0:
                expected.append((i, 0, features.WHOLE, 0))
                continue
            bounds = clip_bounds(n, max(1, int(round(clip_seconds * sr))))
            expected += [(i, a, b, sr) for a, b in bounds]
        got = list(zip(*(a.tolist() for a in (file_id, start, stop, rate)), strict=True))
        assert got == expected, clip_seconds


def frames_manifest(path: Path, n: int) -> Path:
    with path.open("w") as f:
        f.write("path,frames,sample_rate\n")
        f.writelines(
            f"/corpus/part{i % 7}/Y{i:011d}.flac,{160000 - i % 3},16000\n" for i in range(n)
        )
    return path


def reachable_objects(root: object) -> int:
    """How many Python objects `root` holds, following references (arrays count as one)."""
    seen, todo = set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if not isinstance(obj, np.ndarray):
            todo.extend(gc.get_referents(obj))
    return len(seen)


def test_index_holds_no_per_clip_python_objects(tmp_path, monkeypatch):
    HeaderCount(monkeypatch, fail=True)
    sizes = (1_000, 30_000)
    sources = [
        build_source(frames_manifest(tmp_path / f"m{n}.csv", n), clip_seconds=5.0) for n in sizes
    ]
    assert [len(s) for s in sources] == [2 * n for n in sizes]  # 10 s files cut in two
    assert sources[1].name(3) == "/corpus/part1/Y00000000001.flac#t=5.000,10.000"
    counts = [reachable_objects(s) for s in sources]
    assert counts[0] == counts[1] < 100
    subsets = [s.subset(np.arange(0, len(s), 3)) for s in sources]
    assert reachable_objects(subsets[0]) == reachable_objects(subsets[1])
    # The arrays grow with the index, the object count does not.
    assert sources[1].paths.nbytes > 25 * sources[0].paths.nbytes
    gc.collect()
    before = len(gc.get_objects())
    third = build_source(tmp_path / "m30000.csv", clip_seconds=5.0, fraction=0.5, seed=3)
    gc.collect()
    assert len(gc.get_objects()) - before < 100 and len(third) == 30_000
    assert isinstance(third.indices, np.ndarray) and third.indices.dtype == np.int64


def test_fraction_draws_the_same_subset_as_a_sorted_permutation_prefix(tmp_path, monkeypatch):
    HeaderCount(monkeypatch, fail=True)
    source = build_source(frames_manifest(tmp_path / "m.csv", 5000), clip_seconds=None)
    for fraction, seed in ((0.5, 0), (0.1, 7), (0.0001, 3)):
        part = build_source(tmp_path / "m.csv", clip_seconds=None, fraction=fraction, seed=seed)
        keep = max(1, int(round(len(source) * fraction)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED_0003]))
        expected = sorted(rng.permutation(len(source))[:keep].tolist())  # as it was written
        assert part.indices.tolist() == expected
        head = expected[:3]
        assert [part.name(i) for i in range(len(head))] == [source.name(j) for j in head]


def test_reuse_takes_only_unchanged_files():
    old = file_index.FileIndex.from_paths(
        ["/d/a", "/d/b", "/d/c"], "/d/", [1, 2, 3], [10, 20, 30], [100, 200, -1], [8, 16, 0]
    )
    new = file_index.FileIndex.from_paths(
        ["/e/c", "/e/b", "/e/a", "/e/z"], "/e/", [3, 2, 9, 1], [30, 21, 10, 10]
    )
    assert new.reuse(old) == 1  # c: same size and time (its header unreadable: kept so)
    assert new.frames.tolist() == [-1, -2, -2, -2] and new.rate.tolist() == [0, 0, 0, 0]
    empty = file_index.FileIndex.from_paths([], "/d/")
    assert new.reuse(empty) == 0 and empty.reuse(old) == 0
