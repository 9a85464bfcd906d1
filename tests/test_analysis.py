"""Attention entropy, head similarity, figures and `mwmae analyze`, checked against a naive
per-head float64 attention written here (explicit window masks and relative position bias)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import mwmae
from mwmae.analysis import (
    AttentionEntropy,
    HeadLabel,
    attention_entropy,
    capture_attention,
    head_outputs,
    head_similarity,
    pwcca,
    window_similarity_summary,
)
from mwmae.analysis import figures as F
from mwmae.analysis.clips import find_audio_files, load_spec_clips, select_evenly
from mwmae.analysis.probes import attention_modules, masking_noise


# --------------------------------------------------------------------------------------------
# Fixtures and the naive reference
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mw_model():
    torch.manual_seed(1)
    # Windowed heads in the encoder too (5 and 25 divide both 250 tokens and the 50 kept).
    return mwmae.create_model(
        "mwmae_tiny_4x16", depth=2, decoder_depth=2, encoder_window_sizes=[5, 25, 0]
    ).eval()


@pytest.fixture(scope="module")
def mae_model():
    torch.manual_seed(2)
    return mwmae.create_model("mae_tiny_4x16", depth=1, decoder_depth=2).eval()  # cls token


@pytest.fixture(scope="module")
def spec():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(5, 1, 200, 80, generator=g)
    # Some structure (harmonic-like stripes) so attention is not all alike.
    stripes = torch.sin(torch.arange(80) * 0.7)[None, None, None, :] * 2.0
    return base + stripes


def naive_attention(attn, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-head float64 loop: probabilities (B, H, N, N) and outputs [(B, N, hd)] per head."""
    x = x.double()
    B, N, C = x.shape
    H = attn.num_heads
    hd = C // H
    W, b = attn.qkv.weight.double(), attn.qkv.bias.double()
    probs = torch.zeros(B, H, N, N, dtype=torch.float64)
    outs = []
    for h in range(H):
        rows = slice(h * hd, (h + 1) * hd)

        def proj(part: int, rows=rows):
            s = slice(part * C + rows.start, part * C + rows.stop)
            return x @ W[s].T + b[s]

        q, k, v = proj(0), proj(1), proj(2)
        logits = q @ k.transpose(1, 2) / math.sqrt(hd)
        w = attn.window_sizes[h]
        if w:
            i = torch.arange(N)
            same = (i[:, None] // w) == (i[None, :] // w)
            rel = (i[:, None] - i[None, :]).clamp(-(w - 1), w - 1) + w - 1
            logits = logits + attn.rel_pos_bias[str(h)].double()[rel]
            logits = logits.masked_fill(~same, float("-inf"))
        p = logits.softmax(-1)
        probs[:, h] = p
        outs.append(p @ v)
    return probs, outs


def naive_run(model, spec, part, noise):
    """Inputs of every attention module during the probe's pass, then the naive attention."""
    modules = attention_modules(model, part)
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for m in modules]
    with torch.no_grad():
        if part == "encoder":
            model.forward_features(spec)
        else:
            model(spec, noise=noise)
    for h in handles:
        h.remove()
    with torch.no_grad():
        return [naive_attention(m, x) for m, x in zip(modules, inputs, strict=True)]


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)


# --------------------------------------------------------------------------------------------
# Attention entropy
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_entropy_matches_naive_reference(mw_model, spec, part):
    noise = masking_noise(mw_model, spec.shape[0], seed=7)
    res = attention_entropy(mw_model, spec, part, seed=7, batch_size=2)
    ref = naive_run(mw_model, spec, part, noise)
    ref_per_query = torch.stack([entropy_of(p) for p, _ in ref])  # (layers, B, H, N)
    ref_mean = ref_per_query.mean(dim=(1, 3)).numpy()
    assert res.mean.shape == ref_mean.shape
    np.testing.assert_allclose(res.mean, ref_mean, rtol=1e-4, atol=1e-4)
    # per_query is (layers, heads, samples * queries), sample-major.
    L, B, H, N = ref_per_query.shape
    expected = ref_per_query.permute(0, 2, 1, 3).reshape(L, H, B * N).numpy()
    np.testing.assert_allclose(res.per_query, expected, rtol=1e-4, atol=1e-4)
    windows = np.array([m.window_sizes for m in attention_modules(mw_model, part)])
    np.testing.assert_array_equal(res.window_sizes, windows)
    eff = np.where(windows == 0, N, windows)
    np.testing.assert_array_equal(res.effective_windows, eff)
    np.testing.assert_allclose(res.normalized, ref_mean / np.log(eff), rtol=1e-4)
    assert res.seq_len == N == 250 and res.num_samples == 5
    # A head can never exceed the entropy of the uniform distribution over its window.
    assert np.all(res.per_query <= np.log(eff)[:, :, None] + 1e-4)


