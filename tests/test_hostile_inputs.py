"""Reading any file costs bounded memory and time, and fails in one line naming the file or key.

The rule: reading a file never allocates more than a small multiple of its size plus the model
it describes. Each case is a small file that used to allocate without bound (or crash).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tracemalloc

import pytest
import torch

import mwmae
from mwmae.errors import ConfigError, IntegrityError
from mwmae.pretraining import load_pretrain_config

BASE = ["data.source=/d"]

LAUGHS = "\n".join(
    [f'a0: &a0 ["{"x" * 8}"' + ', "x"' * 8 + "]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
)


@pytest.fixture
def peak_bytes():
    """Peak Python allocations (tracemalloc) of the block, in bytes."""
    tracemalloc.start()
    yield lambda: tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()


def test_nested_aliases_in_yaml_are_refused_in_bounded_memory(tmp_path, peak_bytes):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert path.stat().st_size < 1000  # 9^9 = 387 million strings once expanded
    with pytest.raises(ConfigError, match="more than 100,000 values"):
        load_pretrain_config(path, BASE)
    assert peak_bytes() < 50e6
    with pytest.raises(ConfigError, match="more than 100,000 values"):  # as an override too
        flow = "{" + LAUGHS.replace("\n", ", ") + "}"
        load_pretrain_config("mwmae_tiny_cpu", [*BASE, "data.source=" + flow])


@pytest.mark.parametrize("text", ["a: " + "[" * 3000 + "]" * 3000, "a:\n" + "".join(
    " " * (2 * i) + f"k{i}:\n" for i in range(1, 60)) + " " * 120 + "v: 1"])  # fmt: skip
def test_deeply_nested_yaml_is_one_line(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_pretrain_config(path, BASE)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def _pretrained(tmp_path):
    torch.manual_seed(0)
    model = mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1, embed_dim=32,
                               num_heads=2, decoder_embed_dim=32)  # fmt: skip
    return model.save_pretrained(tmp_path / "m")


def _edit_config(folder, **fields) -> None:
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    meta["model"].update(fields)
    path.write_text(json.dumps(meta))


def _strip_metadata(folder) -> None:
    """Weights as an older mwmae (or another tool) wrote them: no architecture, no digest."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    save_file(load_file(str(weights)), str(weights))
    meta = json.loads((folder / "config.json").read_text())
    meta.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(meta))


HUGE = [
    ({"depth": 1_000_000_000}, "model.depth: 1000000000 is out of range"),  # past the limit
    ({"depth": 1000, "embed_dim": 8192, "num_heads": 8}, "describes a model of about"),
]


@pytest.mark.parametrize("metadata", [True, False])
@pytest.mark.parametrize(("fields", "expected"), HUGE)
def test_config_json_describing_a_huge_model_is_refused_before_building(
    tmp_path, metadata, fields, expected
):
    folder = _pretrained(tmp_path)
    if not metadata:
        _strip_metadata(folder)
    _edit_config(folder, **fields)
    # A fresh process, so that its peak memory is this load's.
    code = (
        "import resource, sys, mwmae\n"
        "try:\n    mwmae.from_pretrained(sys.argv[1])\n"
        "except mwmae.errors.MwmaeError as e:\n    print('refused:', e)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("refused:") and expected in lines[0], out
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # this process: torch + tests
    assert int(lines[1]) < max(baseline, 600_000) * 1.5  # KiB: no gigabytes of blocks


def test_config_json_whose_shapes_differ_from_the_weights_is_refused(tmp_path):
    folder = _pretrained(tmp_path)
    _strip_metadata(folder)
    _edit_config(folder, mlp_ratio=2.0)  # smaller MLPs: within the size bound, wrong shapes
    with pytest.raises(IntegrityError, match="parameter shapes differ"):
        mwmae.from_pretrained(folder)


def test_deeply_nested_config_json_is_one_line(tmp_path):
    folder = _pretrained(tmp_path)
    (folder / "config.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):
        mwmae.from_pretrained(folder)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("batch.global_size=100000000000", "batch.global_size"),
        ("data.num_workers=100000", "data.num_workers"),
        ("schedule.steps=100000000000", "schedule.steps"),
        ("train.num_threads=100000", "train.num_threads"),
    ],
)
def test_absurd_sizes_fail_at_once_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"{key}: .* is out of range"):
        load_pretrain_config("mwmae_tiny_cpu", [*BASE, override])


def test_cuda_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from mwmae.training.distributed import pick_device

    with pytest.raises(ConfigError, match="train.device=cuda, but this machine has no"):
        pick_device("cuda")


def test_weights_and_checkpoint_headers_larger_than_their_bytes(tmp_path, peak_bytes):
    """safetensors and Flax msgpack headers that declare more than the file holds are refused
    before anything of the declared size is allocated."""
    import struct

    from mwmae._io import load_weights
    from mwmae.convert.flax_msgpack import FlaxCheckpointError, read_msgpack_file

    header = json.dumps({"w": {"dtype": "F32", "shape": [100_000, 100_000],
                               "data_offsets": [0, 40_000_000_000]}}).encode()  # fmt: skip
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(IntegrityError, match="w.safetensors: not a readable safetensors file"):
        load_weights(tmp_path / "w.safetensors")
    import msgpack

    # a map whose one value is an array header announcing 2^31 - 1 items, then 10 bytes
    data = b"\x81" + msgpack.packb("params") + b"\xdd" + struct.pack(">I", 2**31 - 1)
    (tmp_path / "checkpoint_1").write_bytes(data + b"\0" * 10)
    with pytest.raises(FlaxCheckpointError, match="checkpoint_1"):
        read_msgpack_file(tmp_path / "checkpoint_1")
    assert peak_bytes() < 50e6
