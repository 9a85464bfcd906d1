"""Model configuration, the default window-size rule, and the named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

import numpy as np

from mwmae._config import _check_bounds, bounds, build, check_keys, coerce
from mwmae.errors import ConfigError
from mwmae.models.windows import nondividing_window

# name: (depth, heads, dim), as the reference's mae_<size> encoders.
ENCODER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (12, 3, 192),
    "small": (12, 6, 384),
    "medium": (12, 8, 512),
    "base": (12, 12, 768),
    "large": (24, 16, 1024),
    "huge": (32, 16, 1280),
}

# Patch sizes (time frames x mel bins) that tile the (200, 80) input.
PATCH_SIZES: dict[str, tuple[int, int]] = {
    "4x16": (4, 16),
    "8x16": (8, 16),
    "8x8": (8, 8),
    "4x8": (4, 8),
    "5x5": (5, 5),
}

# Fields that do not change what the model computes: its label, free-form provenance, and the
# choice among numerically equivalent MW-MHA kernels. Everything else is "architecture".
NON_ARCHITECTURE_FIELDS = frozenset({"name", "extra", "mwmha_impl"})

# `decoder_window_sizes="auto"`: `default_window_sizes` of the config's own patch grid.
AUTO = "auto"


def default_window_sizes(num_patches: int) -> list[int]:
    """Every factor f of L with 1 < f < L, ascending, then two global heads (0).

    250 -> [2, 5, 10, 25, 50, 125, 0, 0]; 125 -> [5, 25, 0, 0]; 500 -> 12 heads; 640 -> 16.
    """
    if num_patches < 1:
        raise ConfigError(f"num_patches must be positive, got {num_patches}")
    factors = [f for f in range(2, num_patches) if num_patches % f == 0]
    return factors + [0, 0]


def _sized(default: Any, low: int, limit: float, name: str) -> Any:
    """A size or count: at least `low`, at most `limit` (a sanity limit far beyond any real
    model, so that a typo fails at once naming the field instead of allocating)."""
    return field(default=default, metadata=bounds(ge=low, limit=limit, text=f"{name} >= {low}"))


def _plain(value: Any) -> Any:
    """numpy scalars (from converted checkpoints) as Python numbers, recursively in lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