def test_uniform_attention_gives_log_window(mw_model, spec):
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1)
    model.load_state_dict(mw_model.state_dict(), strict=False)
    with torch.no_grad():
        for attn in attention_modules(model, "decoder"):
            attn.qkv.weight.zero_()
            attn.qkv.bias.zero_()
            for table in attn.rel_pos_bias.values():
                table.zero_()
    res = attention_entropy(model, spec[:2], "decoder")
    expected = np.log([[2, 5, 10, 25, 50, 125, 250, 250]])
    np.testing.assert_allclose(res.mean, expected, rtol=1e-5)
    np.testing.assert_allclose(res.normalized, 1.0, rtol=1e-5)


def test_entropy_with_cls_token_and_both(mae_model, spec):
    out = attention_entropy(mae_model, spec, "both", batch_size=5)
    assert set(out) == {"encoder", "decoder"}
    dec = out["decoder"]
    assert isinstance(dec, AttentionEntropy)
    assert dec.seq_len == 251 and dec.mean.shape == (2, 8)  # 250 patches + cls
    assert np.all(dec.window_sizes == 0) and np.all(dec.effective_windows == 251)
    assert dec.per_query.shape == (2, 8, 5 * 251)
    assert out["encoder"].mean.shape == (1, 3)
    d = dec.to_dict()
    json.dumps(d)
    assert len(d["layer_summary"]) == 2 and "per_query" not in d


def test_entropy_batching_seed_and_state(mw_model, spec):
    a = attention_entropy(mw_model, spec, "decoder", seed=3, batch_size=5)
    b = attention_entropy(mw_model, spec, "decoder", seed=3, batch_size=2)
    np.testing.assert_allclose(a.per_query, b.per_query, atol=1e-5)
    c = attention_entropy(mw_model, spec, "decoder", seed=4, batch_size=5)
    assert not np.allclose(a.per_query, c.per_query, atol=1e-3)  # other masks
    mw_model.train()
    try:
        attention_entropy(mw_model, spec[:1], "encoder")
        assert mw_model.training
    finally:
        mw_model.eval()
    for part in ("encoder", "decoder"):
        for m in attention_modules(mw_model, part):
            assert m.capture is False and m.last_attention is None
    with pytest.raises(ValueError, match="part"):
        attention_entropy(mw_model, spec, "middle")


def test_capture_flag_restored_after_error(mw_model):
    modules = attention_modules(mw_model, "encoder")
    with pytest.raises(ValueError):
        attention_entropy(mw_model, torch.zeros(1, 1, 100, 80), "encoder")  # wrong size
    assert all(m.capture is False for m in modules)
    with capture_attention(modules):
        assert all(m.capture for m in modules)
    assert all(m.capture is False for m in modules)


# --------------------------------------------------------------------------------------------
# Head outputs and PWCCA similarity
# --------------------------------------------------------------------------------------------
def test_head_outputs_match_naive_reference(mw_model, spec):
    noise = masking_noise(mw_model, spec.shape[0], seed=0)
    outputs, labels = head_outputs(mw_model, spec, "decoder", seed=0, batch_size=3)
    ref = naive_run(mw_model, spec, "decoder", noise)
    assert len(outputs) == len(labels) == 2 * 8
    assert [lab.window for lab in labels[:8]] == [2, 5, 10, 25, 50, 125, 0, 0]
    assert [(lab.layer, lab.head) for lab in labels[8:10]] == [(1, 0), (1, 1)]
    for out, lab in zip(outputs, labels, strict=True):
        expected = ref[lab.layer][1][lab.head].reshape(-1, 48).numpy()
        assert out.shape == (5 * 250, 48)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_head_similarity_matrix(mw_model, spec):
    matrix, labels = head_similarity(mw_model, spec, "encoder", batch_size=5)
    outputs, _ = head_outputs(mw_model, spec, "encoder", batch_size=5)
    assert matrix.shape == (6, 6) and [lab.window for lab in labels] == [5, 25, 0] * 2
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
    for i, j in [(0, 1), (1, 0), (2, 5), (4, 3)]:
        assert matrix[i, j] == pytest.approx(pwcca(outputs[i], outputs[j]), abs=1e-10)
    assert np.all((matrix >= 0) & (matrix <= 1 + 1e-12))


