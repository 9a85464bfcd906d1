"""Official MW-MAE / MAE (JAX/Flax, `SarthakYadav/mwmae-jax-official`) weights <-> this package.

Import: `convert_official(src)` reads a reference run directory (latest `checkpoint_<step>`),
a checkpoint file or an Orbax directory, infers the architecture from the parameter tree (and the
run's `config.json`, cross-checked), maps names and layouts and loads them strictly.
Export: `export_flax(model, out_dir)` writes the reference's names and layouts back.

Layouts (Flax -> torch): Dense kernel (in, out) -> Linear weight (out, in) = kernel.T; patch
conv kernel (kh, kw, in, out) -> Conv2d weight (out, in, kh, kw); per-head relative position
bias table (2w - 1, 1) -> (2w - 1,); LayerNorm scale -> weight; everything else as is.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mwmae._io import sha256_file
from mwmae.errors import ConfigError, IntegrityError
from mwmae.models import ENCODER_SIZES, MaskedAutoencoder, ModelConfig

from .flax_msgpack import (
    CHECKPOINT_PREFIX,
    CheckpointLocation,
    FlaxCheckpointError,
    flatten_tree,
    read_checkpoint,
    read_msgpack_file,
    unflatten_tree,
    write_msgpack_file,
)

log = logging.getLogger(__name__)

RUN_CONFIG_NAME = "config.json"
DEFAULT_NUM_MELS = 80  # the reference's (and this package's) front end
REFERENCE_DECODER_HEADS = 8  # MAEBase.decoder_num_heads default
REFERENCE_MASK_RATIO = 0.8
META_BUILD_MIN_PARAMS = 20_000_000  # build models this large on the meta device
# The reference TrainState's auxiliary RNG streams (helpers/initialization.py), in file order.
AUX_RNG_NAMES = (
    "additive_noise",
    "drop_path",
    "dropout",
    "gumbel",
    "mixup",
    "random_masking",
    "spec_aug",
)

# Layout kinds.
DENSE = "dense"  # Flax (in, out) <-> torch Linear (out, in)
CONV = "conv"  # Flax (kh, kw, in, out) <-> torch Conv2d (out, in, kh, kw)
TABLE = "table"  # Flax (2w - 1, 1) <-> torch (2w - 1,)
SAME = "same"


class OfficialWeightsError(IntegrityError):
    """The parameters do not fit the architecture: missing, unexpected or mis-shaped entries."""


class OfficialConfigError(ConfigError):
    """The run's config.json and the parameters disagree, or the architecture is unsupported."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its Flax path, torch state-dict name, layout kind and Flax shape."""

    flax_path: str
    torch_name: str
    layout: str
    flax_shape: tuple[int, ...]


# Per layout kind: Flax -> torch and torch -> Flax, each the other's inverse (SAME: unchanged).
_LAYOUT_MAPS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], ...]] = {
    DENSE: (lambda a: a.T, lambda a: a.T),
    CONV: (lambda a: a.transpose(3, 2, 0, 1), lambda a: a.transpose(2, 3, 1, 0)),
    TABLE: (lambda a: a.reshape(-1), lambda a: a.reshape(-1, 1)),
}


def to_torch_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    return _LAYOUT_MAPS[layout][0](arr) if layout in _LAYOUT_MAPS else arr


def to_flax_layout(arr: np.ndarray, layout: str) -> np.ndarray:
    return _LAYOUT_MAPS[layout][1](arr) if layout in _LAYOUT_MAPS else arr


# --------------------------------------------------------------------------------------------
# The reference's parameter tree for a given architecture
# --------------------------------------------------------------------------------------------
def _block_specs(
    fp: str, tp: str, dim: int, hidden: int, windows: list[int] | None
) -> list[ParamSpec]:
    specs = [
        ParamSpec(f"{fp}/LayerNorm_0/scale", f"{tp}.norm1.weight", SAME, (dim,)),
        ParamSpec(f"{fp}/LayerNorm_0/bias", f"{tp}.norm1.bias", SAME, (dim,)),
    ]
    # Plain blocks use Attention_0 (Dense_0 = qkv, Dense_1 = proj); MW-MHA blocks wmha_block.
    qkv, proj = (
        ("Attention_0/Dense_0", "Attention_0/Dense_1")
        if windows is None
        else ("wmha_block/qkv", "wmha_block/proj")
    )
    specs += [
        ParamSpec(f"{fp}/{qkv}/kernel", f"{tp}.attn.qkv.weight", DENSE, (dim, 3 * dim)),
        ParamSpec(f"{fp}/{qkv}/bias", f"{tp}.attn.qkv.bias", SAME, (3 * dim,)),
        ParamSpec(f"{fp}/{proj}/kernel", f"{tp}.attn.proj.weight", DENSE, (dim, dim)),
        ParamSpec(f"{fp}/{proj}/bias", f"{tp}.attn.proj.bias", SAME, (dim,)),
    ]
    for h, w in enumerate(windows or []):
        if w > 0:  # global heads (w = 0) have no parameters
            specs.append(
                ParamSpec(
                    f"{fp}/wmha_block/attn_heads_{h}/relative_position_bias_table",
                    f"{tp}.attn.rel_pos_bias.{h}",
                    TABLE,
                    (2 * w - 1, 1),
                )
            )
    specs += [
        ParamSpec(f"{fp}/LayerNorm_1/scale", f"{tp}.norm2.weight", SAME, (dim,)),
        ParamSpec(f"{fp}/LayerNorm_1/bias", f"{tp}.norm2.bias", SAME, (dim,)),
        ParamSpec(f"{fp}/Mlp_0/Dense_0/kernel", f"{tp}.mlp.fc1.weight", DENSE, (dim, hidden)),
        ParamSpec(f"{fp}/Mlp_0/Dense_0/bias", f"{tp}.mlp.fc1.bias", SAME, (hidden,)),
        ParamSpec(f"{fp}/Mlp_0/Dense_1/kernel", f"{tp}.mlp.fc2.weight", DENSE, (hidden, dim)),
        ParamSpec(f"{fp}/Mlp_0/Dense_1/bias", f"{tp}.mlp.fc2.bias", SAME, (dim,)),
    ]
    return specs


