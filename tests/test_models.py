"""Presets, shapes, masking, losses, overfitting, save/load."""

import json

import numpy as np
import pytest
import torch

import mwmae
from mwmae.models import chunk_masking_noise

TINY = {"depth": 1, "decoder_depth": 1}


@pytest.mark.parametrize(
    "name",
    [
        "mae_tiny_4x16",
        "mwmae_tiny_4x16",
        "mwmae_tiny_8x16",
        "mwmae_tiny_8x8",
        "mwmae_tiny_4x8",
        "mwmae_tiny_5x5",
        "maeast_patch_tiny",
        "maeast_frame_tiny",
        "ssast_patch_tiny",
        "ssast_frame_tiny",
        "ssast_tiny_4x16",
    ],
)
def test_shapes_and_mask_counts(name):
    model = mwmae.create_model(name, **TINY)
    c = model.config
    B = 2
    spec = torch.randn(B, 1, c.num_frames, c.num_mels)
    out = model(spec)
    L, P = c.num_patches, c.patch_size[0] * c.patch_size[1]
    assert out.pred.shape == out.target.shape == (B, L, P)
    assert out.mask.shape == (B, L)
    assert torch.all(out.mask.sum(1) == L - c.len_keep())
    assert torch.isfinite(out.loss)
    latent, mask, ids_restore, ids_keep = model.forward_encoder(spec)
    expected_tokens = L if c.encoder_sees_all else c.len_keep()
    assert latent.shape == (B, expected_tokens + int(c.use_cls_token), c.embed_dim)
    gt, gf = c.grid_size
    assert model.embed(spec).shape == (B, gt, gf * c.embed_dim)
    if c.contrastive_weight > 0:
        assert out.contrastive_loss is not None and torch.isfinite(out.contrastive_loss)


def test_paper_presets_match_reference_facts():
    mw = mwmae.create_model("mwmae_base_4x16")
    n_params = sum(p.numel() for p in mw.parameters())
    assert n_params == 92_814_576  # the reference's MW-MAE-B 4x16 count
    assert mw.config.decoder_window_sizes == [2, 5, 10, 25, 50, 125, 0, 0]
    assert not mw.config.use_cls_token and mw.config.encoder_window_sizes is None
    mae = mwmae.create_model("mae_base_4x16")
    assert sum(p.numel() for p in mae.parameters()) == 92_814_784
    assert mae.config.use_cls_token
    assert mw.config.len_keep() == 50  # 250 * 0.2, the reference's rounding
    assert mw.pos_embed.requires_grad and mw.decoder_pos_embed.requires_grad


def test_list_models_and_unknown_names():
    names = mwmae.list_models()
    for required in [
        "mae_tiny_4x16",
        "mwmae_tiny_4x16",
        "mae_base_4x16",
        "mwmae_base_4x16",
        "maeast_base_patch",
        "maeast_base_frame",
        "ssast_base_patch",
    ]:
        assert required in names
    with pytest.raises(ValueError, match="unknown model"):
        mwmae.create_model("mwmae_gigantic")
    with pytest.raises(ValueError, match="^unknown model config keys: 'windowz'"):
        mwmae.create_model("mwmae_tiny_4x16", windowz=[1])  # said once, the key named


def test_bad_window_config_is_an_error():
    with pytest.raises(ValueError, match="does not divide"):
        mwmae.create_model("mwmae_tiny_4x16", decoder_window_sizes=[3, 5, 10, 25, 50, 125, 0, 0])
    with pytest.raises(ValueError, match="entries for"):
        mwmae.create_model("mwmae_tiny_4x16", decoder_window_sizes=[2, 0])


def test_patch_override_recomputes_default_windows():
    model = mwmae.create_model("mwmae_tiny_4x16", patch_size=(8, 16), **TINY)
    assert model.config.decoder_window_sizes == [5, 25, 0, 0]
    assert model.config.decoder_num_heads == 4


# Today's resolved decoders, written out (the paper's Table 4 head counts).
W250 = [2, 5, 10, 25, 50, 125, 0, 0]
W125 = [5, 25, 0, 0]
W500 = [2, 4, 5, 10, 20, 25, 50, 100, 125, 250, 0, 0]
W640 = [2, 4, 5, 8, 10, 16, 20, 32, 40, 64, 80, 128, 160, 320, 0, 0]


