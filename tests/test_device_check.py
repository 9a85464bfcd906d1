"""benchmarks/device_check.py: the --smoke run covers every part; a failing part is recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import device_check  # noqa: E402

PARTS = ("environment", "train", "evaluator", "ddp", "loader", "embeddings")


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(BENCHMARKS.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(BENCHMARKS / "device_check.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text()), out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_smoke_run_has_every_part_with_numbers(smoke_report):
    report, out = smoke_report
    parts = report["parts"]
    assert tuple(parts) == PARTS
    for name, res in parts.items():
        assert res["ok"], (name, res.get("error"))
        assert _positive(res["seconds"])
    env = parts["environment"]
    assert env["torch"] and env["flex"] == "ok"
    train = parts["train"]
    assert _positive(train["peak_tflops_measured"]) and train["peak_tflops_datasheet"] == 989.0
    eager = [r for r in train["rows"] if not r["compile"]]
    kernels = {(r["model"].split("_")[0], r["kernel"]) for r in eager}
    assert kernels == {
        ("mwmae", "grouped"),
        ("mwmae", "dense"),
        ("mwmae", "flex"),
        ("mae", "global"),
    }
    for row in eager:
        for key in ("at_batch", "largest"):
            m = row[key]
            assert _positive(m["samples_per_s"]) and _positive(m["mfu_measured_peak"]), row
            assert m["batch"] >= 2
    assert all("skipped" in r for r in train["rows"] if r["compile"])  # no compile in smoke
    ev = parts["evaluator"]
    assert _positive(ev["batched_s"]) and _positive(ev["sequential_s"]) and ev["seeds"] == 2
    assert parts["ddp"]["steps"] == 2 and parts["ddp"]["world_size"] == 1
    assert parts["ddp"]["backend"] == "gloo"
    assert all(_positive(r["clips_per_s"]) for r in parts["loader"]["rows"])
    assert {r["format"] for r in parts["loader"]["rows"]} == {"prepared", "audio"}
    assert _positive(parts["embeddings"]["clips_per_s"])
    md = (out / "device_check.md").read_text()
    assert "| model | kernel | compile | batch | samples/s |" in md
    assert "| mwmae_tiny_4x16 | flex | False |" in md


def test_a_failing_part_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    def broken(sizes, args, deadline):
        raise RuntimeError("simulated failure")

    monkeypatch.setitem(device_check.PARTS, "loader", broken)
    rc = device_check.main(["--smoke", "--out", str(tmp_path), "--parts", "loader,environment"])
    assert rc == 1
    parts = json.loads((tmp_path / "device_check.json").read_text())["parts"]
    assert parts["loader"]["ok"] is False and "simulated failure" in parts["loader"]["error"]
    assert parts["environment"]["ok"] is True
    assert "error: RuntimeError: simulated failure" in (tmp_path / "device_check.md").read_text()


def test_unknown_part_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        device_check.main(["--smoke", "--out", str(tmp_path), "--parts", "train,gpu"])