def check_representable(config: ModelConfig) -> None:
    """Raise OfficialConfigError for models the reference code cannot express."""
    problems = []
    if config.contrastive_weight > 0:
        problems.append("an InfoNCE head (contrastive_weight > 0, MAE-AST)")
    if config.encoder_sees_all:
        problems.append("an encoder that sees mask tokens (encoder_sees_all, SSAST-style)")
    if problems:
        raise OfficialConfigError(
            f"model {config.name!r} has no counterpart in the official MW-MAE code: "
            + "; ".join(problems)
        )


def official_layout(config: ModelConfig) -> dict[str, ParamSpec]:
    """{flax path: ParamSpec} for every parameter of the reference model matching `config`,
    in the reference's tree order."""
    check_representable(config)
    c = config
    D, Dd = c.embed_dim, c.decoder_embed_dim
    n_tok = c.num_patches + (1 if c.use_cls_token else 0)
    pt, pf = c.patch_size
    specs = [
        ParamSpec("patch_embed/proj/kernel", "patch_embed.proj.weight", CONV, (pt, pf, 1, D)),
        ParamSpec("patch_embed/proj/bias", "patch_embed.proj.bias", SAME, (D,)),
        ParamSpec("pos_embed", "pos_embed", SAME, (1, n_tok, D)),
    ]
    if c.use_cls_token:
        specs.append(ParamSpec("cls_token", "cls_token", SAME, (1, 1, D)))
    for i in range(c.depth):
        specs += _block_specs(
            f"encoder_block_{i:02d}", f"blocks.{i}", D, int(D * c.mlp_ratio), c.encoder_window_sizes
        )
    specs += [
        ParamSpec("encoder_norm/scale", "norm.weight", SAME, (D,)),
        ParamSpec("encoder_norm/bias", "norm.bias", SAME, (D,)),
        ParamSpec("decoder_embed/kernel", "decoder_embed.weight", DENSE, (D, Dd)),
        ParamSpec("decoder_embed/bias", "decoder_embed.bias", SAME, (Dd,)),
        ParamSpec("mask_token", "mask_token", SAME, (1, 1, Dd)),
        ParamSpec("decoder_pos_embed", "decoder_pos_embed", SAME, (1, n_tok, Dd)),
    ]
    for i in range(c.decoder_depth):
        specs += _block_specs(
            f"decoder_block_{i:02d}",
            f"decoder_blocks.{i}",
            Dd,
            int(Dd * c.mlp_ratio),
            c.decoder_window_sizes,
        )
    specs += [
        ParamSpec("decoder_norm/scale", "decoder_norm.weight", SAME, (Dd,)),
        ParamSpec("decoder_norm/bias", "decoder_norm.bias", SAME, (Dd,)),
        ParamSpec("decoder_pred/kernel", "decoder_pred.weight", DENSE, (Dd, c.patch_dim)),
        ParamSpec("decoder_pred/bias", "decoder_pred.bias", SAME, (c.patch_dim,)),
    ]
    return {s.flax_path: s for s in specs}


def official_buffers(config: ModelConfig) -> dict[str, np.ndarray]:
    """The reference's "buffers" collection (flat paths): per windowed head a (w, w) int32
    `relative_position_index` with value i - j + w - 1 (recomputed, never loaded)."""
    out: dict[str, np.ndarray] = {}
    for part, depth, windows in (
        ("encoder", config.depth, config.encoder_window_sizes),
        ("decoder", config.decoder_depth, config.decoder_window_sizes),
    ):
        for i in range(depth):
            for h, w in enumerate(windows or []):
                if w > 0:
                    pos = np.arange(w, dtype=np.int32)
                    out[
                        f"{part}_block_{i:02d}/wmha_block/attn_heads_{h}/relative_position_index"
                    ] = pos[:, None] - pos[None, :] + (w - 1)
    return out


# --------------------------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------------------------
def _block_indices(params: Mapping[str, Any], part: str) -> list[int]:
    pat = re.compile(rf"{part}_block_(\d+)/")
    return sorted({int(m.group(1)) for k in params if (m := pat.match(k))})


