"""Transformer building blocks: positional embeddings, Mlp, Attention, MultiWindowAttention, Block.

Conventions follow the MW-MAE reference: pre-norm blocks, LayerNorm eps 1e-6, tanh-approximated
GELU, fused qkv with bias whose output columns are [q | k | v], each laid out head-major.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flex import FlexWindows
from .windows import WindowLayout, dense_layout, window_layout

LAYER_NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Positional embeddings (sines first, then cosines; not interleaved)
# --------------------------------------------------------------------------------------------
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(len(positions), dim) float64: [sin(pos * omega_k), cos(pos * omega_k)], k < dim / 2."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(positions, dtype=np.float64).reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_t: int, grid_f: int) -> np.ndarray:
    """(grid_t * grid_f, dim): first half of the channels encodes the frequency-patch index,
    second half the time index; rows in time-major token order t * grid_f + f."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    t_idx, f_idx = np.divmod(np.arange(grid_t * grid_f), grid_f)
    return np.concatenate([sincos_1d(dim // 2, f_idx), sincos_1d(dim // 2, t_idx)], axis=1)


# --------------------------------------------------------------------------------------------
# Initialisers (the reference's Flax conventions)
# --------------------------------------------------------------------------------------------
_TRUNC_NORMAL_STD_CORRECTION = 0.87962566103423978  # std of a unit normal truncated to +-2


def variance_scaling_trunc_normal_(tensor: torch.Tensor, scale: float, fan_in: int) -> None:
    """Flax `variance_scaling(scale, 'fan_in', 'truncated_normal')`: std sqrt(scale / fan_in)."""
    std = math.sqrt(scale / fan_in) / _TRUNC_NORMAL_STD_CORRECTION
    nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def lecun_normal_(linear: nn.Linear) -> None:
    """Flax default Dense init (truncated normal, std sqrt(1 / fan_in)), zero bias."""
    variance_scaling_trunc_normal_(linear.weight, 1.0, linear.in_features)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def xavier_linear_(linear: nn.Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)
        xavier_linear_(self.fc1)
        xavier_linear_(self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Global multi-head self-attention with fused qkv."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_sizes = [0] * num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        xavier_linear_(self.qkv)
        xavier_linear_(self.proj)

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, C) -> q, k, v, each (B, H, N, hd)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def attention_bias(self, seq_len: int, device=None, dtype=None) -> torch.Tensor | None:
        """The additive logits of every head, (H, N, N); None for plain global attention."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.split_qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MultiWindowAttention(nn.Module):
    """Multi-window multi-head attention (MW-MHA).

    Head h attends within non-overlapping windows of `window_sizes[h]` consecutive tokens of the
    sequence (0 means global). Each windowed head adds a learned 1-D
    relative position bias (table of 2w - 1 entries, bias[i, j] = table[i - j + w - 1]).
    With `shift=True` windowed heads roll the sequence by -w // 2 first (Swin-style, with a mask
    of -100 between tokens that were not neighbours) and roll back afterwards.

    Three fused kernels, none looping over heads, all reading one cached `WindowLayout`
    (`mwmae.models.windows`) and the bias tables concatenated behind a zero slot:
    - "grouped" (default): heads with the same window size in one attention call each, the
      windows folded into the batch axis; windowed heads cost O(L * w). On CPU this costs what
      global attention costs (benchmarks/RESULTS.md).
    - "dense": one attention call for all heads with a per-head additive mask (relative bias
      inside the head's window, -inf outside): a single launch, but a masked kernel with O(L^2)
      work per head; meant for GPUs, where launch count matters (not yet measured).
    - "flex": one FlexAttention call with a block mask (`mwmae.models.flex`).
    """

    def __init__(
        self,
        dim: int,
        window_sizes: list[int],
        shift: bool = False,
        qkv_bias: bool = True,
        impl: str = "grouped",
    ) -> None:
        super().__init__()
        if impl not in ("dense", "grouped", "flex"):
            raise ValueError(f"impl must be 'dense', 'grouped' or 'flex', got {impl!r}")
        self.impl = impl
        num_heads = len(window_sizes)
        if num_heads == 0 or dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads ({window_sizes})")
        if any(w < 0 for w in window_sizes):
            raise ValueError(f"window sizes must be >= 0, got {window_sizes}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_sizes = [int(w) for w in window_sizes]
        self.shift = shift
        self._flex = FlexWindows(self.window_sizes, shift) if impl == "flex" else None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        xavier_linear_(self.qkv)
        xavier_linear_(self.proj)
        # One table per windowed head, keyed by the head index.
        self.rel_pos_bias = nn.ParameterDict()
        for h, w in enumerate(self.window_sizes):
            if w > 0:
                table = torch.empty(2 * w - 1)
                variance_scaling_trunc_normal_(table, 0.02, 2 * w - 1)
                self.rel_pos_bias[str(h)] = nn.Parameter(table)

    # Attention maths shared with `Attention`: the qkv split; the additive logits of all heads.
    split_qkv = Attention.split_qkv

    def layout(self, seq_len: int, device) -> WindowLayout:
        return window_layout(seq_len, self.window_sizes, self.shift, device)

    def bias_table(self) -> torch.Tensor:
        """The windowed heads' tables in head order behind one zero (slot 0: no bias), the
        vector that every layout's bias index points into."""
        tables = [self.rel_pos_bias[str(h)] for h, w in enumerate(self.window_sizes) if w]
        weight = self.qkv.weight
        return torch.cat([torch.zeros(1, device=weight.device, dtype=weight.dtype), *tables])

    def attention_bias(self, seq_len: int, device=None, dtype=None) -> torch.Tensor:
        """The additive logits of every head, (H, N, N): relative bias inside the head's
        window, -inf outside it, -100 across shifted-window regions (whatever the kernel)."""
        layout = self.layout(seq_len, device or self.qkv.weight.device)
        return dense_bias(layout, self.bias_table(), dtype or self.qkv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.split_qkv(x)  # (B, H, N, hd)
        if self._flex is not None:
            kernel = self._flex
        else:
            kernel = dense_attention if self.impl == "dense" else grouped_attention
        out = kernel(q, k, v, self.layout(N, x.device), self.bias_table())
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def dense_bias(layout: WindowLayout, bias_table: torch.Tensor, dtype) -> torch.Tensor:
    """(H, N, N) additive logits: the gathered relative bias plus the layout's mask."""
    index, mask = dense_layout(layout)
    return (bias_table[index] + mask).to(dtype)


def dense_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: WindowLayout, bias_table: Tensor
) -> Tensor:
    """One masked attention call for all heads; q, k, v (B, H, N, hd)."""
    bias = dense_bias(layout, bias_table, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: WindowLayout, bias_table: Tensor
) -> Tensor:
    """One attention call per window size, the windows folded into the head axis."""
    B, H, N, hd = q.shape
    out = torch.empty_like(q)
    for g in layout.groups:
        idx = g.head_index
        qg, kg, vg = q.index_select(1, idx), k.index_select(1, idx), v.index_select(1, idx)
        if g.window == 0:
            out[:, idx] = F.scaled_dot_product_attention(qg, kg, vg)
            continue
        Hg, w, n_win = len(g.heads), g.window, N // g.window
        if g.roll:
            qg, kg, vg = (t.roll(-g.roll, dims=2) for t in (qg, kg, vg))
        # (B, Hg, N, hd) -> (B, Hg * n_win, w, hd): windows become extra "heads".
        qw, kw, vw = (t.reshape(B, Hg * n_win, w, hd) for t in (qg, kg, vg))
        bias = bias_table[g.bias_index].to(q.dtype)[:, None]  # (Hg, 1, w, w)
        if g.shift_mask is not None:
            bias = bias + g.shift_mask.to(q.dtype)[None]  # (Hg, n_win, w, w)
        bias = bias.expand(Hg, n_win, w, w).reshape(Hg * n_win, w, w)
        og = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias).reshape(B, Hg, N, hd)
        out[:, idx] = og.roll(g.roll, dims=2) if g.roll else og
    return out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        window_sizes: list[int] | None = None,
        shift: bool = False,
        mwmha_impl: str = "grouped",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        if window_sizes is None:
            self.attn: nn.Module = Attention(dim, num_heads)
        else:
            if len(window_sizes) != num_heads:
                raise ValueError(
                    f"{len(window_sizes)} window sizes {window_sizes} for {num_heads} heads"
                )
            self.attn = MultiWindowAttention(dim, window_sizes, shift=shift, impl=mwmha_impl)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping (t x f) patches of a (B, 1, T, F) spectrogram -> (B, L, D), time-major."""

    def __init__(self, patch_size: tuple[int, int], embed_dim: int) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        # Conv fans (in * kh * kw, out * kh * kw), as Flax's xavier_uniform on the conv kernel.
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, gt, gf) -> (B, gt * gf, D)
