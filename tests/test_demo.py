"""Smoke run of the whole demo pipeline at a tiny budget."""

import json
from pathlib import Path

from mwmae.commands.demo import run as run_command


def test_demo_pipeline_smoke(tmp_path, capsys):
    import argparse

    args = argparse.Namespace(
        out=str(tmp_path / "demo"),
        data_size="tiny",
        seed=0,
        steps=2,
        batch_size=4,
        models=["mae_tiny_cpu", "mwmae_tiny_cpu"],
        eval_seeds=2,
        eval_preset="paper",
        max_epochs=3,
        threads=0,
        set=["model.depth=1", "model.decoder_depth=1", "log.figure_every=0", "data.num_workers=0"],
    )
    assert run_command(args) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    # one row per model, every built-in task evaluated with the requested seeds
    assert [r["model"] for r in results] == ["logmel", "mae_tiny", "mwmae_tiny"]
    tasks = set(summary["data"]["tasks"])
    assert len(tasks) == 7
    for run in results:
        assert len(run["tasks"]) == 7
        for res in run["tasks"].values():
            assert len(res["scores"]) == 2
    # the printed table is the one written to disk, with s(m)
    table = (out / "results.md").read_text()
    assert "s(m)" in table and table.splitlines()[0] in printed
    assert len(summary["figures"]) == 3
    for figure in summary["figures"]:
        assert Path(figure).is_file() and Path(figure).stat().st_size > 10_000
    for name in ("mae_tiny", "mwmae_tiny"):
        assert (out / "runs" / name / "final" / "model.safetensors").is_file()