@pytest.mark.parametrize(
    "name,overrides,windows",
    [
        ("mwmae_base_4x16", {}, W250),
        ("mwmae_tiny_8x16", {}, W125),
        ("mwmae_small_8x8", {}, W250),
        ("mwmae_medium_4x8", {}, W500),
        ("mwmae_huge_5x5", {}, W640),
        ("mwmae_base_4x16", {"patch_size": (8, 16)}, W125),
        ("mwmae_tiny_8x16", {"patch_size": (4, 8)}, W500),
        ("mwmae_tiny_4x16", {"num_frames": 400}, W500),
    ],
)
def test_auto_windows_resolve_from_the_real_patch_grid(name, overrides, windows):
    from mwmae.models import PRESETS

    assert PRESETS[name]["decoder_window_sizes"] == "auto"
    assert PRESETS[name]["decoder_num_heads"] is None
    config = mwmae.models.preset_config(name, **overrides)
    assert config.decoder_window_sizes == windows
    assert config.decoder_num_heads == len(windows)
    # what is saved holds the concrete values, and reads back equal
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["decoder_window_sizes"] == windows and saved["decoder_num_heads"] == len(windows)
    assert mwmae.ModelConfig.from_dict(saved) == config


def test_auto_windows_in_a_plain_config():
    config = mwmae.ModelConfig(decoder_window_sizes="auto", decoder_num_heads=None)
    assert (config.decoder_window_sizes, config.decoder_num_heads) == (W250, 8)
    config = mwmae.ModelConfig.from_dict(
        {"patch_size": [8, 16], "decoder_window_sizes": "auto", "decoder_num_heads": None}
    )
    assert (config.decoder_window_sizes, config.decoder_num_heads) == (W125, 4)
    assert config.architecture()["decoder_window_sizes"] == W125
    assert mwmae.ModelConfig().decoder_num_heads == 8  # a global decoder keeps 8 heads


def test_explicit_heads_that_do_not_match_auto_windows_are_an_error():
    with pytest.raises(ValueError, match="has 4 entries for 8 heads"):
        mwmae.create_model("mwmae_tiny_4x16", patch_size=(8, 16), decoder_num_heads=8)
    with pytest.raises(ValueError, match="has 8 entries for 4 heads"):
        mwmae.create_model("mwmae_tiny_4x16", decoder_num_heads=4)
    with pytest.raises(ValueError, match=r"decoder_window_sizes: expected .*'auto'"):
        mwmae.create_model("mwmae_tiny_4x16", decoder_window_sizes="global")


def test_wrong_input_shape_is_a_clear_error():
    model = mwmae.create_model("mwmae_tiny_4x16", **TINY)
    with pytest.raises(ValueError, match=r"\(B, 1, 200, 80\)"):
        model(torch.randn(2, 1, 100, 80))


def test_patchify_roundtrip_and_order():
    model = mwmae.create_model("mwmae_tiny_4x16", **TINY)
    spec = torch.randn(2, 1, 200, 80)
    patches = model.patchify(spec)
    torch.testing.assert_close(model.unpatchify(patches), spec)
    # token t * 5 + f holds frames 4t..4t+3 and mels 16f..16f+15, row-major
    t, f = 7, 3
    torch.testing.assert_close(
        patches[1, t * 5 + f], spec[1, 0, 4 * t : 4 * t + 4, 16 * f : 16 * f + 16].reshape(-1)
    )


def test_masking_follows_noise_and_is_stable():
    model = mwmae.create_model("mwmae_tiny_4x16", **TINY)
    noise = torch.rand(3, 250)
    noise[0, :] = 0.5  # all ties: stable argsort keeps the first len_keep tokens
    x = torch.randn(3, 250, 4)
    kept, mask, ids_restore, ids_keep = model.random_masking(x, noise)
    assert torch.equal(ids_keep[0], torch.arange(50))
    for b in (1, 2):
        expected_keep = np.argsort(noise[b].numpy(), kind="stable")[:50]
        assert np.array_equal(ids_keep[b].numpy(), expected_keep)
        assert mask[b, expected_keep].sum() == 0 and mask[b].sum() == 200
        torch.testing.assert_close(kept[b], x[b, expected_keep])


def _masked_neighbours(grid: torch.Tensor) -> float:
    """Mean number of masked 4-neighbours of a masked cell, grids (B, gt, gf) of 0/1."""
    neighbours = torch.zeros_like(grid)
    neighbours[:, 1:] += grid[:, :-1]
    neighbours[:, :-1] += grid[:, 1:]
    neighbours[:, :, 1:] += grid[:, :, :-1]
    neighbours[:, :, :-1] += grid[:, :, 1:]
    return float((neighbours * grid).sum() / grid.sum())