@dataclass
class ModelConfig:
    """Everything needed to build a `MaskedAutoencoder`; saved as config.json.

    Every field is type-checked and range-checked on construction (`ConfigError` naming it)."""

    name: str = "custom"
    # Input and tokens
    num_frames: int = _sized(200, 1, 100_000, "num_frames")  # 1000 s of 10-ms frames
    num_mels: int = _sized(80, 1, 4096, "num_mels")
    patch_size: tuple[int, int] = _sized((4, 16), 1, 100_000, "patch_size")
    # Encoder
    embed_dim: int = _sized(768, 1, 65_536, "embed_dim")
    depth: int = _sized(12, 1, 1024, "depth")
    num_heads: int = _sized(12, 1, 4096, "num_heads")
    mlp_ratio: float = field(default=4.0, metadata=bounds(gt=0, limit=256, text="mlp_ratio > 0"))
    # None: plain global attention
    encoder_window_sizes: list[int] | None = field(
        default=None, metadata=bounds(ge=0, limit=10_000_000)
    )
    # Decoder
    decoder_embed_dim: int = _sized(384, 1, 65_536, "decoder_embed_dim")
    decoder_depth: int = _sized(4, 0, 1024, "decoder_depth")
    # None: one head per default window of the patch grid (so one per window with "auto")
    decoder_num_heads: int | None = _sized(8, 1, 4096, "decoder_num_heads")
    # None: global attention; "auto": default_window_sizes(num_patches). Both "auto" and a None
    # head count are resolved on construction: the config then holds the concrete values.
    decoder_window_sizes: list[int] | Literal["auto"] | None = field(
        default=None, metadata=bounds(ge=0, limit=10_000_000)
    )
    shift_windows: bool = False  # shifted windows on odd-indexed blocks
    # MW-MHA kernel: "grouped" (one fused call per distinct window size; as cheap as global
    # attention on CPU), "dense" (one masked call for all heads; fewer launches on GPUs) or
    # "flex" (one FlexAttention call with a block mask; models/flex.py)
    mwmha_impl: str = "grouped"
    # Tokens and positions
    use_cls_token: bool = False
    pos_embed: str = "2d"  # "2d": (freq, time) sin-cos; "1d": over the flattened token index
    trainable_pos_embed: bool = True  # the reference trains (and weight-decays) both tables
    # Masking and losses (mask_ratio 0 would leave no masked patch: a NaN loss)
    mask_ratio: float = field(default=0.8, metadata=bounds(gt=0, lt=1, text="0 < mask_ratio < 1"))
    masking: str = "random"  # "random" | "chunk"
    chunk_sizes: tuple[int, ...] = field(default=(3, 4, 5), metadata=bounds(gt=0, limit=100_000))
    norm_pix_loss: bool = False
    encoder_sees_all: bool = False  # SSAST-style: all tokens, masked ones replaced by a token
    reconstruction_weight: float = field(default=1.0, metadata=bounds(ge=0))
    # MAE-AST InfoNCE between predicted and true masked patches
    contrastive_weight: float = field(default=0.0, metadata=bounds(ge=0))
    # Free-form provenance (e.g. "official" for converted checkpoints). A plain `dict`
    # annotation so that `mwmae._config.coerce` checks it as a mapping.
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            value = coerce(value, hints[f.name], f.name)
            spec = f.metadata.get("bounds")
            if spec is not None:
                _check_bounds(value, spec, f.name)
            setattr(self, f.name, value)

    # Derived geometry ------------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        return self.num_frames // self.patch_size[0], self.num_mels // self.patch_size[1]

    @property
    def num_patches(self) -> int:
        gt, gf = self.grid_size
        return gt * gf

    @property
    def patch_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1]

    def len_keep(self, num_patches: int | None = None) -> int:
        """Kept tokens under random masking: the reference's int(L * (100 - 100 r) / 100)."""
        L = self.num_patches if num_patches is None else num_patches
        return int(L * (100 - self.mask_ratio * 100) / 100)

    def validate(self) -> None:
        """Cross-field checks (types and ranges were checked on construction)."""
        if len(self.patch_size) != 2:
            raise ConfigError(f"patch_size must be (time, freq), got {self.patch_size}")
        pt, pf = self.patch_size
        if self.num_frames % pt or self.num_mels % pf:
            raise ConfigError(
                f"patch_size {self.patch_size} must divide the input ({self.num_frames} frames, "
                f"{self.num_mels} mels)"
            )
        self._resolve_auto()
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ConfigError(
                f"decoder_embed_dim {self.decoder_embed_dim} not divisible by "
                f"{self.decoder_num_heads} heads"
            )
        for key, value, allowed in (
            ("masking", self.masking, ("random", "chunk")),
            ("mwmha_impl", self.mwmha_impl, ("dense", "grouped", "flex")),
            ("pos_embed", self.pos_embed, ("1d", "2d")),
        ):
            if value not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
        self._validate_windows()

    def _resolve_auto(self) -> None:
        """Resolve "auto" decoder windows and a None decoder head count from the patch grid."""
        if self.decoder_window_sizes == AUTO or self.decoder_num_heads is None:
            defaults = default_window_sizes(self.num_patches)
            if self.decoder_window_sizes == AUTO:
                self.decoder_window_sizes = defaults
            if self.decoder_num_heads is None:
                self.decoder_num_heads = len(defaults)

    def _validate_windows(self) -> None:
        L = self.num_patches
        for part, windows, heads in (
            ("encoder", self.encoder_window_sizes, self.num_heads),
            ("decoder", self.decoder_window_sizes, self.decoder_num_heads),
        ):
            if windows is None:
                continue
            if len(windows) != heads:
                raise ConfigError(
                    f"{part}_window_sizes {windows} has {len(windows)} entries for {heads} heads"
                )
            w = nondividing_window(windows, L)
            if w is not None:
                raise ConfigError(
                    f"{part} window size {w} does not divide the number of patches {L}"
                )
            if self.use_cls_token and any(0 < w < L for w in windows):
                raise ConfigError(f"windowed {part} heads cannot be combined with a cls token")
        if self.encoder_window_sizes is not None and not self.encoder_sees_all:
            keep = self.len_keep()
            local = [w for w in self.encoder_window_sizes if w < L]  # w = L: one window, no check
            w = nondividing_window(local, keep)
            if w is not None:
                raise ConfigError(
                    f"encoder window size {w} does not divide the {keep} kept tokens "
                    f"(mask_ratio {self.mask_ratio}, {L} patches)"
                )

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["chunk_sizes"] = list(self.chunk_sizes)
        return d

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the computation (all but NON_ARCHITECTURE_FIELDS), JSON-ready."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_ARCHITECTURE_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> ModelConfig:
        """Strict: unknown keys, wrong types and out-of-range values are `ConfigError`s
        naming the (dotted) key."""
        return build(cls, d, where)

    def replace(self, **overrides: Any) -> ModelConfig:
        check_overrides(overrides)
        return dataclasses.replace(self, **overrides)


