"""mwmae.convert: the Flax msgpack reader/writer, checkpoint discovery, architecture inference,
error reporting, export back to the reference layout, and the CLI commands."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from reference_fixtures import REF, STEMS, reference_run_dir

import mwmae
from mwmae import cli
from mwmae.convert import (
    FlaxCheckpointError,
    OfficialConfigError,
    OfficialWeightsError,
    convert_official,
    export_flax,
    flatten_tree,
    flax_msgpack,
    from_official,
    infer_config,
    locate_checkpoint,
    msgpack_restore,
    msgpack_serialize,
    official_layout,
    official_run_config,
    read_checkpoint,
    read_msgpack_file,
    unflatten_tree,
    write_msgpack_file,
)
from mwmae.models import ModelConfig, preset_config

RUN = REF / "mwmae_small_4x16_shift_run"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference_ckpts")


def _state(ckpt: Path) -> dict:
    return msgpack_restore(ckpt.read_bytes())


def _write_run(tmp: Path, tree: dict, config: dict | None = None, step: int = 0) -> Path:
    write_msgpack_file(tree, tmp / f"checkpoint_{step}")
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config))
    return tmp


def _run_config() -> dict:
    return json.loads((RUN / "config.json").read_text())


def _same_state_dict(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _virtual(shape: tuple[int, ...]) -> np.ndarray:
    """A zero-stride float32 array of any shape (no memory): enough for shape-only inference."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, [0] * len(shape))


def _virtual_params(config: ModelConfig) -> dict[str, np.ndarray]:
    return {p: _virtual(s.flax_shape) for p, s in official_layout(config).items()}


# --------------------------------------------------------------------------------------------
# The msgpack format
# --------------------------------------------------------------------------------------------
def test_real_checkpoint_round_trips_byte_for_byte(tmp_path: Path) -> None:
    data = (RUN / "checkpoint_3").read_bytes()
    tree = msgpack_restore(data)
    assert sorted(tree) == [
        "aux_rng_keys",
        "batch_stats",
        "buffers",
        "dynamic_scale",
        "frozen_params",
        "opt_state",
        "params",
        "step",
    ]
    assert tree["dynamic_scale"] is None and tree["batch_stats"] == {}
    assert int(tree["step"]) == 3 and tree["step"].dtype == np.int32
    assert sorted(tree["opt_state"]) == ["0", "1", "2"]
    kernel = tree["params"]["patch_embed"]["proj"]["kernel"]
    assert kernel.shape == (4, 16, 1, 64) and kernel.dtype == np.float32
    assert msgpack_serialize(tree) == data
    write_msgpack_file(tree, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_ndarray_records_follow_the_flax_layout() -> None:
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    packed = msgpack.unpackb(msgpack_serialize({"a": arr}), raw=False)
    ext = packed["a"]
    assert isinstance(ext, msgpack.ExtType) and ext.code == 1
    shape, dtype, raw = msgpack.unpackb(ext.data, raw=False)
    assert shape == [2, 3] and dtype == "int16" and raw == arr.tobytes("C")
    # Fortran-ordered input is written in C order.
    restored = msgpack_restore(msgpack_serialize({"a": np.asfortranarray(arr)}))
    np.testing.assert_array_equal(restored["a"], arr)


def test_scalars_tuples_none_complex_and_bfloat16() -> None:
    tree = {
        "s": np.float32(1.5),
        "i": 7,
        "t": (np.zeros(2), [1, 2]),
        "n": None,
        "c": 1 + 2j,
        "e": {},
        "b": True,
    }
    back = msgpack_restore(msgpack_serialize(tree))
    assert isinstance(back["s"], np.float32) and back["s"] == 1.5
    assert back["i"] == 7 and back["n"] is None and back["c"] == 1 + 2j and back["b"] is True
    assert back["e"] == {}
    np.testing.assert_array_equal(back["t"]["0"], np.zeros(2))
    assert back["t"]["1"] == {"0": 1, "1": 2}
    # numpy scalars are ExtType 3.
    assert msgpack.unpackb(msgpack_serialize({"s": np.float32(1.5)}))["s"].code == 3
    # bfloat16 (what the reference's bf16 arrays are called) is widened exactly to float32.
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    payload = msgpack.packb(([2, 2], "bfloat16", bf16), use_bin_type=True)
    data = msgpack.packb({"w": msgpack.ExtType(1, payload)}, use_bin_type=True)
    out = msgpack_restore(data)["w"]
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out.reshape(-1), values)


