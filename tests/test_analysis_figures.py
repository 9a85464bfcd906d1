"""Figures a reader can use: legends inside the figure, colour scales spanning the data, named
global heads, padding marked, titles naming model and step, and `mwmae analyze` progress."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

import mwmae
from mwmae.analysis import attention_entropy, head_similarity
from mwmae.analysis import figures as F
from mwmae.analysis.clips import load_spec_clips
from mwmae.analysis.report import (
    analyze_models,
    pretraining_step,
    progress_total,
    reconstruction_title,
)
from mwmae.plotting import FRAME_SECONDS, padded_regions

MW_LABEL = "MW-MAE (mwmae_tiny_cpu)"
MAE_LABEL = "MAE (mae_tiny_cpu)"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(4)
    return {
        MAE_LABEL: mwmae.create_model("mae_tiny_4x16", depth=1, decoder_depth=1).eval(),
        MW_LABEL: mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=2).eval(),
    }


@pytest.fixture(scope="module")
def spec():
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 1, 200, 80, generator=g)


@pytest.fixture(scope="module")
def entropies(models, spec):
    return {name: attention_entropy(m, spec, "decoder") for name, m in models.items()}


def _drawn(fig):
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def _inside(inner, outer, tol=1.0) -> bool:
    return (
        inner.x0 >= outer.x0 - tol
        and inner.y0 >= outer.y0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y1 <= outer.y1 + tol
    )


@pytest.mark.parametrize("normalized", [False, True])
def test_entropy_legend_lies_inside_the_figure(entropies, normalized):
    fig = F.entropy_figure(entropies, normalized=normalized)
    renderer = _drawn(fig)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert any("2, 5, 10, 25, 50, 125, global" in t for t in texts)
    assert _inside(legend.get_window_extent(renderer), fig.bbox)
    for text in legend.get_texts():
        assert _inside(text.get_window_extent(renderer), fig.bbox), text.get_text()


def test_entropy_y_range_follows_the_data(entropies):
    """Normalised entropies near 1 must not be squashed into the top of a 0..1 axis."""
    fig = F.entropy_figure(entropies, normalized=True)
    low, high = fig.axes[0].get_ylim()
    smallest = min(float(r.normalized.min()) for r in entropies.values())  # the head dots
    assert low > 0.0 and low <= smallest
    assert high > 1.0  # the uniform-attention line and its label stay in view


def test_entropy_heads_colour_limits_equal_each_panels_data(entropies):
    fig = F.entropy_heads_figure(entropies)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title() in entropies]
    assert [ax.get_title() for ax in panels] == list(entropies)
    for ax in panels:
        values = entropies[ax.get_title()].mean
        assert ax.images[0].get_clim() == pytest.approx((values.min(), values.max()))
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == len(entropies)
    assert all("mean entropy (nats)" in bar.get_ylabel() for bar in bars)
    ticks = [t.get_text() for t in panels[1].get_xticklabels()]
    assert ticks == ["2", "5", "10", "25", "50", "125", "global", "global"]


def test_data_limits():
    assert F.data_limits(np.array([[5.3, 5.5], [np.nan, 5.4]])) == (5.3, 5.5)
    low, high = F.data_limits(np.full((2, 3), 5.0))
    assert low < 5.0 < high and high - low < 0.1


def test_similarity_ticks_name_global_heads(models, spec):
    sims = {MW_LABEL: head_similarity(models[MW_LABEL], spec, "decoder")}
    fig = F.similarity_figure(sims)
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        texts = [t.get_text() for t in labels]
        assert "g" not in texts and texts.count("global") == 4  # 2 layers x 2 global heads


def test_padded_regions():
    assert padded_regions(None, 2, 200) == [None, None]
    assert padded_regions([101, 200, 250], 3, 200) == [
        (101 * FRAME_SECONDS, 200 * FRAME_SECONDS),
        None,
        None,
    ]
    with pytest.raises(ValueError, match="valid_frames"):
        padded_regions([100], 2, 200)


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_reconstruction_figure_marks_padding_and_names_model(models, spec):
    fig = F.reconstruction_figure(
        models[MW_LABEL],
        spec,
        num_samples=2,
        title="mwmae_tiny, step 1200",
        valid_frames=[100, 200],
    )
    assert fig.get_suptitle() == "mwmae_tiny, step 1200"
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    first, second = panels[:3], panels[3:6]
    for ax in first:
        assert "padding" in _texts(ax)
        (span,) = ax.patches  # the hatched padded stretch, from 1.0 s to the end
        assert (span.get_x(), span.get_width()) == pytest.approx((1.0, 1.0))
    for ax in second:
        assert "padding" not in _texts(ax) and not ax.patches
    # Without valid_frames nothing is marked (the old behaviour).
    plain = F.reconstruction_figure(models[MW_LABEL], spec, num_samples=2)
    assert not any("padding" in _texts(ax) for ax in plain.axes)


def test_save_reconstruction_figure_takes_title_and_padding(tmp_path, models, spec):
    path = tmp_path / "rec.png"
    F.save_reconstruction_figure(
        models[MW_LABEL], spec, path, num_samples=2, title="t", valid_frames=[50, 60]
    )
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_load_spec_clips_counts_valid_frames(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for seconds in (1.0, 3.0):
        path = tmp_path / f"{seconds}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        paths.append(path)
    clips = load_spec_clips(paths, num_frames=200, seed=0)
    short, full = clips.valid_frames
    assert 95 <= short <= 105 and full == 200  # 1 s at a 10 ms hop, and a full crop
    spec = clips.spec[0, 0]
    assert torch.all(spec[short:] == 0.0)  # the padding, exactly
    assert torch.any(spec[short - 1] != 0.0)  # the last real frame
    again = load_spec_clips(paths, num_frames=200, seed=0)  # seeded: the same crops
    torch.testing.assert_close(again.spec, clips.spec)
    assert clips.paths == paths and clips.skipped == []


def test_reconstruction_title():
    assert reconstruction_title("MW-MAE (run)", 1200) == "MW-MAE (run), step 1200: reconstructions"
    assert reconstruction_title("MW-MAE (run)") == "MW-MAE (run): reconstructions"


def test_analyze_models_reports_progress(tmp_path, models, spec):
    stages, units, order = [], [], []
    record = analyze_models(
        models,
        spec,
        tmp_path,
        batch_size=2,
        num_reconstructions=2,
        on_stage=lambda s: (stages.append(s), order.append("stage")),
        on_step=lambda n: (units.append(n), order.append("step")),
        valid_frames=[100, 200, 200],
        steps={MW_LABEL: 30},
    )
    assert sum(units) == progress_total(2, 3, 2, ("encoder", "decoder"))
    assert order[0] == "stage"  # a user sees what runs before the first unit finishes
    assert stages[0] == f"{MAE_LABEL}: encoder attention entropy"
    assert f"{MW_LABEL}: reconstructions" in stages and "decoder figures" in stages
    assert [m["step"] for m in record["models"]] == [None, 30]


def test_cli_analyze_shows_progress_and_step(tmp_path, capsys):
    from mwmae.cli import main

    run = tmp_path / "run"
    mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1).save_pretrained(run / "final")
    (run / "summary.json").write_text(json.dumps({"step": 30, "final": str(run / "final")}))
    rng = np.random.default_rng(1)
    for i in range(2):
        wave = 0.1 * rng.standard_normal(16000).astype(np.float32)
        sf.write(tmp_path / f"{i}.wav", wave, 16000)
    out = tmp_path / "out"
    args = ["analyze", "--model", str(run / "final"), "--audio", str(tmp_path), "--out", str(out)]
    assert main([*args, "--num-clips", "2", "--part", "decoder"]) == 0
    err = capsys.readouterr().err  # not a terminal, and the bars still show
    assert "loading models" in err and "loading clips" in err
    assert "decoder attention entropy" in err and "decoder figures" in err
    record = json.loads((out / "analysis.json").read_text())
    assert record["models"][0]["step"] == 30
    assert all(95 <= v <= 105 for v in record["valid_frames"])
    assert main([*args, "--num-clips", "2", "--part", "decoder", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_pretraining_step(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    summary = tmp_path / "run" / "summary.json"
    assert pretraining_step(final) is None  # no summary
    summary.write_text(json.dumps({"step": 1200, "final": str(final)}))
    assert pretraining_step(final) == 1200
    assert pretraining_step(tmp_path / "run") is None  # not the folder the summary names
    summary.write_text(json.dumps({"step": 1200, "final": str(tmp_path / "elsewhere")}))
    assert pretraining_step(final) is None
    summary.write_text("{not json")
    assert pretraining_step(final) is None
    summary.write_text(json.dumps({"step": "1200", "final": str(final)}))
    assert pretraining_step(final) is None