def check_overrides(overrides: Iterable[str], where: str = "") -> None:
    """Reject keyword overrides that are not ModelConfig fields (the one key check); `where`
    prefixes the key in the message (e.g. "model" for a config file's section)."""
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    try:
        check_keys(overrides, known, where)
    except ConfigError as exc:
        msg = str(exc).replace("unknown config key ", "", 1)
        raise ConfigError(f"unknown model config keys: {msg}") from None


# --------------------------------------------------------------------------------------------
# Presets: one literal table, name -> (family, encoder size, tokens), in the order
# <family>_<size>_<tokens>. The family functions below turn a row into config fields.
# --------------------------------------------------------------------------------------------
def _encoder(size: str) -> dict[str, Any]:
    depth, heads, dim = ENCODER_SIZES[size]
    return {"depth": depth, "num_heads": heads, "embed_dim": dim}


def _mae(size: str, patch: str) -> dict[str, Any]:
    # The reference's MAE baseline: global decoder (384-d, 4 blocks, 8 heads) and a cls token.
    return {
        **_encoder(size),
        "patch_size": PATCH_SIZES[patch],
        "use_cls_token": True,
        "mask_ratio": 0.8,
    }


def _mwmae(size: str, patch: str) -> dict[str, Any]:
    # MW-MAE: the default windows of whatever patch grid the config ends up with, one head each.
    return {
        **_encoder(size),
        "patch_size": PATCH_SIZES[patch],
        "use_cls_token": False,
        "mask_ratio": 0.8,
        "decoder_window_sizes": AUTO,
        "decoder_num_heads": None,
    }


def _maeast(size: str, tokens: str) -> dict[str, Any]:
    # MAE-AST: 4 s inputs, 1-D fixed sin-cos positions, decoder as wide as the encoder (2 blocks),
    # 75% masking, loss 10 * MSE + InfoNCE; chunked masking for patches, random for frames.
    enc = _encoder(size)
    patch = (16, 16) if tokens == "patch" else (2, 80)
    return {
        **enc,
        "num_frames": 400,
        "patch_size": patch,
        "mask_ratio": 0.75,
        "masking": "chunk" if tokens == "patch" else "random",
        "pos_embed": "1d",
        "trainable_pos_embed": False,
        "decoder_embed_dim": enc["embed_dim"],
        "decoder_depth": 2,
        "decoder_num_heads": enc["num_heads"],
        "reconstruction_weight": 10.0,
        "contrastive_weight": 1.0,
    }


