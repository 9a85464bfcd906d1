"""Analytic model FLOPs of one pretraining step, for MFU.

Counts matrix multiplies only (2 FLOPs per multiply-add): patch embedding, qkv/proj/MLP linears,
attention scores and values, decoder embedding and prediction head(s). Norms, softmax, GELU and
the optimiser are left out, as is usual for MFU. A training step is 3x the forward pass
(backward = 2x forward).

Windowed (MW-MHA) heads cost N * w instead of N * N in the attention products when
`windowed_attention=True`: the algorithm's FLOPs. The "dense" MW-MHA kernel used here computes
all N x N products with a mask; `windowed_attention=False` counts those instead (and matches
`torch.utils.flop_counter.FlopCounterMode`).
"""

from __future__ import annotations

from typing import Any

from mwmae.models import ModelConfig


def _attention_flops(
    tokens: int, dim: int, windows: list[int] | None, heads: int, windowed: bool
) -> int:
    head_dim = dim // heads
    if windows is None or not windowed:
        return 4 * tokens * tokens * dim  # QK^T and AV, all heads
    total = 0
    for w in windows:
        span = tokens if w == 0 or w >= tokens else w
        total += 4 * tokens * span * head_dim
    return total


def _blocks_flops(
    depth: int,
    tokens: int,
    dim: int,
    mlp_ratio: float,
    windows: list[int] | None,
    heads: int,
    windowed: bool,
) -> tuple[int, int]:
    """(all FLOPs, attention-product FLOPs) of `depth` transformer blocks."""
    hidden = int(dim * mlp_ratio)
    linear = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 4 * tokens * dim * hidden
    attention = depth * _attention_flops(tokens, dim, windows, heads, windowed)
    return depth * linear + attention, attention


def model_flops_per_sample(
    config: ModelConfig, training: bool = True, windowed_attention: bool = True
) -> dict[str, Any]:
    """FLOPs for one clip: {"encoder", "decoder", "attention", "forward", "total"}.

    "attention" (the QK^T and AV products, already inside encoder/decoder) is reported apart
    because some FLOP counters miss fused attention kernels; total = 3x forward when `training`.
    """
    c = config
    L, P = c.num_patches, c.patch_dim
    cls = 1 if c.use_cls_token else 0
    enc_tokens = (L if c.encoder_sees_all else c.len_keep()) + cls
    encoder = 2 * L * P * c.embed_dim  # the patch embedding sees every patch
    blocks, enc_attention = _blocks_flops(
        c.depth,
        enc_tokens,
        c.embed_dim,
        c.mlp_ratio,
        c.encoder_window_sizes,
        c.num_heads,
        windowed_attention,
    )
    encoder += blocks
    dec_tokens = L + cls
    decoder = 2 * enc_tokens * c.embed_dim * c.decoder_embed_dim
    blocks, dec_attention = _blocks_flops(
        c.decoder_depth,
        dec_tokens,
        c.decoder_embed_dim,
        c.mlp_ratio,
        c.decoder_window_sizes,
        c.decoder_num_heads,
        windowed_attention,
    )
    decoder += blocks
    decoder += 2 * L * c.decoder_embed_dim * P  # prediction head (cls output dropped)
    if c.contrastive_weight > 0:
        masked = L - c.len_keep()
        decoder += 2 * L * c.decoder_embed_dim * P + 2 * masked * masked * P
    forward = encoder + decoder
    return {
        "encoder": encoder,
        "decoder": decoder,
        "attention": enc_attention + dec_attention,
        "forward": forward,
        "total": 3 * forward if training else forward,
    }