def _part_windows(params: Mapping[str, Any], part: str) -> tuple[str, dict[int, int]]:
    """('plain' | 'mw' | 'unknown', {head: window}) of the encoder or decoder blocks, from
    parameter names; tables are collected over all blocks (the reference uses one window list
    for every block), so a table missing from one block is reported as missing, not as a
    different architecture."""
    pat = re.compile(rf"{part}_block_\d+/(.*)")
    table = re.compile(r"wmha_block/attn_heads_(\d+)/relative_position_bias_table")
    names = {k: m.group(1) for k in params if (m := pat.match(k))}
    tables: dict[int, int] = {}
    kinds = set()
    for path, n in sorted(names.items()):
        if n.startswith("Attention_0/"):
            kinds.add("plain")
        elif n.startswith("wmha_block/"):
            kinds.add("mw")
        m = table.fullmatch(n)
        if m:
            shape = np.shape(params[path])
            if len(shape) != 2 or shape[1] != 1 or shape[0] % 2 == 0:
                raise OfficialWeightsError(
                    f"{path}: shape {shape}; a relative position bias table is (2w-1, 1)"
                )
            tables.setdefault(int(m.group(1)), (shape[0] + 1) // 2)
    kind = "mw" if "mw" in kinds else "plain" if kinds else "unknown"
    return kind, tables


def _windows_from_tables(tables: dict[int, int], num_heads: int) -> list[int]:
    return [tables.get(h, 0) for h in range(num_heads)]


def _config_windows(value: Any) -> list[int] | None:
    """The reference's window_sizes value: 0 / None -> plain attention, else one per head."""
    if value is None or (isinstance(value, (int, float)) and value == 0):
        return None
    if isinstance(value, (list, tuple)):
        return [int(w) for w in value]
    raise OfficialConfigError(f"window sizes {value!r}: expected 0 or a list of ints")


def _arch_size(arch: Any) -> tuple[str, tuple[int, int, int]] | None:
    m = re.fullmatch(r"mae_([a-z]+)", str(arch or ""))
    if m and m.group(1) in ENCODER_SIZES:
        return m.group(1), ENCODER_SIZES[m.group(1)]
    return None


@dataclass(frozen=True)
class TreeArchitecture:
    """What a reference parameter tree shows of its architecture (heads only partly)."""

    patch_size: tuple[int, int]
    embed_dim: int
    use_cls_token: bool
    num_patches: int  # L, the pos_embed rows without the cls slot
    num_mels: int
    mlp_ratio: float
    depth: int
    encoder_kind: str  # "plain" | "mw" | "unknown"
    encoder_tables: dict[int, int]  # windowed head -> window, from the bias tables
    decoder_embed_dim: int
    decoder_depth: int
    decoder_kind: str
    decoder_tables: dict[int, int]

    @property
    def num_frames(self) -> int:
        pt, pf = self.patch_size
        return (self.num_patches // (self.num_mels // pf)) * pt


@dataclass(frozen=True)
class RunArgs:
    """The parts of a reference run's config.json that the inference reads."""

    args: dict[str, Any]  # model.model_args
    has_config: bool
    arch: Any  # model.arch as written
    arch_size: tuple[str, tuple[int, int, int]] | None  # (size, (depth, heads, dim))
    opt: dict[str, Any]

    @classmethod
    def parse(cls, run_config: Mapping[str, Any] | None) -> RunArgs:
        model_cfg = dict((run_config or {}).get("model") or {})
        return cls(
            args=dict(model_cfg.get("model_args") or {}),
            has_config=bool(model_cfg),
            arch=model_cfg.get("arch"),
            arch_size=_arch_size(model_cfg.get("arch")),
            opt=dict((run_config or {}).get("opt") or {}),
        )


def _shape(params: Mapping[str, Any], path: str) -> tuple[int, ...] | None:
    return tuple(np.shape(params[path])) if path in params else None


def _check_is_reference_tree(params: Mapping[str, Any]) -> None:
    absent = [p for p in ("patch_embed/proj/kernel", "pos_embed") if p not in params]
    if absent:
        top = sorted({k.split("/")[0] for k in params})
        raise OfficialWeightsError(
            f"not an official MW-MAE/MAE parameter tree: missing {absent} (top-level entries: "
            f"{top[:12]}{' ...' if len(top) > 12 else ''})"
        )


def _patch_and_tokens(
    params: Mapping[str, Any], num_mels: int
) -> tuple[tuple[int, int], int, bool, int]:
    """((pt, pf), embed_dim, use_cls_token, L) from the patch embedding and pos_embed."""
    kernel = _shape(params, "patch_embed/proj/kernel")  # (kh, kw, in, D)
    if len(kernel) != 4:
        raise OfficialWeightsError(
            f"patch_embed/proj/kernel: shape {kernel}, expected (kh, kw, 1, embed_dim)"
        )
    pt, pf, cin, D = kernel
    if cin != 1:
        raise OfficialWeightsError(
            f"patch_embed/proj/kernel: {cin} input channels, expected 1 (a single log-mel channel)"
        )
    use_cls = "cls_token" in params
    pos = _shape(params, "pos_embed")
    L = (pos[1] if len(pos) == 3 else -1) - (1 if use_cls else 0)
    if num_mels % pf or L <= 0 or L % (num_mels // pf):
        raise OfficialWeightsError(
            f"pos_embed: shape {pos} does not fit patches {pt}x{pf} on "
            f"{num_mels} mel bins (cls token: {use_cls})"
        )
    return (pt, pf), D, use_cls, L


def _mlp_ratio(params: Mapping[str, Any]) -> float:
    """One MLP ratio for both halves, as in the reference (a different decoder one is refused)."""
    fc1 = _shape(params, "encoder_block_00/Mlp_0/Dense_0/kernel")
    ratio = fc1[1] / fc1[0] if fc1 and len(fc1) == 2 and fc1[0] else 4.0
    dec_fc1 = _shape(params, "decoder_block_00/Mlp_0/Dense_0/kernel")
    if dec_fc1 and len(dec_fc1) == 2 and dec_fc1[0] and dec_fc1[1] / dec_fc1[0] != ratio:
        raise OfficialWeightsError(
            f"encoder MLP ratio {ratio} and decoder MLP ratio "
            f"{dec_fc1[1] / dec_fc1[0]} differ; not supported"
        )
    return ratio


def _decoder_embed_dim(params: Mapping[str, Any], fallback: int) -> int:
    dec_embed = _shape(params, "decoder_embed/kernel")
    if dec_embed and len(dec_embed) == 2:
        return dec_embed[1]
    mask_token = _shape(params, "mask_token")
    return mask_token[-1] if mask_token else fallback


def read_tree_architecture(params: Mapping[str, Any], run: RunArgs) -> TreeArchitecture:
    """The architecture as far as the parameter names and shapes tell it. Raises
    OfficialWeightsError when the tree is not a reference MAE/MW-MAE."""
    _check_is_reference_tree(params)
    img = run.args.get("img_size")
    # Mel bins from config img_size, else the front end's 80; frames then follow from L.
    num_mels = int(img[1]) if img else DEFAULT_NUM_MELS
    patch, D, use_cls, L = _patch_and_tokens(params, num_mels)
    enc_idx = _block_indices(params, "encoder")
    depth = enc_idx[-1] + 1 if enc_idx else 0
    enc_kind, enc_tables = _part_windows(params, "encoder") if depth else ("plain", {})
    dec_idx = _block_indices(params, "decoder")
    decoder_depth = dec_idx[-1] + 1 if dec_idx else 0
    dec_kind, dec_tables = _part_windows(params, "decoder") if decoder_depth else ("plain", {})
    pred = _shape(params, "decoder_pred/kernel")
    if pred and len(pred) == 2 and pred[1] != patch[0] * patch[1]:
        raise OfficialWeightsError(
            f"decoder_pred/kernel: shape {pred}; patches {patch[0]}x{patch[1]} need "
            f"{patch[0] * patch[1]} outputs"
        )
    return TreeArchitecture(
        patch_size=patch,
        embed_dim=D,
        use_cls_token=use_cls,
        num_patches=L,
        num_mels=num_mels,
        mlp_ratio=_mlp_ratio(params),
        depth=depth,
        encoder_kind=enc_kind,
        encoder_tables=enc_tables,
        decoder_embed_dim=_decoder_embed_dim(params, int(run.args.get("decoder_embed_dim", 384))),
        decoder_depth=decoder_depth,
        decoder_kind=dec_kind,
        decoder_tables=dec_tables,
    )


class HeadsResult(NamedTuple):
    num_heads: int
    window_sizes: list[int] | None
    warnings: list[str]
    problems: list[str]


def plain_heads(
    part: str, dim: int, depth: int, cfg_heads: Any, windows_cfg: list[int] | None
) -> HeadsResult:
    """Plain attention hides its head count: config.json, else the reference defaults."""
    problems = []
    if windows_cfg is not None and any(windows_cfg):
        problems.append(
            f"config {part} window sizes {windows_cfg}, but the "
            f"{part} blocks use plain attention (Attention_0)"
        )
    if cfg_heads is not None:
        return HeadsResult(int(cfg_heads), None, [], problems)
    if part == "decoder":
        warning = (
            f"decoder heads cannot be read from the parameters and no "
            f"config.json gives them: assumed the reference default "
            f"{REFERENCE_DECODER_HEADS}"
        )
        return HeadsResult(REFERENCE_DECODER_HEADS, None, [warning], problems)
    by_size = [(n, h) for n, (d, h, e) in ENCODER_SIZES.items() if e == dim and d == depth]
    if by_size:
        warning = (
            f"encoder heads not in the parameters: {by_size[0][1]} from the "
            f"reference size '{by_size[0][0]}' ({dim}-d, {depth} blocks)"
        )
        return HeadsResult(by_size[0][1], None, [warning], problems)
    heads = max(1, dim // 64)
    warning = (
        f"encoder heads not in the parameters and no config.json: assumed {heads} (head dim 64)"
    )
    return HeadsResult(heads, None, [warning], problems)


def _config_window_problems(part: str, tables: dict[int, int], windows_cfg: list[int]) -> list[str]:
    problems = []
    for h, w in enumerate(windows_cfg):
        if (h in tables) != (w > 0) or (w > 0 and tables[h] != w):
            problems.append(
                f"config {part} window sizes {windows_cfg} disagree with the "
                f"{part} relative position tables (head: window "
                f"{dict(sorted(tables.items()))})"
            )
            break
    if tables and max(tables) >= len(windows_cfg):
        problems.append(
            f"config {part} window sizes {windows_cfg} name "
            f"{len(windows_cfg)} heads, but the {part} has a table for "
            f"head {max(tables)}"
        )
    return problems


def multi_window_heads(
    part: str, tables: dict[int, int], cfg_heads: Any, cfg_windows: Any
) -> HeadsResult:
    """A MW-MHA block shows its windowed heads (one table each, head index = table index) but
    not its global heads: config.json, else the reference's rule (two global heads last)."""
    windows_cfg = _config_windows(cfg_windows) if cfg_windows is not None else None
    if windows_cfg is not None:
        problems = _config_window_problems(part, tables, windows_cfg)
        if cfg_heads is not None and int(cfg_heads) != len(windows_cfg):
            problems.append(
                f"config {part} num_heads {cfg_heads} != {len(windows_cfg)} window sizes"
            )
        return HeadsResult(len(windows_cfg), windows_cfg, [], problems)
    problems = []
    if cfg_windows is not None:  # config says 0 (plain) but the params are MW-MHA
        problems.append(
            f"config {part} window sizes {cfg_windows!r}, but the {part} blocks "
            "are multi-window (wmha_block)"
        )
    if cfg_heads is not None:
        heads = int(cfg_heads)
        if tables and max(tables) >= heads:
            problems.append(
                f"config {part} num_heads {heads}, but the {part} has a table "
                f"for head {max(tables)}"
            )
        return HeadsResult(heads, _windows_from_tables(tables, heads), [], problems)
    heads = (max(tables) + 1 if tables else 0) + 2
    warning = (
        f"{part} global heads after the last windowed head cannot be read from "
        f"the parameters and no config.json gives them: assumed two "
        f"(the reference's rule), {heads} heads"
    )
    return HeadsResult(heads, _windows_from_tables(tables, heads), [warning], problems)


def infer_heads(tree: TreeArchitecture, run: RunArgs, part: str) -> HeadsResult:
    """Heads and window sizes of the encoder or the decoder."""
    args = run.args
    if part == "encoder":
        kind, tables, dim = tree.encoder_kind, tree.encoder_tables, tree.embed_dim
        cfg_heads = args.get("num_heads", run.arch_size[1][1] if run.arch_size else None)
        cfg_windows = args.get("window_sizes") if run.has_config else None
    else:
        kind, tables, dim = tree.decoder_kind, tree.decoder_tables, tree.decoder_embed_dim
        default = REFERENCE_DECODER_HEADS if run.has_config else None
        cfg_heads = args.get("decoder_num_heads", default)
        cfg_windows = args.get("decoder_window_sizes") if run.has_config else None
    if kind == "plain":
        windows_cfg = _config_windows(cfg_windows) if cfg_windows is not None else None
        return plain_heads(part, dim, tree.depth, cfg_heads, windows_cfg)
    return multi_window_heads(part, tables, cfg_heads, cfg_windows)


def img_size_problems(tree: TreeArchitecture, run: RunArgs) -> list[str]:
    """config.json's img_size against the number of patches in pos_embed."""
    args, (pt, pf), L = run.args, tree.patch_size, tree.num_patches
    problems = []
    img = args.get("img_size")
    if img and (int(img[0]) // pt) * (int(img[1]) // pf) != L:
        problems.append(
            f"img_size {list(img)} with patch {pt}x{pf} gives "
            f"{(int(img[0]) // pt) * (int(img[1]) // pf)} patches, but pos_embed has {L}"
        )
    return problems


def sizes_problems(tree: TreeArchitecture, run: RunArgs) -> list[str]:
    """Where config.json's sizes, arch and cls token disagree with the parameters."""
    args, problems = run.args, []
    expected = {
        "patch_size": list(tree.patch_size),
        "embed_dim": tree.embed_dim,
        "depth": tree.depth,
        "decoder_embed_dim": tree.decoder_embed_dim,
        "decoder_depth": tree.decoder_depth,
    }
    for key, value in expected.items():
        if key in args and (list(args[key]) if key == "patch_size" else args[key]) != value:
            problems.append(f"config model_args.{key} = {args[key]!r}, parameters give {value!r}")
    if run.arch_size:
        size, (a_depth, _a_heads, a_dim) = run.arch_size
        D, depth = tree.embed_dim, tree.depth
        if (a_dim, a_depth) != (D, depth) and not {"embed_dim", "depth"} & set(args):
            problems.append(
                f"config arch mae_{size} is {a_dim}-d with {a_depth} blocks, "
                f"parameters give {D}-d with {depth} blocks"
            )
    return problems + _cls_problems(tree.use_cls_token, run)


def _cls_problems(use_cls: bool, run: RunArgs) -> list[str]:
    args = run.args
    have = "have" if use_cls else "have no"
    if "use_cls_token" in args:
        if bool(args["use_cls_token"]) != use_cls:
            return [
                f"config use_cls_token = {args['use_cls_token']}, but the parameters {have} "
                "cls_token"
            ]
        return []
    if not run.has_config:
        return []
    # The reference picks MWMAE (no cls token) when any window list is set, else MAE.
    mw_class = bool(
        _config_windows(args.get("window_sizes", 0))
        or _config_windows(args.get("decoder_window_sizes", 0))
    )
    if mw_class == use_cls:
        built = "MWMAE (no cls token)" if mw_class else "MAE"
        return [f"config builds {built} but the parameters {have} cls_token"]
    return []


def infer_shift(run: RunArgs, windowed: bool) -> tuple[bool, str, list[str]]:
    """(shift_windows, where it came from, warnings): the parameters cannot show it."""
    if run.has_config:
        # A run config without the key means the reference's default (False) was used.
        if "shifting_windows" in run.args:
            return bool(run.args["shifting_windows"]), "config.json", []
        return False, "config.json (not set: the reference default)", []
    warnings = []
    if windowed:
        warnings.append(
            "shifting_windows cannot be inferred from the parameters and no "
            "config.json gives it: assumed False (the reference default)"
        )
    return False, "default (not in the parameters; no config.json)", warnings


def infer_config(
    params: Mapping[str, Any],
    run_config: Mapping[str, Any] | None = None,
    name: str = "official",
) -> tuple[ModelConfig, dict[str, Any]]:
    """Architecture of a reference parameter tree (flat '/' paths), cross-checked against the
    run's config.json (`run_config`, the parsed file) when given.

    Returns (ModelConfig, metadata); metadata["warnings"] lists what had to be assumed.
    Raises OfficialWeightsError (tree not a reference MAE) or OfficialConfigError
    (config.json disagrees with the parameters)."""
    run = RunArgs.parse(run_config)
    tree = read_tree_architecture(params, run)
    enc, dec = infer_heads(tree, run, "encoder"), infer_heads(tree, run, "decoder")
    windowed = any(enc.window_sizes or []) or any(dec.window_sizes or [])
    shift, shift_source, shift_warnings = infer_shift(run, windowed)
    problems = img_size_problems(tree, run) + enc.problems + dec.problems
    problems += sizes_problems(tree, run)
    if problems:
        raise OfficialConfigError(
            "config.json and the parameters disagree:\n  - " + "\n  - ".join(problems)
        )
    try:
        config = ModelConfig(
            name=name,
            num_frames=tree.num_frames,
            num_mels=tree.num_mels,
            patch_size=tree.patch_size,
            embed_dim=tree.embed_dim,
            depth=tree.depth,
            num_heads=enc.num_heads,
            mlp_ratio=tree.mlp_ratio,
            encoder_window_sizes=enc.window_sizes,
            decoder_embed_dim=tree.decoder_embed_dim,
            decoder_depth=tree.decoder_depth,
            decoder_num_heads=dec.num_heads,
            decoder_window_sizes=dec.window_sizes,
            shift_windows=shift,
            use_cls_token=tree.use_cls_token,
            pos_embed="2d",
            trainable_pos_embed=True,
            mask_ratio=float(run.args.get("mask_ratio", REFERENCE_MASK_RATIO)),
            masking="random",
            norm_pix_loss=bool(run.args.get("norm_pix_loss", run.opt.get("norm_pix_loss", False))),
        )
    except ValueError as exc:
        raise OfficialConfigError(
            f"the checkpoint's architecture is not valid here: {exc}"
        ) from exc
    meta = {
        "arch": run.arch,
        "shift_windows_source": shift_source,
        "reference_precision": (run_config or {}).get("precision"),
        "warnings": enc.warnings + dec.warnings + shift_warnings,
    }
    return config, meta


# --------------------------------------------------------------------------------------------
# Reading official checkpoints
# --------------------------------------------------------------------------------------------
def _read_run_config(loc: CheckpointLocation) -> tuple[dict[str, Any] | None, Path | None]:
    if loc.run_dir is None:
        return None, None
    path = loc.run_dir / RUN_CONFIG_NAME
    if not path.is_file():
        return None, None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfficialConfigError(f"{path}: unreadable run config ({exc})") from exc
    if not isinstance(cfg, dict) or "model" not in cfg:
        log.warning("%s: not a reference run config (no 'model' entry); ignored", path)
        return None, None
    return cfg, path


def load_official_params(
    src: str | Path, step: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any] | None, dict[str, Any]]:
    """Read the parameters of an official checkpoint -> (flat params, run config or None,
    source info {file, step, kind, config_file})."""
    tree, loc = read_checkpoint(src, step, keys={"params", "step"})
    if "params" not in tree:
        # Not a TrainState: maybe a bare params tree (e.g. flax.serialization.to_bytes(params));
        # read everything.
        tree = read_msgpack_file(loc.file)
        params_tree = tree if "patch_embed" in tree else tree.get("params")
    else:
        params_tree = tree["params"]
    if not isinstance(params_tree, dict) or not params_tree:
        raise FlaxCheckpointError(
            f"{loc.file}: a msgpack file without parameters (top-level "
            f"entries: {sorted(tree)[:10]}), not a Flax checkpoint"
        )
    params = flatten_tree(params_tree)
    bad = [k for k, v in params.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise FlaxCheckpointError(f"{loc.file}: parameter entries that are not arrays: {bad[:5]}")
    file_step = tree.get("step")
    step_value = int(file_step) if file_step is not None and np.ndim(file_step) == 0 else loc.step
    run_config, config_path = _read_run_config(loc)
    info = {
        "file": str(loc.file),
        "source_sha256": sha256_file(loc.file),  # provenance: exactly which bytes were read
        "step": step_value,
        "kind": loc.kind,
        "config_file": str(config_path) if config_path else None,
    }
    return params, run_config, info


def params_to_state_dict(
    params: Mapping[str, np.ndarray], config: ModelConfig, consume: bool = False
) -> dict[str, torch.Tensor]:
    """Flat reference params -> this package's state dict (float32), checked entry by entry.

    `consume=True` pops each entry from `params` (a dict) once copied, so that the source
    and the converted weights are not both held in full (peak memory ~ one copy)."""
    layout = official_layout(config)
    missing = [p for p in layout if p not in params]
    unexpected = [p for p in params if p not in layout]
    wrong = [
        f"{p}: {tuple(np.shape(params[p]))}, expected {s.flax_shape}"
        for p, s in layout.items()
        if p in params and np.shape(params[p]) != s.flax_shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing parameters ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected parameters ({len(unexpected)}): {unexpected}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {wrong}")
        raise OfficialWeightsError(
            "the parameters do not match the inferred architecture "
            f"({describe(config)}):\n  " + "\n  ".join(parts)
        )
    state = {}
    for p, s in layout.items():
        arr = np.asarray(params.pop(p) if consume else params[p])
        if not np.issubdtype(arr.dtype, np.floating):
            raise OfficialWeightsError(f"{p}: dtype {arr.dtype}, expected floating point")
        if not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise OfficialWeightsError(f"{p}: {bad} NaN or Inf values (a damaged checkpoint?)")
        state[s.torch_name] = torch.from_numpy(
            np.array(to_torch_layout(arr, s.layout), dtype=np.float32, order="C")
        )
    return state


def describe(config: ModelConfig) -> str:
    c = config
    return (
        f"patch {c.patch_size[0]}x{c.patch_size[1]}, L={c.num_patches}, encoder "
        f"{c.embed_dim}-d x{c.depth} ({c.num_heads} heads, windows "
        f"{c.encoder_window_sizes or 'global'}), decoder {c.decoder_embed_dim}-d "
        f"x{c.decoder_depth} ({c.decoder_num_heads} heads, windows "
        f"{c.decoder_window_sizes or 'global'}), shift {c.shift_windows}, cls "
        f"{c.use_cls_token}"
    )


def model_from_params(
    params: Mapping[str, np.ndarray], config: ModelConfig, consume: bool = False
) -> MaskedAutoencoder:
    """Build the model for `config` and load the reference params strictly (`consume`: see
    `params_to_state_dict`)."""
    return model_from_state_dict(params_to_state_dict(params, config, consume=consume), config)


def model_from_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> MaskedAutoencoder:
    """Build the model for `config` around `state` (strict: every key, every shape), eval mode.

    Large models are built on the meta device (no random init of ~100M values, no second copy
    of the weights) and take the tensors of `state` as their parameters. Small ones are built
    normally: the meta device's one-time set-up (~1 s) costs more than their init. A model
    whose __init__ makes real tensors outside the state dict (e.g. non-persistent buffers)
    would keep meta tensors, so it is then rebuilt normally."""
    n_values = sum(t.numel() for t in state.values())
    with torch.device("meta" if n_values >= META_BUILD_MIN_PARAMS else "cpu"):
        model = MaskedAutoencoder(config)
    expected = set(model.state_dict())
    if expected != set(state):
        raise OfficialWeightsError(
            "the model's parameters and the official mapping differ (a model/converter "
            f"mismatch): model only {sorted(expected - set(state))}, mapping only "
            f"{sorted(set(state) - expected)}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model = MaskedAutoencoder(config)
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise OfficialWeightsError(f"loading the converted weights failed: {exc}") from exc
    return model.eval()


def convert_official(
    src: str | Path, out: str | Path | None = None, step: int | None = None
) -> MaskedAutoencoder:
    """Official checkpoint (run directory, checkpoint file or Orbax directory) -> model in
    eval mode; with `out`, also written there with `save_pretrained`.

    `model.config.extra["official"]` records the source, step, what config.json said and any
    assumption made (also logged as warnings)."""
    params, run_config, info = load_official_params(src, step)
    src = Path(src)
    name = (
        Path(info["config_file"]).parent.name
        if info["config_file"]
        else src.name
        if src.is_dir()
        else src.parent.name or src.name
    )
    config, meta = infer_config(params, run_config, name=name)
    if run_config is None:
        meta["warnings"].insert(
            0,
            "no config.json beside the checkpoint: architecture inferred from the parameters alone",
        )
    for w in meta["warnings"]:
        log.warning("%s: %s", info["file"], w)
    config.extra = {**config.extra, "official": {**info, **meta}}
    try:
        model = model_from_params(params, config, consume=True)
    except OfficialWeightsError as exc:
        raise OfficialWeightsError(f"{info['file']}: {exc}") from exc
    del params
    if out is not None:
        model.save_pretrained(out)
    return model


def from_official(path: str | Path, step: int | None = None) -> MaskedAutoencoder:
    """`convert_official(path, step=step)`: an official MW-MAE/MAE checkpoint as a model."""
    return convert_official(path, step=step)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def model_to_flax(model: MaskedAutoencoder) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, buffers) as nested dicts with the reference's names and layouts (float32)."""
    layout = official_layout(model.config)
    state = model.state_dict()
    by_torch = {s.torch_name: s for s in layout.values()}
    extra = sorted(set(state) - set(by_torch))
    missing = sorted(set(by_torch) - set(state))
    if extra or missing:
        raise OfficialWeightsError(
            f"model parameters without an official counterpart: {extra}; "
            f"official parameters the model lacks: {missing}"
        )
    flat = {}
    for path, s in layout.items():
        arr = state[s.torch_name].detach().to("cpu", torch.float32).numpy()
        flat[path] = np.ascontiguousarray(to_flax_layout(arr, s.layout))
    return unflatten_tree(flat), unflatten_tree(official_buffers(model.config))


def official_run_config(config: ModelConfig) -> dict[str, Any]:
    """A config.json in the reference's layout (model.model_args), enough for this package's
    importer to rebuild the architecture exactly (shifting_windows included)."""
    args = {
        "img_size": [config.num_frames, config.num_mels],
        "patch_size": list(config.patch_size),
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "decoder_embed_dim": config.decoder_embed_dim,
        "decoder_depth": config.decoder_depth,
        "decoder_num_heads": config.decoder_num_heads,
        "window_sizes": list(config.encoder_window_sizes or []) or 0,
        "decoder_window_sizes": list(config.decoder_window_sizes or []) or 0,
        "shifting_windows": config.shift_windows,
        "use_cls_token": config.use_cls_token,
        "mask_ratio": config.mask_ratio,
    }
    if config.mlp_ratio != 4.0:
        args["mlp_ratio"] = config.mlp_ratio
    return {
        "model": {"arch": f"custom:{config.name}", "model_args": args, "type": "mae"},
        "opt": {"norm_pix_loss": config.norm_pix_loss},
        "input_shape": [config.num_frames, config.num_mels, 1],
        "precision": "float32",
        "exported_by": "mwmae.convert.export_flax",
    }


def _zeros_like_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _zeros_like_tree(v) for k, v in tree.items()}
    return np.zeros_like(tree)


def export_flax(
    model: MaskedAutoencoder,
    out_dir: str | Path,
    *,
    step: int | None = None,
    train_state: bool = False,
) -> Path:
    """Write `out_dir/checkpoint_<step>` (Flax msgpack) and `out_dir/config.json`.

    Default: {"params": ..., "buffers": ...}, the reference model's variables:
    `model.apply(flax.serialization.msgpack_restore(data), x, train=False)` runs it, and
    `checkpoints.restore_checkpoint(out_dir, target=None)` returns it.
    `train_state=True`: the reference TrainState layout instead (step, params, buffers, empty
    batch_stats / frozen_params, dynamic_scale None, aux_rng_keys, an AdamW opt_state with
    zero moments), which `checkpoints.restore_checkpoint(out_dir, target=state)` accepts.
    `step` defaults to the step recorded when the model was imported, else 0."""
    if step is None:
        step = int((model.config.extra.get("official") or {}).get("step") or 0)
    params, buffers = model_to_flax(model)
    if train_state:
        count = np.array(step, dtype=np.int32)
        tree: dict[str, Any] = {
            "aux_rng_keys": {
                n: np.array([0, i], dtype=np.uint32) for i, n in enumerate(AUX_RNG_NAMES)
            },
            "batch_stats": {},
            "buffers": buffers,
            "dynamic_scale": None,
            "frozen_params": {},
            # optax.chain(scale_by_adam, add_decayed_weights, scale_by_schedule) states.
            "opt_state": {
                "0": {
                    "count": count,
                    "mu": _zeros_like_tree(params),
                    "nu": _zeros_like_tree(params),
                },
                "1": {},
                "2": {"count": count},
            },
            "params": params,
            "step": count,
        }
    else:
        tree = {"buffers": buffers, "params": params}
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory")
    path = write_msgpack_file(tree, out_dir / f"{CHECKPOINT_PREFIX}{step}")
    (out_dir / RUN_CONFIG_NAME).write_text(json.dumps(official_run_config(model.config), indent=1))
    return path