def _ssast(size: str, tokens: str) -> dict[str, Any]:
    # SSAST-style: the encoder sees every token (masked ones replaced by a learned token); no
    # decoder blocks, a two-layer head; same losses and masking as the MAE-AST presets.
    base = (
        _maeast(size, tokens)
        if tokens in ("patch", "frame")
        else {
            **_encoder(size),
            "patch_size": PATCH_SIZES[tokens],
            "mask_ratio": 0.8,
            "reconstruction_weight": 1.0,
            "contrastive_weight": 0.0,
        }
    )
    enc = _encoder(size)
    return {
        **base,
        "encoder_sees_all": True,
        "decoder_depth": 0,
        "decoder_embed_dim": enc["embed_dim"],
        "decoder_num_heads": enc["num_heads"],
    }


_FAMILIES = {"mae": _mae, "mwmae": _mwmae, "maeast": _maeast, "ssast": _ssast}

# fmt: off
PRESET_TABLE: dict[str, tuple[str, str, str]] = {
    "mae_tiny_4x16": ("mae", "tiny", "4x16"),
    "mae_tiny_8x16": ("mae", "tiny", "8x16"),
    "mae_tiny_8x8": ("mae", "tiny", "8x8"),
    "mae_tiny_4x8": ("mae", "tiny", "4x8"),
    "mae_tiny_5x5": ("mae", "tiny", "5x5"),
    "mae_small_4x16": ("mae", "small", "4x16"),
    "mae_small_8x16": ("mae", "small", "8x16"),
    "mae_small_8x8": ("mae", "small", "8x8"),
    "mae_small_4x8": ("mae", "small", "4x8"),
    "mae_small_5x5": ("mae", "small", "5x5"),
    "mae_medium_4x16": ("mae", "medium", "4x16"),
    "mae_medium_8x16": ("mae", "medium", "8x16"),
    "mae_medium_8x8": ("mae", "medium", "8x8"),
    "mae_medium_4x8": ("mae", "medium", "4x8"),
    "mae_medium_5x5": ("mae", "medium", "5x5"),
    "mae_base_4x16": ("mae", "base", "4x16"),
    "mae_base_8x16": ("mae", "base", "8x16"),
    "mae_base_8x8": ("mae", "base", "8x8"),
    "mae_base_4x8": ("mae", "base", "4x8"),
    "mae_base_5x5": ("mae", "base", "5x5"),
    "mae_large_4x16": ("mae", "large", "4x16"),
    "mae_large_8x16": ("mae", "large", "8x16"),
    "mae_large_8x8": ("mae", "large", "8x8"),
    "mae_large_4x8": ("mae", "large", "4x8"),
    "mae_large_5x5": ("mae", "large", "5x5"),
    "mae_huge_4x16": ("mae", "huge", "4x16"),
    "mae_huge_8x16": ("mae", "huge", "8x16"),
    "mae_huge_8x8": ("mae", "huge", "8x8"),
    "mae_huge_4x8": ("mae", "huge", "4x8"),
    "mae_huge_5x5": ("mae", "huge", "5x5"),
    "mwmae_tiny_4x16": ("mwmae", "tiny", "4x16"),
    "mwmae_tiny_8x16": ("mwmae", "tiny", "8x16"),
    "mwmae_tiny_8x8": ("mwmae", "tiny", "8x8"),
    "mwmae_tiny_4x8": ("mwmae", "tiny", "4x8"),
    "mwmae_tiny_5x5": ("mwmae", "tiny", "5x5"),
    "mwmae_small_4x16": ("mwmae", "small", "4x16"),
    "mwmae_small_8x16": ("mwmae", "small", "8x16"),
    "mwmae_small_8x8": ("mwmae", "small", "8x8"),
    "mwmae_small_4x8": ("mwmae", "small", "4x8"),
    "mwmae_small_5x5": ("mwmae", "small", "5x5"),
    "mwmae_medium_4x16": ("mwmae", "medium", "4x16"),
    "mwmae_medium_8x16": ("mwmae", "medium", "8x16"),
    "mwmae_medium_8x8": ("mwmae", "medium", "8x8"),
    "mwmae_medium_4x8": ("mwmae", "medium", "4x8"),
    "mwmae_medium_5x5": ("mwmae", "medium", "5x5"),
    "mwmae_base_4x16": ("mwmae", "base", "4x16"),
    "mwmae_base_8x16": ("mwmae", "base", "8x16"),
    "mwmae_base_8x8": ("mwmae", "base", "8x8"),
    "mwmae_base_4x8": ("mwmae", "base", "4x8"),
    "mwmae_base_5x5": ("mwmae", "base", "5x5"),
    "mwmae_large_4x16": ("mwmae", "large", "4x16"),
    "mwmae_large_8x16": ("mwmae", "large", "8x16"),
    "mwmae_large_8x8": ("mwmae", "large", "8x8"),
    "mwmae_large_4x8": ("mwmae", "large", "4x8"),
    "mwmae_large_5x5": ("mwmae", "large", "5x5"),
    "mwmae_huge_4x16": ("mwmae", "huge", "4x16"),
    "mwmae_huge_8x16": ("mwmae", "huge", "8x16"),
    "mwmae_huge_8x8": ("mwmae", "huge", "8x8"),
    "mwmae_huge_4x8": ("mwmae", "huge", "4x8"),
    "mwmae_huge_5x5": ("mwmae", "huge", "5x5"),
    "ssast_tiny_4x16": ("ssast", "tiny", "4x16"),
    "ssast_tiny_8x16": ("ssast", "tiny", "8x16"),
    "ssast_tiny_8x8": ("ssast", "tiny", "8x8"),
    "ssast_tiny_4x8": ("ssast", "tiny", "4x8"),
    "ssast_tiny_5x5": ("ssast", "tiny", "5x5"),
    "ssast_small_4x16": ("ssast", "small", "4x16"),
    "ssast_small_8x16": ("ssast", "small", "8x16"),
    "ssast_small_8x8": ("ssast", "small", "8x8"),
    "ssast_small_4x8": ("ssast", "small", "4x8"),
    "ssast_small_5x5": ("ssast", "small", "5x5"),
    "ssast_medium_4x16": ("ssast", "medium", "4x16"),
    "ssast_medium_8x16": ("ssast", "medium", "8x16"),
    "ssast_medium_8x8": ("ssast", "medium", "8x8"),
    "ssast_medium_4x8": ("ssast", "medium", "4x8"),
    "ssast_medium_5x5": ("ssast", "medium", "5x5"),
    "ssast_base_4x16": ("ssast", "base", "4x16"),
    "ssast_base_8x16": ("ssast", "base", "8x16"),
    "ssast_base_8x8": ("ssast", "base", "8x8"),
    "ssast_base_4x8": ("ssast", "base", "4x8"),
    "ssast_base_5x5": ("ssast", "base", "5x5"),
    "ssast_large_4x16": ("ssast", "large", "4x16"),
    "ssast_large_8x16": ("ssast", "large", "8x16"),
    "ssast_large_8x8": ("ssast", "large", "8x8"),
    "ssast_large_4x8": ("ssast", "large", "4x8"),
    "ssast_large_5x5": ("ssast", "large", "5x5"),
    "ssast_huge_4x16": ("ssast", "huge", "4x16"),
    "ssast_huge_8x16": ("ssast", "huge", "8x16"),
    "ssast_huge_8x8": ("ssast", "huge", "8x8"),
    "ssast_huge_4x8": ("ssast", "huge", "4x8"),
    "ssast_huge_5x5": ("ssast", "huge", "5x5"),
    "maeast_tiny_patch": ("maeast", "tiny", "patch"),
    "maeast_tiny_frame": ("maeast", "tiny", "frame"),
    "maeast_small_patch": ("maeast", "small", "patch"),
    "maeast_small_frame": ("maeast", "small", "frame"),
    "maeast_medium_patch": ("maeast", "medium", "patch"),
    "maeast_medium_frame": ("maeast", "medium", "frame"),
    "maeast_base_patch": ("maeast", "base", "patch"),
    "maeast_base_frame": ("maeast", "base", "frame"),
    "maeast_large_patch": ("maeast", "large", "patch"),
    "maeast_large_frame": ("maeast", "large", "frame"),
    "maeast_huge_patch": ("maeast", "huge", "patch"),
    "maeast_huge_frame": ("maeast", "huge", "frame"),
    "ssast_tiny_patch": ("ssast", "tiny", "patch"),
    "ssast_tiny_frame": ("ssast", "tiny", "frame"),
    "ssast_small_patch": ("ssast", "small", "patch"),
    "ssast_small_frame": ("ssast", "small", "frame"),
    "ssast_medium_patch": ("ssast", "medium", "patch"),
    "ssast_medium_frame": ("ssast", "medium", "frame"),
    "ssast_base_patch": ("ssast", "base", "patch"),
    "ssast_base_frame": ("ssast", "base", "frame"),
    "ssast_large_patch": ("ssast", "large", "patch"),
    "ssast_large_frame": ("ssast", "large", "frame"),
    "ssast_huge_patch": ("ssast", "huge", "patch"),
    "ssast_huge_frame": ("ssast", "huge", "frame"),
}