def test_large_arrays_are_chunked_like_flax(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flax_msgpack, "MAX_CHUNK_BYTES", 64)
    arr = np.arange(50, dtype=np.float32).reshape(5, 10)
    raw = msgpack.unpackb(msgpack_serialize({"w": arr}), raw=False)
    assert raw["w"]["__msgpack_chunked_array__"] is True
    assert raw["w"]["shape"] == {"0": 5, "1": 10} and len(raw["w"]["chunks"]) == 4  # 16 floats each
    np.testing.assert_array_equal(msgpack_restore(msgpack_serialize({"w": arr}))["w"], arr)


def test_reading_selected_keys_skips_the_rest() -> None:
    tree = read_msgpack_file(RUN / "checkpoint_3", keys={"params", "step"})
    assert sorted(tree) == ["params", "step"]
    full = msgpack_restore((RUN / "checkpoint_3").read_bytes())
    flat, flat_full = flatten_tree(tree["params"]), flatten_tree(full["params"])
    assert flat.keys() == flat_full.keys()
    assert all(np.array_equal(flat[k], flat_full[k]) for k in flat)
    rebuilt = unflatten_tree(flat)
    assert flatten_tree(rebuilt).keys() == flat.keys()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\xc1\xc1 not msgpack", "not a Flax msgpack checkpoint"),
        (msgpack.packb([1, 2, 3]), "expected a map"),
        (msgpack.packb({"params": {"a": 1}})[:-1], "truncated"),
        (msgpack.packb({"params": {"a": 1}}) + b"\x00", "extra data"),
    ],
)
def test_unreadable_files_name_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "checkpoint_1"
    path.write_bytes(content)
    with pytest.raises(FlaxCheckpointError, match=message):
        read_msgpack_file(path)


# --------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------
def test_run_directory_picks_the_latest_step_numerically(tmp_path: Path) -> None:
    for name in (
        "checkpoint_2",
        "checkpoint_10",
        "checkpoint_9",
        "checkpoint_tmp",
        "checkpoint_11.orbax-checkpoint-tmp-1",
        "other_100",
    ):
        write_msgpack_file({"step": 0}, tmp_path / name)
    loc = locate_checkpoint(tmp_path)
    assert loc.file.name == "checkpoint_10" and loc.step == 10 and loc.kind == "legacy"
    assert locate_checkpoint(tmp_path, step=9).file.name == "checkpoint_9"
    with pytest.raises(FlaxCheckpointError, match=r"no checkpoint for step 5.*\[2, 9, 10\]"):
        locate_checkpoint(tmp_path, step=5)
    with pytest.raises(FlaxCheckpointError, match="step 10, not of step 2"):
        locate_checkpoint(tmp_path / "checkpoint_10", step=2)


