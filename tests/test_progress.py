"""Progress off a terminal is plain lines, not redraws; on a terminal, tqdm's bars as before."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from test_pretrain import REPO, audio_dir, tiny_config  # noqa: F401 (audio_dir is a fixture)

from mwmae._progress import LineProgress, progress_bar

SRC = Path(__file__).resolve().parents[1] / "src" / "mwmae"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_bar_is_a_few_plain_lines(monkeypatch):
    monkeypatch.delenv("MWMAE_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=200, desc="steps", file=out, mininterval=0.05)
    assert isinstance(bar, LineProgress)
    for i in range(200):
        time.sleep(0.001)
        bar.update(1)
        bar.set_postfix(loss=f"{i:.1f}")  # refreshes at once in tqdm: kept to the interval
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text
    assert 2 <= len(lines) <= 200 * 0.001 / 0.05 + 10  # the first, the last, one per interval
    assert re.search(r"steps: 100%.*200/200", lines[-1]) and lines[0].startswith("steps:   0%")
    hidden = io.StringIO()
    progress_bar(range(3), file=hidden, leave=False).close()
    assert "\r" not in hidden.getvalue()


def test_off_a_terminal_each_new_stage_name_is_a_line_at_once(monkeypatch):
    monkeypatch.delenv("MWMAE_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=3, desc="loading", file=out, mininterval=3600)
    for stage in ("entropy", "entropy", "figures"):  # the repeat is no new stage
        bar.set_description_str(stage)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["loading", "entropy", "figures", "figures"]
    assert "3/3" in lines[-1] and "2/3" in lines[2]


def test_on_a_terminal_it_is_tqdm(monkeypatch):
    monkeypatch.delenv("MWMAE_PROGRESS", raising=False)
    bar = progress_bar(total=3, file=_Terminal())
    assert not isinstance(bar, LineProgress)
    bar.close()
    monkeypatch.setenv("MWMAE_PROGRESS", "lines")
    assert isinstance(progress_bar(total=3, file=_Terminal()), LineProgress)


def test_a_command_off_a_terminal_writes_no_redraws(tmp_path, audio_dir):  # noqa: F811
    cfg = tiny_config(tmp_path, audio_dir, schedule={"steps": 20, "warmup_steps": 2})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("MWMAE_PROGRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mwmae", "pretrain", "--config", str(tmp_path / "c.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "tiny: 100%" in proc.stderr


def test_every_bar_goes_through_the_one_progress_module():
    users = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if p.name != "_progress.py" and re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M)
    ]
    assert users == []