# Names from before the <family>_<size>_<tokens> order; `create_model` still accepts them.
PRESET_ALIASES: dict[str, str] = {
    "maeast_patch_tiny": "maeast_tiny_patch",
    "maeast_frame_tiny": "maeast_tiny_frame",
    "maeast_patch_small": "maeast_small_patch",
    "maeast_frame_small": "maeast_small_frame",
    "maeast_patch_medium": "maeast_medium_patch",
    "maeast_frame_medium": "maeast_medium_frame",
    "maeast_patch_base": "maeast_base_patch",
    "maeast_frame_base": "maeast_base_frame",
    "maeast_patch_large": "maeast_large_patch",
    "maeast_frame_large": "maeast_large_frame",
    "maeast_patch_huge": "maeast_huge_patch",
    "maeast_frame_huge": "maeast_huge_frame",
    "ssast_patch_tiny": "ssast_tiny_patch",
    "ssast_frame_tiny": "ssast_tiny_frame",
    "ssast_patch_small": "ssast_small_patch",
    "ssast_frame_small": "ssast_small_frame",
    "ssast_patch_medium": "ssast_medium_patch",
    "ssast_frame_medium": "ssast_medium_frame",
    "ssast_patch_base": "ssast_base_patch",
    "ssast_frame_base": "ssast_base_frame",
    "ssast_patch_large": "ssast_large_patch",
    "ssast_frame_large": "ssast_large_frame",
    "ssast_patch_huge": "ssast_huge_patch",
    "ssast_frame_huge": "ssast_huge_frame",
}
# fmt: on

PRESETS: dict[str, dict[str, Any]] = {
    name: _FAMILIES[family](size, tokens) for name, (family, size, tokens) in PRESET_TABLE.items()
}


def list_models() -> list[str]:
    """Canonical names accepted by `create_model` (the old names in PRESET_ALIASES work too)."""
    return sorted(PRESETS)


def resolve_preset_name(name: str) -> str:
    """The canonical preset name for `name` (itself or an old alias)."""
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        close = [n for n in PRESETS if name.split("_")[0] in n][:8]
        raise ConfigError(
            f"unknown model {name!r}; e.g. {close or list_models()[:8]} (see mwmae.list_models())"
        )
    return name


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a preset (or an old alias) with field overrides; "auto" windows follow an
    overridden patch grid."""
    name = resolve_preset_name(name)
    check_overrides(overrides)
    return ModelConfig(**{**PRESETS[name], "name": name, **overrides})
