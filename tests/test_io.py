"""mwmae._io: atomic writes keep the user's umask (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from mwmae import _io


@pytest.mark.parametrize(("umask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, monkeypatch, umask, expected):
    old = os.umask(umask)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)  # read afresh, as a new process would
        _io.atomic_write_text(tmp_path / "a.json", "{}")
        with _io.atomic_writer(tmp_path / "b.bin", fsync=True) as fh:
            fh.write(b"x")
        with open(tmp_path / "plain.txt", "w") as fh:  # what open() itself gives
            fh.write("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": expected, "b.bin": expected, "plain.txt": expected}


def test_umask_is_read_without_changing_it(monkeypatch):
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)
        assert _io.file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # still the user's
    finally:
        os.umask(old)


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), _io.atomic_writer(tmp_path / "x.json") as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