def test_chunked_masking_contiguous_and_ratio():
    gt, gf, len_keep = 50, 5, 62
    g = torch.Generator().manual_seed(3)
    noise = chunk_masking_noise(64, (gt, gf), len_keep, (3, 4, 5), generator=g)
    model = mwmae.create_model("maeast_patch_tiny", **TINY)
    L = gt * gf
    _, mask, _, _ = model.random_masking(torch.zeros(64, L, 1), noise)
    assert torch.all(mask.sum(1) == L - len_keep)
    # contiguity: masked patches have far more masked neighbours than random masking gives
    chunk_score = _masked_neighbours(mask.reshape(64, gt, gf))
    rand_mask = model.random_masking(torch.zeros(64, L, 1), torch.rand(64, L))[1]
    random_score = _masked_neighbours(rand_mask.reshape(64, gt, gf))
    assert chunk_score > random_score + 0.5
    # the frame grid: masked frames form runs, not isolated frames
    noise = chunk_masking_noise(16, (200, 1), 50, (3, 4, 5), generator=g)
    keep_idx = torch.argsort(noise, dim=1, stable=True)[:, :50]
    m = torch.ones(16, 200)
    m.scatter_(1, keep_idx, 0)
    starts = (m[:, 1:] > m[:, :-1]).sum() + m[:, 0].sum()
    assert starts / 16 < 150 / 3  # mean run length >= 3 frames