def test_missing_and_empty_locations(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        locate_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        convert_official(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FlaxCheckpointError, match="no Flax checkpoint in this directory"):
        convert_official(tmp_path)


def test_orbax_directory_with_an_aggregate_msgpack_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint_3").mkdir(parents=True)
    shutil.copy(RUN / "checkpoint_3", run / "checkpoint_3" / "checkpoint")
    shutil.copy(RUN / "config.json", run / "config.json")
    loc = locate_checkpoint(run)
    assert loc.kind == "orbax" and loc.step == 3 and loc.run_dir == run
    via_run = convert_official(run)
    via_dir = convert_official(run / "checkpoint_3")  # the Orbax directory itself
    _same_state_dict(via_run, convert_official(RUN))
    _same_state_dict(via_dir, via_run)
    assert via_dir.config.shift_windows  # config.json one level up was found


def test_orbax_tensorstore_layouts_are_refused_clearly(tmp_path: Path) -> None:
    # Aggregate file whose arrays live in Tensorstore (placeholders).
    d = tmp_path / "run" / "checkpoint_1"
    d.mkdir(parents=True)
    write_msgpack_file(
        {"params": {"pos_embed": "PLACEHOLDER://params.pos_embed"}, "step": 1}, d / "checkpoint"
    )
    with pytest.raises(FlaxCheckpointError, match="Tensorstore.*params/pos_embed"):
        convert_official(tmp_path / "run")
    # OCDBT layout (no aggregate file at all).
    d2 = tmp_path / "ocdbt" / "checkpoint_2"
    (d2 / "d").mkdir(parents=True)
    (d2 / "manifest.ocdbt").write_bytes(b"\0")
    (d2 / "_METADATA").write_text("{}")
    with pytest.raises(FlaxCheckpointError, match="without tensorstore"):
        convert_official(tmp_path / "ocdbt")


# --------------------------------------------------------------------------------------------
# Conversion: inputs, errors, inference
# --------------------------------------------------------------------------------------------
def test_step_selection_in_a_run_directory(tmp_path: Path, ckpt_root: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(RUN / "checkpoint_3", run / "checkpoint_3")
    shutil.copy(
        reference_run_dir("mwmae_small_4x16_shift", ckpt_root) / "checkpoint_0",
        run / "checkpoint_0",
    )
    shutil.copy(RUN / "config.json", run / "config.json")
    latest, first = convert_official(run), convert_official(run, step=0)
    assert latest.config.extra["official"]["step"] == 3
    assert first.config.extra["official"]["step"] == 0
    _same_state_dict(latest, convert_official(RUN))
    assert not torch.equal(latest.pos_embed, first.pos_embed)  # trained for 3 steps
    _same_state_dict(first, convert_official(run / "checkpoint_0"))


def test_from_official_and_save_pretrained(tmp_path: Path) -> None:
    model = convert_official(RUN, out=tmp_path / "out")
    assert not model.training
    loaded = mwmae.from_pretrained(tmp_path / "out")
    _same_state_dict(model, loaded)
    assert loaded.config.extra["official"]["step"] == 3
    assert loaded.config == model.config
    _same_state_dict(mwmae.from_official(RUN), model)
    _same_state_dict(from_official(RUN, step=3), model)


def test_without_config_json_shift_defaults_to_false_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copy(RUN / "checkpoint_3", tmp_path / "checkpoint_3")
    with caplog.at_level(logging.WARNING, logger="mwmae.convert"):
        model = convert_official(tmp_path / "checkpoint_3")
    meta = model.config.extra["official"]
    assert model.config.shift_windows is False
    assert meta["config_file"] is None
    assert meta["shift_windows_source"].startswith("default")
    assert any("shifting_windows" in w for w in meta["warnings"])
    assert any("shifting_windows" in r.getMessage() for r in caplog.records)
    # Windows and heads still inferred: the decoder's 6 tables then the two global heads.
    assert model.config.decoder_window_sizes == [2, 5, 10, 25, 50, 125, 0, 0]


def _modified_run(tmp_path: Path, edit, config_edit=None) -> Path:
    tree = _state(RUN / "checkpoint_3")
    params = flatten_tree(tree["params"])
    edit(params)
    tree["params"] = unflatten_tree(params)
    config = _run_config()
    if config_edit is not None:
        config_edit(config["model"]["model_args"])
    return _write_run(tmp_path, tree, config, step=3)


def test_unexpected_parameters_are_listed(tmp_path: Path) -> None:
    def add(p):
        p["head/kernel"] = np.zeros((64, 527), np.float32)
        p["fc_norm/scale"] = np.ones(64, np.float32)

    with pytest.raises(
        OfficialWeightsError,
        match=r"unexpected parameters \(2\).*fc_norm/scale"
        r".*head/kernel",
    ):
        convert_official(_modified_run(tmp_path, add))


def test_missing_parameters_are_listed(tmp_path: Path) -> None:
    def drop(p):
        del p["encoder_block_01/Mlp_0/Dense_1/bias"]
        del p["decoder_block_00/wmha_block/attn_heads_5/relative_position_bias_table"]

    # The decoder's other block keeps head 5's table, so the inferred windows stay right and
    # both holes are reported.
    with pytest.raises(OfficialWeightsError) as err:
        convert_official(_modified_run(tmp_path, drop))
    text = str(err.value)
    assert "missing parameters (2)" in text
    assert "encoder_block_01/Mlp_0/Dense_1/bias" in text
    assert "decoder_block_00/wmha_block/attn_heads_5/relative_position_bias_table" in text


def test_shape_mismatches_are_listed(tmp_path: Path) -> None:
    def reshape(p):
        p["decoder_norm/scale"] = np.ones(65, np.float32)
        p["encoder_block_01/Attention_0/Dense_0/kernel"] = np.zeros((64, 96), np.float32)

    with pytest.raises(
        OfficialWeightsError,
        match=r"shape mismatches \(2\).*"
        r"encoder_block_01/Attention_0/Dense_0/kernel"
        r": \(64, 96\), expected \(64, 192\)",
    ):
        convert_official(_modified_run(tmp_path, reshape))


def test_not_an_mae_parameter_tree(tmp_path: Path) -> None:
    _write_run(
        tmp_path,
        {"params": {"Dense_0": {"kernel": np.zeros((3, 4), np.float32)}}, "step": np.int32(0)},
    )
    with pytest.raises(OfficialWeightsError, match="not an official MW-MAE/MAE parameter tree"):
        convert_official(tmp_path)
    bad_table = tmp_path / "table"
    bad_table.mkdir()

    def even(p):
        p["decoder_block_00/wmha_block/attn_heads_0/relative_position_bias_table"] = np.zeros(
            (4, 1), np.float32
        )

    with pytest.raises(OfficialWeightsError, match=r"shape \(4, 1\).*\(2w-1, 1\)"):
        convert_official(_modified_run(bad_table, even))


def test_a_msgpack_map_without_parameters(tmp_path: Path) -> None:
    _write_run(tmp_path, {"step": 3, "opt_state": {}}, step=3)
    with pytest.raises(FlaxCheckpointError, match="without parameters"):
        convert_official(tmp_path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("embed_dim", 128, "model_args.embed_dim = 128, parameters give 64"),
        ("decoder_window_sizes", [2, 5, 10, 25, 50, 0, 0, 0], "disagree with the decoder relative"),
        ("window_sizes", [5, 25], "encoder blocks use plain attention"),
        ("use_cls_token", True, "parameters have no cls_token"),
        ("patch_size", [8, 16], "patch_size = \\[8, 16\\], parameters give \\[4, 16\\]"),
        ("decoder_num_heads", 4, "num_heads 4 != 8 window sizes"),
        ("img_size", [400, 80], "gives 500 patches, but pos_embed has 250"),
    ],
)
def test_inconsistent_config_json_is_an_error(
    tmp_path: Path, key: str, value, message: str
) -> None:
    def set_(args):
        args[key] = value

    with pytest.raises(OfficialConfigError, match=message):
        convert_official(_modified_run(tmp_path, lambda p: None, set_))


def test_unreadable_config_json(tmp_path: Path) -> None:
    shutil.copy(RUN / "checkpoint_3", tmp_path / "checkpoint_3")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(OfficialConfigError, match="config.json: unreadable run config"):
        convert_official(tmp_path)


# Architectures at full size: inference works on shapes alone (zero-stride arrays).
@pytest.mark.parametrize(
    "preset",
    ["mwmae_base_4x16", "mae_base_4x16", "mwmae_tiny_8x16", "mwmae_large_4x8", "mae_huge_4x16"],
)
def test_inference_recovers_preset_architectures(preset: str) -> None:
    config = preset_config(preset)
    params = _virtual_params(config)
    inferred, meta = infer_config(params, official_run_config(config), name=preset)
    for field in (
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "decoder_embed_dim",
        "decoder_depth",
        "decoder_num_heads",
        "encoder_window_sizes",
        "decoder_window_sizes",
        "shift_windows",
        "use_cls_token",
        "mask_ratio",
        "num_frames",
        "num_mels",
        "mlp_ratio",
    ):
        assert getattr(inferred, field) == getattr(config, field), field
    assert meta["warnings"] == []
    # Without config.json the paper's presets are still recovered (with warnings).
    bare, meta = infer_config(params, None)
    assert (bare.num_heads, bare.decoder_num_heads) == (config.num_heads, config.decoder_num_heads)
    assert bare.decoder_window_sizes == config.decoder_window_sizes
    assert meta["warnings"]


def test_parameter_counts_of_the_reference_base_models() -> None:
    def count(name: str) -> int:
        return sum(
            int(np.prod(s.flax_shape)) for s in official_layout(preset_config(name)).values()
        )

    assert count("mwmae_base_4x16") == 92_814_576
    assert count("mae_base_4x16") == 92_814_784
    assert count("mwmae_tiny_4x16") == 12_694_704


def test_published_style_config_names_the_size_in_arch() -> None:
    config = preset_config("mwmae_base_4x16")
    params = _virtual_params(config)
    run_config = {
        "model": {
            "arch": "mae_base",
            "model_args": {
                "img_size": [200, 80],
                "patch_size": [4, 16],
                "mask_ratio": 0.8,
                "decoder_window_sizes": [2, 5, 10, 25, 50, 125, 0, 0],
            },
        },
        "opt": {},
    }
    inferred, meta = infer_config(params, run_config)
    assert (inferred.num_heads, inferred.decoder_num_heads, inferred.depth) == (12, 8, 12)
    assert inferred.shift_windows is False and meta["warnings"] == []
    run_config["model"]["arch"] = "mae_small"
    with pytest.raises(OfficialConfigError, match="arch mae_small is 384-d with 12 blocks"):
        infer_config(params, run_config)


def test_meta_device_build_for_large_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from mwmae.convert import official

    monkeypatch.setattr(official, "META_BUILD_MIN_PARAMS", 0)
    model = convert_official(RUN)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert model.pos_embed.requires_grad and isinstance(model.pos_embed, torch.nn.Parameter)
    monkeypatch.undo()
    _same_state_dict(model, convert_official(RUN))


def test_models_with_init_only_tensors_are_built_normally(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model whose __init__ makes a tensor outside the state dict cannot be built on the meta
    # device; the converter must notice and build it for real.
    from mwmae.convert import official
    from mwmae.models import MaskedAutoencoder

    class WithProbe(MaskedAutoencoder):
        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("probe", torch.ones(3), persistent=False)

    monkeypatch.setattr(official, "MaskedAutoencoder", WithProbe)
    monkeypatch.setattr(official, "META_BUILD_MIN_PARAMS", 0)  # the large-model path
    model = convert_official(RUN)
    assert isinstance(model, WithProbe) and not model.probe.is_meta
    assert not any(p.is_meta for p in model.parameters())
    monkeypatch.undo()
    _same_state_dict(model, convert_official(RUN))


# --------------------------------------------------------------------------------------------
# Export back to the reference layout
# --------------------------------------------------------------------------------------------
def _leaves(tree: dict) -> dict[str, tuple]:
    return {
        k: (v.shape, v.dtype) if isinstance(v, np.ndarray) else type(v)
        for k, v in flatten_tree(tree).items()
    }


@pytest.mark.parametrize("stem", STEMS)
def test_export_round_trip_gives_identical_arrays(
    stem: str, tmp_path: Path, ckpt_root: Path
) -> None:
    run = reference_run_dir(stem, ckpt_root)
    original = _state(run / "checkpoint_0")
    model = convert_official(run)

    path = export_flax(model, tmp_path / "vars")
    assert path == tmp_path / "vars" / "checkpoint_0"
    exported = _state(path)
    assert sorted(exported) == ["buffers", "params"]
    for part in ("params", "buffers"):
        ours, ref = flatten_tree(exported[part]), flatten_tree(original[part])
        assert ours.keys() == ref.keys(), part
        for k in ref:
            if isinstance(ref[k], dict):  # an empty collection (no windowed heads)
                assert ours[k] == ref[k] == {}, k
            else:
                assert ours[k].dtype == ref[k].dtype and np.array_equal(ours[k], ref[k]), k

    # The TrainState layout has the reference file's exact tree (paths, shapes, dtypes).
    full = _state(export_flax(model, tmp_path / "state", train_state=True))
    assert _leaves(full) == _leaves(original)
    assert msgpack_serialize(full["params"]) == msgpack_serialize(original["params"])
    assert msgpack_serialize(full["buffers"]) == msgpack_serialize(original["buffers"])

    # And back again: the written config.json restores the same architecture and weights.
    again = convert_official(tmp_path / "state")
    _same_state_dict(again, model)
    for field in (
        "shift_windows",
        "encoder_window_sizes",
        "decoder_window_sizes",
        "num_heads",
        "decoder_num_heads",
        "use_cls_token",
    ):
        assert getattr(again.config, field) == getattr(model.config, field), field


def test_export_keeps_the_imported_step_and_refuses_non_reference_models(tmp_path: Path) -> None:
    model = convert_official(RUN)
    assert export_flax(model, tmp_path / "a").name == "checkpoint_3"
    assert export_flax(model, tmp_path / "b", step=7).name == "checkpoint_7"
    maeast = mwmae.create_model("maeast_patch_tiny", depth=1, decoder_depth=1)
    with pytest.raises(OfficialConfigError, match="InfoNCE"):
        export_flax(maeast, tmp_path / "c")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def test_cli_convert_export_inspect(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    assert cli.main(["convert-official", str(RUN), str(out)]) == 0
    text = capsys.readouterr().out
    assert "step 3" in text and "245,592 parameters" in text
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    _same_state_dict(mwmae.from_pretrained(out), convert_official(RUN))

    assert (
        cli.main(["convert-official", str(RUN), str(tmp_path / "m2"), "--step", "3", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 3 and summary["architecture"]["shift_windows"] is True

    assert cli.main(["export-flax", str(out), str(tmp_path / "flax"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert Path(summary["checkpoint"]).name == "checkpoint_3"
    assert cli.main(["inspect-flax", str(tmp_path / "flax"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["total_size"] == 245_592 and listing["step"] == 3

    assert cli.main(["convert-official", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwmae convert-official: error:") and "missing" in err
    assert not (tmp_path / "x").exists()


def test_cli_prints_assumptions_as_warnings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copy(RUN / "checkpoint_3", tmp_path / "checkpoint_3")
    assert (
        cli.main(["convert-official", str(tmp_path / "checkpoint_3"), str(tmp_path / "out")]) == 0
    )
    err = capsys.readouterr().err
    assert "warning: shifting_windows cannot be inferred" in err
    assert err.count("shifting_windows") == 1  # printed once, not also by the logging fallback


def test_cli_help_lists_the_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["convert-official", "--help"])
    assert "--step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["export-flax", "--help"])
    assert "--train-state" in capsys.readouterr().out


def test_read_checkpoint_reports_location() -> None:
    tree, loc = read_checkpoint(RUN, keys={"step"})
    assert loc.step == 3 and int(tree["step"]) == 3 and "params" not in tree


# --------------------------------------------------------------------------------------------
# Integrity of converted checkpoints (msgpack has no checksum)
# --------------------------------------------------------------------------------------------
_TABLE = "decoder_block_00/wmha_block/attn_heads_0/relative_position_bias_table"


def _damaged_run(tmp_path: Path, damage) -> Path:
    data = bytearray((RUN / "checkpoint_3").read_bytes())
    params = flatten_tree(msgpack_restore(bytes(data))["params"])
    damage(data, params)
    (tmp_path / "checkpoint_3").write_bytes(bytes(data))
    shutil.copy(RUN / "config.json", tmp_path / "config.json")
    return tmp_path


def test_converted_config_records_the_source_sha256(tmp_path: Path) -> None:
    import hashlib

    convert_official(RUN, out=tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    digest = hashlib.sha256((RUN / "checkpoint_3").read_bytes()).hexdigest()
    assert meta["model"]["extra"]["official"]["source_sha256"] == digest


def test_a_byte_that_breaks_an_array_shape_is_an_integrity_error(tmp_path: Path) -> None:
    def shape(data, params):
        off = bytes(data).find(params[_TABLE].tobytes())
        # ... 0x92 0x03 0x01 (shape [3, 1]) 0xa7 "float32" 0xc4 0x0c (12 bytes) raw
        assert data[off - 12] == 3 and data[off - 10 : off - 2] == b"\xa7float32"
        data[off - 12] = 5

    run = _damaged_run(tmp_path, shape)
    with pytest.raises(mwmae.errors.IntegrityError, match=r"checkpoint_3: .*12 bytes.*\(5, 1\)"):
        convert_official(run)


def test_a_byte_that_breaks_msgpack_is_an_integrity_error(tmp_path: Path) -> None:
    def header(data, params):
        off = bytes(data).find(params[_TABLE].tobytes())
        data[off - 2] = 0xC1  # a byte msgpack never uses

    with pytest.raises(mwmae.errors.IntegrityError, match="checkpoint_3"):
        convert_official(_damaged_run(tmp_path, header))


def test_a_byte_that_makes_a_nan_or_inf_names_the_parameter(tmp_path: Path) -> None:
    name = "patch_embed/proj/kernel"

    def exponent(data, params):
        raw = params[name].tobytes()
        off = bytes(data).find(raw)
        # the first float32 whose exponent's lowest bit is set: its top byte 0x7f/0xff -> Inf/NaN
        i = next(j for j in range(0, len(raw), 4) if raw[j + 2] & 0x80)
        data[off + i + 3] |= 0x7F

    with pytest.raises(OfficialWeightsError, match=f"checkpoint_3: {name}: 1 NaN or Inf"):
        convert_official(_damaged_run(tmp_path, exponent))
