"""Writing commands on a read-only folder or a full disk: one line naming the path, exit 2.

The machine's refusal is simulated at the operating-system calls every writer goes through
(`os.open`, `os.mkdir`, `open`), for paths under one folder, so the test runs anywhere.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from test_pretrain import audio_dir, tiny_config  # noqa: F401 (audio_dir is a fixture)

import mwmae
from mwmae.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def refuse(monkeypatch):
    """refuse(folder, code): writes under `folder` fail with OSError(code)."""

    def install(folder: Path, code: int = errno.EROFS) -> None:
        folder = str(folder)

        def under(path) -> bool:
            return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(folder)

        def fail(path):
            raise OSError(code, os.strerror(code), os.fspath(path))

        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

        def fake_open(file, mode="r", *args, **kwargs):
            if under(file) and any(c in mode for c in "wax+"):
                fail(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                fail(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if under(path) and not os.path.isdir(path):
                fail(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return install


def _one_line(capsys, command: str, path: Path, reason: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"mwmae {command}: error: "), err
    assert str(path) in err[0] and reason in err[0], err


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_pretrain(tmp_path, audio_dir, refuse, capsys, code):  # noqa: F811
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "ro", audio_dir)))
    (tmp_path / "ro").mkdir()
    refuse(tmp_path / "ro", code)
    assert main(["pretrain", "--config", str(cfg_path), "--no-progress"]) == 2
    _one_line(capsys, "pretrain", tmp_path / "ro", os.strerror(code))


def test_finetune(tmp_path, refuse, capsys):
    from test_finetune import TINY_MODEL, config, make_task

    torch.manual_seed(0)
    model = mwmae.create_model(**TINY_MODEL).save_pretrained(tmp_path / "model")
    cfg = config(tmp_path / "ro", model, make_task(tmp_path / "task"))
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "ro").mkdir()
    refuse(tmp_path / "ro")
    assert main(["finetune", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 2
    _one_line(capsys, "finetune", tmp_path / "ro", "Read-only file system")


def test_prepare_shards(tmp_path, audio_dir, refuse, capsys):  # noqa: F811
    refuse(tmp_path / "ro")
    argv = ["prepare-shards", str(audio_dir), str(tmp_path / "ro" / "shards"), "--no-progress"]
    assert main(argv) == 2
    _one_line(capsys, "prepare-shards", tmp_path / "ro", "Read-only file system")


def test_analyze(tmp_path, audio_dir, refuse, capsys):  # noqa: F811
    torch.manual_seed(0)
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1)
    model.save_pretrained(tmp_path / "model")
    refuse(tmp_path / "ro")
    argv = ["analyze", "--model", str(tmp_path / "model"), "--audio", str(audio_dir),
            "--out", str(tmp_path / "ro"), "--num-clips", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line(capsys, "analyze", tmp_path / "ro", "Read-only file system")
