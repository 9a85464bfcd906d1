"""Model configuration, the default window-size rule, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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


def default_window_sizes(num_patches: int) -> list[int]:
    """Every factor f of L with 1 < f < L, ascending, then two global heads (0).

    250 -> [2, 5, 10, 25, 50, 125, 0, 0]; 125 -> [5, 25, 0, 0]; 500 -> 12 heads; 640 -> 16.
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be positive, got {num_patches}")
    factors = [f for f in range(2, num_patches) if num_patches % f == 0]
    return factors + [0, 0]


@dataclass
class ModelConfig:
    """Everything needed to build a `MaskedAutoencoder`; saved as config.json."""

    name: str = "custom"
    # Input and tokens
    num_frames: int = 200
    num_mels: int = 80
    patch_size: tuple[int, int] = (4, 16)
    # Encoder
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    encoder_window_sizes: list[int] | None = None  # None: plain global attention
    # Decoder
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 8
    decoder_window_sizes: list[int] | None = None
    shift_windows: bool = False  # shifted windows on odd-indexed blocks
    # MW-MHA kernel: "grouped" (one fused call per distinct window size; as cheap as global
    # attention on CPU), "dense" (one masked call for all heads; fewer launches on GPUs) or
    # "flex" (one FlexAttention call with a block mask; models/flex.py)
    mwmha_impl: str = "grouped"
    # Tokens and positions
    use_cls_token: bool = False
    pos_embed: str = "2d"  # "2d": (freq, time) sin-cos; "1d": over the flattened token index
    trainable_pos_embed: bool = True  # the reference trains (and weight-decays) both tables
    # Masking and losses
    mask_ratio: float = 0.8
    masking: str = "random"  # "random" | "chunk"
    chunk_sizes: tuple[int, ...] = (3, 4, 5)
    norm_pix_loss: bool = False
    encoder_sees_all: bool = False  # SSAST-style: all tokens, masked ones replaced by a token
    reconstruction_weight: float = 1.0
    contrastive_weight: float = 0.0  # MAE-AST InfoNCE between predicted and true masked patches
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.chunk_sizes = tuple(int(c) for c in self.chunk_sizes)
        if self.encoder_window_sizes is not None:
            self.encoder_window_sizes = [int(w) for w in self.encoder_window_sizes]
        if self.decoder_window_sizes is not None:
            self.decoder_window_sizes = [int(w) for w in self.decoder_window_sizes]
        self.validate()

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
        pt, pf = self.patch_size
        if pt <= 0 or pf <= 0 or self.num_frames % pt or self.num_mels % pf:
            raise ValueError(
                f"patch_size {self.patch_size} must divide the input ({self.num_frames} frames, "
                f"{self.num_mels} mels)"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by {self.num_heads} heads")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} not divisible by "
                f"{self.decoder_num_heads} heads"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.masking not in ("random", "chunk"):
            raise ValueError(f"masking must be 'random' or 'chunk', got {self.masking!r}")
        if self.mwmha_impl not in ("dense", "grouped", "flex"):
            raise ValueError(
                f"mwmha_impl must be 'dense', 'grouped' or 'flex', got {self.mwmha_impl!r}"
            )
        if self.pos_embed not in ("1d", "2d"):
            raise ValueError(f"pos_embed must be '1d' or '2d', got {self.pos_embed!r}")
        L = self.num_patches
        for part, windows, heads in (
            ("encoder", self.encoder_window_sizes, self.num_heads),
            ("decoder", self.decoder_window_sizes, self.decoder_num_heads),
        ):
            if windows is None:
                continue
            if len(windows) != heads:
                raise ValueError(
                    f"{part}_window_sizes {windows} has {len(windows)} entries for {heads} heads"
                )
            for w in windows:
                if w < 0 or (w and L % w):
                    raise ValueError(
                        f"{part} window size {w} does not divide the number of patches {L}"
                    )
            if self.use_cls_token and any(0 < w < L for w in windows):
                raise ValueError(f"windowed {part} heads cannot be combined with a cls token")
        if self.encoder_window_sizes is not None and not self.encoder_sees_all:
            keep = self.len_keep()
            for w in self.encoder_window_sizes:
                if 0 < w < L and keep % w:
                    raise ValueError(
                        f"encoder window size {w} does not divide the {keep} kept tokens "
                        f"(mask_ratio {self.mask_ratio}, {L} patches)"
                    )

    # Serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["chunk_sizes"] = list(self.chunk_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**d)

    def replace(self, **overrides: Any) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


# --------------------------------------------------------------------------------------------
# Presets
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
    pt, pf = PATCH_SIZES[patch]
    windows = default_window_sizes((200 // pt) * (80 // pf))
    return {
        **_encoder(size),
        "patch_size": (pt, pf),
        "use_cls_token": False,
        "mask_ratio": 0.8,
        "decoder_window_sizes": windows,
        "decoder_num_heads": len(windows),
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


def _build_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for size in ENCODER_SIZES:
        for patch in PATCH_SIZES:
            presets[f"mae_{size}_{patch}"] = _mae(size, patch)
            presets[f"mwmae_{size}_{patch}"] = _mwmae(size, patch)
            presets[f"ssast_{size}_{patch}"] = _ssast(size, patch)
        for tokens in ("patch", "frame"):
            presets[f"maeast_{tokens}_{size}"] = _maeast(size, tokens)
            presets[f"ssast_{tokens}_{size}"] = _ssast(size, tokens)
    return presets


PRESETS: dict[str, dict[str, Any]] = _build_presets()


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(PRESETS)


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        close = [n for n in PRESETS if name.split("_")[0] in n][:8]
        raise ValueError(
            f"unknown model {name!r}; e.g. {close or list_models()[:8]} (see mwmae.list_models())"
        )
    values = {**PRESETS[name], "name": name, **overrides}
    # A new token grid invalidates the preset's default windows: recompute them unless given.
    base = PRESETS[name]
    if base.get("decoder_window_sizes") is not None and "decoder_window_sizes" not in overrides:
        pt, pf = values.get("patch_size", base["patch_size"])
        num_patches = (values.get("num_frames", 200) // pt) * (values.get("num_mels", 80) // pf)
        windows = default_window_sizes(num_patches)
        if windows != base["decoder_window_sizes"]:
            values["decoder_window_sizes"] = windows
            if "decoder_num_heads" not in overrides:
                values["decoder_num_heads"] = len(windows)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config keys: {unknown}; known: {sorted(known)}")
    return ModelConfig(**values)