def test_identical_heads_are_found(spec):
    """Give encoder head 1 head 0's q, k and v weights: their outputs are equal (PWCCA 1),
    which only holds if head outputs are sliced and ordered as the model lays them out."""
    model = mwmae.create_model("mae_tiny_4x16", depth=1, decoder_depth=1)
    attn = model.blocks[0].attn
    C, hd = attn.qkv.in_features, attn.head_dim
    with torch.no_grad():
        for part in range(3):
            src = slice(part * C, part * C + hd)
            dst = slice(part * C + hd, part * C + 2 * hd)
            attn.qkv.weight[dst] = attn.qkv.weight[src]
            attn.qkv.bias[dst] = attn.qkv.bias[src]
    matrix, labels = head_similarity(model, spec, "encoder")
    assert matrix[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert matrix[1, 0] == pytest.approx(1.0, abs=1e-6)
    assert matrix[0, 2] < 0.99 and matrix[1, 2] < 0.99


def test_window_similarity_summary():
    labels = [HeadLabel(layer, head, w) for layer in range(2) for head, w in enumerate([5, 0])]
    m = np.full((4, 4), 9.0)  # within-layer entries must be ignored
    m[0, 2] = m[2, 0] = 0.8  # window 5, layers 0 <-> 1
    m[1, 3] = m[3, 1] = 0.6  # global, layers 0 <-> 1
    m[0, 3] = m[3, 0] = m[1, 2] = m[2, 1] = 0.1
    s = window_similarity_summary(m, labels)
    assert s["cross_layer_same_window"] == pytest.approx(0.7)
    assert s["cross_layer_different_window"] == pytest.approx(0.1)
    assert list(s["per_window"]) == ["5", "0"]
    assert s["per_window"]["5"] == {
        "same_window": pytest.approx(0.8),
        "different_window": pytest.approx(0.1),
    }
    one_layer = window_similarity_summary(np.eye(2), labels[:2])
    assert one_layer["cross_layer_same_window"] is None


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def test_denormalize_prediction_inverts_norm_pix_targets(spec):
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1, norm_pix_loss=True)
    s = spec[:2]
    target = model.target_patches(s)
    assert not torch.allclose(target, model.patchify(s), atol=1e-2)  # really normalised
    torch.testing.assert_close(
        F.denormalize_prediction(model, s, target), model.patchify(s), atol=1e-4, rtol=1e-4
    )
    flat = s.clone()
    flat[:, :, :4, :16] = 0.5  # patch 0 constant: zero std, must map back to its value
    back = F.denormalize_prediction(model, flat, model.target_patches(flat))
    assert torch.isfinite(back).all()
    torch.testing.assert_close(back, model.patchify(flat), atol=1e-4, rtol=1e-4)
    plain = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1)
    assert F.denormalize_prediction(plain, s, target) is target


def test_reconstruction_arrays(mw_model, spec):
    arrays = F.reconstruction_arrays(mw_model, spec, num_samples=3, seed=5)
    noise = masking_noise(mw_model, 3, seed=5)
    with torch.no_grad():
        out = mw_model(spec[:3], noise=noise)
    mask = out.mask.numpy().astype(bool)
    np.testing.assert_array_equal(arrays["mask"], out.mask.numpy())
    nan_patches = np.isnan(mw_model.patchify(torch.from_numpy(arrays["masked_input"])).numpy())
    np.testing.assert_array_equal(nan_patches.all(-1), mask)
    np.testing.assert_array_equal(nan_patches.any(-1), mask)
    rec = mw_model.patchify(torch.from_numpy(arrays["reconstruction"])).numpy()
    inp = mw_model.patchify(spec[:3]).numpy()
    np.testing.assert_allclose(rec[~mask], inp[~mask])
    np.testing.assert_allclose(rec[mask], out.pred.numpy()[mask], rtol=1e-5, atol=1e-6)
    # Same number of masked patches per clip, so the per-clip mean is the model's loss.
    assert arrays["masked_mse"].mean() == pytest.approx(out.reconstruction_loss.item(), rel=1e-5)
    assert arrays["input"].shape == arrays["prediction"].shape == (3, 200, 80)