def test_norm_pix_loss_targets():
    model = mwmae.create_model("mwmae_tiny_4x16", norm_pix_loss=True, **TINY)
    spec = torch.randn(2, 1, 200, 80) * 3 + 1
    target = model.target_patches(spec)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 250), atol=1e-5, rtol=0)
    raw = model.patchify(spec).double()
    var = ((raw - raw.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)  # population
    expected = (raw - raw.mean(-1, keepdim=True)) / (var + 1e-6).sqrt()
    torch.testing.assert_close(target.double(), expected, atol=1e-5, rtol=1e-5)


def test_info_nce_against_loop():
    B, L, P, M = 2, 10, 6, 4
    scores, target = torch.randn(B, L, P), torch.randn(B, L, P)
    ids = torch.stack([torch.randperm(L)[:M] for _ in range(B)])
    ours = mwmae.MaskedAutoencoder.info_nce(scores, target, ids)
    total = 0.0
    for b in range(B):
        for i in range(M):
            logits = torch.stack([scores[b, ids[b, i]] @ target[b, ids[b, j]] for j in range(M)])
            total += -torch.log_softmax(logits, 0)[i]
    torch.testing.assert_close(ours, total / (B * M))


def test_tiny_mwmae_overfits_one_batch():
    torch.manual_seed(0)
    model = mwmae.create_model(
        "mwmae_tiny_4x16", embed_dim=64, num_heads=2, depth=2, decoder_embed_dim=64, decoder_depth=2
    )
    spec = torch.randn(2, 1, 200, 80)
    noise = torch.rand(2, 250)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = model(spec, noise=noise).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first, (first, loss.item())


def test_save_load_roundtrip(tmp_path):
    model = mwmae.create_model("mwmae_tiny_4x16", shift_windows=True, **TINY).eval()
    model.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.bin"))
    loaded = mwmae.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    spec = torch.randn(2, 1, 200, 80)
    noise = torch.rand(2, 250)
    torch.testing.assert_close(loaded.embed(spec), model.embed(spec), rtol=0, atol=0)
    torch.testing.assert_close(
        loaded(spec, noise=noise).loss, model(spec, noise=noise).loss, rtol=0, atol=0
    )


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        mwmae.from_pretrained(tmp_path)
    model = mwmae.create_model("mwmae_tiny_4x16", **TINY)
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["model"]["depth"] = 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing"):
        mwmae.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        mwmae.from_pretrained(tmp_path / "m")


def test_frozen_pos_embed_option():
    model = mwmae.create_model("mwmae_tiny_4x16", trainable_pos_embed=False, **TINY)
    assert not model.pos_embed.requires_grad
    model(torch.randn(1, 1, 200, 80)).loss.backward()
    assert model.pos_embed.grad is None


def test_model_display_name(tmp_path):
    from mwmae.hub import model_display_name

    assert model_display_name(tmp_path / "runs" / "mwmae_tiny" / "final") == "mwmae_tiny"
    assert model_display_name(tmp_path / "my_model") == "my_model"


# --------------------------------------------------------------------------------------------
# Integrity of saved models and strict configs
# --------------------------------------------------------------------------------------------
def _saved(tmp_path, **overrides):
    model = mwmae.create_model("mwmae_tiny_4x16", **{**TINY, **overrides})
    return model, model.save_pretrained(tmp_path / "m")


def _edit_config(folder, edit):
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_saved_digest_matches_the_weights_and_flips_fail(tmp_path):
    import hashlib

    from mwmae.errors import IntegrityError

    _, folder = _saved(tmp_path)
    weights = folder / "model.safetensors"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    data = bytearray(weights.read_bytes())
    for i in range(16):  # 16 flipped bytes in the tensor data, past the header
        data[len(data) // 2 + 97 * i] ^= 0xFF
    weights.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(IntegrityError) as err:
        mwmae.from_pretrained(folder)
    assert "model.safetensors" in str(err.value)
    assert actual in str(err.value) and meta["weights_sha256"] in str(err.value)


def test_edited_architecture_in_config_json_is_named(tmp_path):
    from mwmae.errors import IntegrityError

    _, folder = _saved(tmp_path, depth=1, decoder_depth=1)

    def heads(meta):
        meta["model"]["num_heads"] = 4
        meta["model"]["embed_dim"] = 192

    _edit_config(folder, heads)
    with pytest.raises(
        IntegrityError, match="num_heads: config.json says 4, the weights were saved with 3"
    ):
        mwmae.from_pretrained(folder)
    _edit_config(folder, lambda m: m["model"].update(num_heads=3, norm_pix_loss=True))
    with pytest.raises(IntegrityError, match="norm_pix_loss: config.json says True"):
        mwmae.from_pretrained(folder)
    # The label is not architecture: renaming the model still loads.
    _edit_config(folder, lambda m: m["model"].update(norm_pix_loss=False, name="renamed"))
    assert mwmae.from_pretrained(folder).config.name == "renamed"


def test_config_json_is_read_strictly(tmp_path):
    from mwmae.errors import ConfigError

    _, folder = _saved(tmp_path)
    _edit_config(folder, lambda m: m["model"].update(depth="1"))
    with pytest.raises(ConfigError, match=r"config\.json: model\.depth: expected int, got '1'"):
        mwmae.from_pretrained(folder)
    _edit_config(folder, lambda m: (m["model"].update(depth=1), m.update(colour="red")))
    with pytest.raises(ConfigError, match=r"config\.json: unknown config key 'colour'"):
        mwmae.from_pretrained(folder)
    _edit_config(folder, lambda m: (m.pop("colour"), m["model"].update(windowz=[1])))
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.windowz'"):
        mwmae.from_pretrained(folder)


def test_old_folder_without_digest_loads_with_a_warning(tmp_path, caplog):
    from safetensors.torch import save_file

    model, folder = _saved(tmp_path)
    # What save_pretrained wrote before digests: no weights_sha256, no config in the metadata.
    save_file(dict(model.state_dict()), str(folder / "model.safetensors"), {"format": "pt"})
    _edit_config(folder, lambda m: m.pop("weights_sha256"))
    with caplog.at_level("WARNING", logger="mwmae.hub"):
        loaded = mwmae.from_pretrained(folder)
    assert "no weights_sha256" in caplog.text
    spec = torch.randn(1, 1, 200, 80)
    torch.testing.assert_close(loaded.embed(spec), model.eval().embed(spec), rtol=0, atol=0)


@pytest.mark.parametrize(
    "override,message",
    [
        ({"mask_ratio": 0}, "mask_ratio: 0.0 is out of range"),
        ({"mask_ratio": 1.0}, "mask_ratio: 1.0 is out of range"),
        ({"depth": "1"}, "depth: expected int, got '1'"),
        ({"depth": 1.5}, "depth: expected int"),
        ({"embed_dim": -192}, "embed_dim: -192 is out of range"),
        ({"mlp_ratio": 0}, "mlp_ratio: 0.0 is out of range"),
        ({"patch_size": (0, 16)}, r"patch_size: \(0, 16\) is out of range"),
        ({"contrastive_weight": -1.0}, "contrastive_weight: -1.0 is out of range"),
        ({"shift_windows": 1}, "shift_windows: expected bool"),
        ({"decoder_window_sizes": [-2, 5, 10, 25, 50, 125, 0, 0]}, "out of range"),
    ],
)
def test_model_config_fields_are_typed_and_ranged(override, message):
    from mwmae.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        mwmae.create_model("mwmae_tiny_4x16", **override)


def test_old_preset_names_are_aliases():
    from mwmae.models.config import PRESET_ALIASES

    assert "maeast_patch_base" not in mwmae.list_models()
    for old, new in PRESET_ALIASES.items():
        assert new in mwmae.list_models()
        assert mwmae.models.preset_config(old) == mwmae.models.preset_config(new)
    assert mwmae.models.preset_config("ssast_frame_tiny").name == "ssast_tiny_frame"
