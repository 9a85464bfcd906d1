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
        curve_points=3,
        curve_seeds=1,
        probe_hidden_dim=32,
        grid_points=1,
        threads=0,
        set=["model.depth=1", "model.decoder_depth=1", "log.figure_every=0", "data.num_workers=0"],
    )
    assert run_command(args) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "demo"
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    # one row per model and one per random-initialised twin, every built-in task evaluated
    # with the requested seeds
    assert [r["model"] for r in results] == [
        "logmel",
        "random_mae_tiny",
        "mae_tiny",
        "random_mwmae_tiny",
        "mwmae_tiny",
    ]
    tasks = set(summary["data"]["tasks"])
    assert len(tasks) == 7
    for run in results:
        assert len(run["tasks"]) == 7
        for res in run["tasks"].values():
            assert len(res["scores"]) == 2
    # the printed table is the one written to disk, with s(m)
    table = (out / "results.md").read_text()
    assert "s(m)" in table and table.splitlines()[0] in printed
    assert "beats its random-initialised twin on" in printed
    assert len(summary["figures"]) == 4
    for figure in summary["figures"]:
        assert Path(figure).is_file() and Path(figure).stat().st_size > 10_000
    for name in ("mae_tiny", "mwmae_tiny"):
        assert (out / "runs" / name / "final" / "model.safetensors").is_file()
    # the learning curve: steps 0, 1, 2; step 0 is the twin, the last the pretrained model
    curve = json.loads((out / "curve.json").read_text())
    assert curve["steps"] == [0, 1, 2]
    by_name = {r["model"]: r for r in results}
    for name, points in curve["models"].items():
        assert [p["step"] for p in points] == [0, 1, 2]
        assert [p["model"] for p in points] == [f"random_{name}", f"{name}@1", name]
        assert points[1]["seeds"] == 1
        for p in (points[0], points[-1]):
            table_means = {t: r["mean"] for t, r in by_name[p["model"]]["tasks"].items()}
            assert p["tasks"] == table_means
    twins = summary["pretrained_vs_random_twin"]
    assert set(twins) == {"mae_tiny", "mwmae_tiny"} and all(t["of"] == 7 for t in twins.values())


def test_random_twin_is_the_initial_weights(tmp_path):
    """The twin (snapshot at step 0) holds exactly the weights a fresh model of the run's
    config and seed starts from, and the later snapshot differs from it."""
    import torch

    import mwmae
    from mwmae.builtin.synth import generate
    from mwmae.pretraining import pretrain, snapshot_dir

    manifest = generate(tmp_path / "data", size="tiny", seed=0, progress=False)
    overrides = [
        f"data.source={manifest['root']}/corpus",
        "data.cache=memory",
        "data.num_workers=0",
        "model.depth=1",
        "model.decoder_depth=1",
        "schedule.steps=2",
        "schedule.warmup_steps=0",  # the first step changes the weights
        "batch.global_size=4",
        "checkpoint.snapshots=[0,1]",
        "log.figure_every=0",
        f"output.dir={tmp_path / 'runs'}",
        "seed=3",
    ]
    run_dir = pretrain("mwmae_tiny_cpu", overrides, progress=False)
    twin = mwmae.from_pretrained(snapshot_dir(run_dir, 0))
    torch.manual_seed(3)
    fresh = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1, decoder_embed_dim=128)
    for (key, a), b in zip(twin.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    later = mwmae.from_pretrained(snapshot_dir(run_dir, 1)).state_dict()
    assert any(not torch.equal(later[k], v) for k, v in fresh.state_dict().items())


def test_snapshot_after_the_last_step_is_refused(tmp_path):
    import pytest

    from mwmae.builtin.synth import generate
    from mwmae.errors import ConfigError
    from mwmae.pretraining import pretrain

    manifest = generate(tmp_path / "data", size="tiny", seed=0, progress=False)
    with pytest.raises(ConfigError, match=r"checkpoint.snapshots: steps \[9\] come after"):
        pretrain(
            "mwmae_tiny_cpu",
            [
                f"data.source={manifest['root']}/corpus",
                "schedule.steps=2",
                "checkpoint.snapshots=[1,9]",
                f"output.dir={tmp_path / 'runs'}",
            ],
            progress=False,
        )


def test_curve_steps_are_even_and_include_both_ends():
    import pytest

    from mwmae.builtin.demo import curve_steps
    from mwmae.errors import ConfigError

    assert curve_steps(1000, 4) == [0, 333, 667, 1000]
    assert curve_steps(2, 3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="--curve-points"):
        curve_steps(10, 1)


def test_demo_options_are_the_settings_fields(capsys):
    """`mwmae demo` has one option per DemoSettings field; its defaults are the settings'."""
    import dataclasses

    import pytest

    from mwmae.builtin.demo import DemoSettings
    from mwmae.cli import build_parser, main
    from mwmae.commands.demo import _settings

    parser = build_parser()
    assert _settings(parser.parse_args(["demo"])) == DemoSettings()
    args = parser.parse_args(["demo", "--set", "a=1", "--grid-points", "0", "--models", "x"])
    settings = _settings(args)
    assert settings.extra_overrides == ("a=1",) and settings.models == ("x",)
    assert settings.grid_points is None  # 0: every grid point
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(DemoSettings):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert f"  {flag} " in text, flag
    assert text.count("--threads") == 2  # the settings' own, in usage and in the list