def test_figures_render(tmp_path, mw_model, mae_model, spec):
    fig = F.reconstruction_figure(mw_model, spec, num_samples=2)
    assert len(fig.axes) == 2 * 3 + 1  # panels + colour bar
    assert fig.axes[0].get_title() == "input"
    ents = {
        "MAE": attention_entropy(mae_model, spec, "decoder"),
        "MW-MAE": attention_entropy(mw_model, spec, "decoder"),
    }
    for normalized in (False, True):
        fig = F.entropy_figure(ents, normalized=normalized)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "decoder layer" and "entropy" in ax.get_ylabel()
        fig.savefig(tmp_path / f"e{normalized}.png", dpi=50)
    F.entropy_heads_figure(ents).savefig(tmp_path / "h.png", dpi=50)
    sims = {"MW-MAE": head_similarity(mw_model, spec, "decoder")}
    fig = F.similarity_figure(sims, part="decoder")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[:8] == ["2", "5", "10", "25", "50", "125", "global", "global"]
    assert any(a.get_label() == "<colorbar>" for a in fig.axes)
    fig.savefig(tmp_path / "s.png", dpi=50)
    for name in ("eFalse.png", "eTrue.png", "h.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_save_reconstruction_figure_leaves_model_alone(tmp_path, spec):
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / "sub" / "rec.png"
    F.save_reconstruction_figure(model, spec, path, num_samples=2)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


# --------------------------------------------------------------------------------------------
# Clips and the command line
# --------------------------------------------------------------------------------------------
def _write_task(root, n=5):
    rng = np.random.default_rng(0)
    for i in range(n):
        split = "train" if i % 2 else "test"
        d = root / "16000" / split
        d.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(16000 * (1.0 + 0.5 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(d / f"{i}.wav", wave.astype(np.float32), 16000)
    (root / "train.json").write_text("{}")


def test_clip_discovery_and_loading(tmp_path):
    _write_task(tmp_path / "task")
    (tmp_path / "task" / "16000" / "train" / "broken.wav").write_bytes(b"not audio")
    (tmp_path / "task" / "other.wav").write_bytes(b"outside the 16000 folder")
    files = find_audio_files(tmp_path / "task")
    assert len(files) == 6 and all("16000" in f.parts for f in files)
    assert select_evenly(files, 3) == [files[0], files[2], files[5]]
    assert select_evenly(files, 10) == files
    clips = load_spec_clips(files, 200, seed=0)
    batch, loaded, skipped = clips.spec, clips.paths, clips.skipped
    assert batch.shape == (5, 1, 200, 80) and len(loaded) == 5
    assert [p.name for p, _ in skipped] == ["broken.wav"]
    # Per-clip normalisation happens before cropping: each long clip's crop is near-standard.
    assert abs(float(batch[-1].mean())) < 0.5
    with pytest.raises(FileNotFoundError):
        find_audio_files(tmp_path / "missing")


def _add_bad_clips(folder: Path) -> dict[str, str]:
    """One file of each kind of bad clip in `folder`: name -> the problem its reason states."""
    (folder / "corrupt.wav").write_bytes(b"RIFF, but not audio")
    sf.write(folder / "short.wav", np.zeros(10, np.float32), 16000)
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = np.full(8000, 0.1, np.float32)
    nan[7] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    return {
        "corrupt.wav": "could not decode audio",
        "empty.wav": "audio is empty",
        "nan.wav": "NaN or Inf",
        "short.wav": "audio too short: 10 samples",
    }


def test_every_kind_of_bad_clip_is_skipped_and_named(tmp_path):
    _write_task(tmp_path / "task", n=2)
    bad = _add_bad_clips(tmp_path / "task" / "16000" / "train")
    files = find_audio_files(tmp_path / "task")
    clips = load_spec_clips(files, 200, seed=0)
    assert [p.name for p in clips.paths] == ["0.wav", "1.wav"] and clips.spec.shape[0] == 2
    assert sorted(p.name for p, _ in clips.skipped) == sorted(bad)
    for path, reason in clips.skipped:
        assert reason.startswith(f"{path}: ") and bad[path.name] in reason, reason


def test_cli_analyze_names_each_skipped_clip(tmp_path, capsys):
    from mwmae.cli import main

    _write_task(tmp_path / "task", n=2)
    train = tmp_path / "task" / "16000" / "train"
    (train / "corrupt.wav").write_bytes(b"RIFF, but not audio")
    sf.write(train / "short.wav", np.zeros(10, np.float32), 16000)
    mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1).save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    argv = ["analyze", "--model", str(tmp_path / "m"), "--audio", str(tmp_path / "task")]
    rc = main([*argv, "--out", str(out), "--part", "encoder", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {train / 'corrupt.wav'}: " in err
    assert f"warning: skipped {train / 'short.wav'}: " in err
    assert "audio too short: 10 samples" in err
    record = json.loads((out / "analysis.json").read_text())
    assert sorted(Path(s["path"]).name for s in record["skipped"]) == ["corrupt.wav", "short.wav"]
    assert len(record["clips"]) == 2


def test_cli_analyze(tmp_path, capsys):
    from mwmae.cli import main

    _write_task(tmp_path / "task", n=4)
    torch.manual_seed(0)
    mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1).save_pretrained(tmp_path / "mw")
    mwmae.create_model("mae_tiny_4x16", depth=1, decoder_depth=1).save_pretrained(tmp_path / "ma")
    out = tmp_path / "out"
    rc = main(
        [
            "analyze",
            "--model",
            str(tmp_path / "ma"),
            "--model",
            str(tmp_path / "mw"),
            "--audio",
            str(tmp_path / "task"),
            "--out",
            str(out),
            "--num-clips",
            "3",
            "--num-reconstructions",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "analysed 3 clips" in printed and "pwcca_decoder.png" in printed
    record = json.loads((out / "analysis.json").read_text())
    assert [m["kind"] for m in record["models"]] == ["MAE", "MW-MAE"]
    mw = record["models"][1]
    dec = mw["attention_entropy"]["decoder"]
    assert dec["window_sizes"] == [[2, 5, 10, 25, 50, 125, 0, 0]]
    sim = mw["head_similarity"]["decoder"]
    assert np.array(sim["matrix"]).shape == (8, 8)
    assert [lab["window"] for lab in sim["labels"]] == [2, 5, 10, 25, 50, 125, 0, 0]
    assert len(mw["reconstruction"]["masked_mse"]) == 2
    for name in [*record["figures"].values(), mw["reconstruction"]["figure"]]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    arrays = np.load(out / "analysis_arrays.npz")
    key = [k for k in arrays.files if k.endswith("decoder/entropy_per_query")][1]
    per_query = arrays[key]
    assert per_query.shape == (1, 8, 3 * 250)
    np.testing.assert_allclose(per_query.mean(-1), dec["mean_entropy"], rtol=1e-5)
    # Recomputing from the library gives the same numbers as the JSON.
    spec = load_spec_clips([Path(p) for p in record["clips"]], 200, seed=0).spec
    direct = attention_entropy(mwmae.from_pretrained(tmp_path / "mw"), spec, "decoder")
    np.testing.assert_allclose(direct.mean, dec["mean_entropy"], rtol=1e-5)


def test_cli_errors(tmp_path, capsys):
    from mwmae.cli import main

    assert (
        main(
            [
                "analyze",
                "--model",
                str(tmp_path / "nope"),
                "--audio",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--help"])
    assert exc.value.code == 0
    assert "--num-clips" in capsys.readouterr().out


def test_run_analysis_raises_bad_input_as_mwmae_errors(tmp_path):
    from mwmae.analysis.report import run_analysis
    from mwmae.errors import ConfigError, InputError, MissingFileError

    with pytest.raises(ConfigError, match="--num-clips must be at least 2"):
        run_analysis([tmp_path / "m"], tmp_path, tmp_path / "o", num_clips=1)
    with pytest.raises(ConfigError, match="part"):
        run_analysis([tmp_path / "m"], tmp_path, tmp_path / "o", part="middle")
    with pytest.raises(MissingFileError, match="config.json"):
        run_analysis([tmp_path / "m"], tmp_path, tmp_path / "o", progress=False)
    mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1).save_pretrained(tmp_path / "m")
    with pytest.raises(MissingFileError, match="no such file or folder"):
        run_analysis([tmp_path / "m"], tmp_path / "nope", tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="1 --label for 2 --model"):
        run_analysis([tmp_path / "m"] * 2, tmp_path, tmp_path / "o", labels=["a"], progress=False)
    assert not (tmp_path / "o").exists()
