"""Transformer building blocks: positional embeddings, Mlp, Attention, MultiWindowAttention, Block.

Conventions follow the MW-MAE reference: pre-norm blocks, LayerNorm eps 1e-6, tanh-approximated
GELU, fused qkv with bias whose output columns are [q | k | v], each laid out head-major.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
SHIFT_MASK_VALUE = -100.0  # the reference's value for logits across shifted-window regions


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

    Two fused implementations, neither looping over heads:
    - "grouped" (default): heads with the same window size in one attention call each, the
      windows folded into the batch axis; windowed heads cost O(L * w). On CPU this costs what
      global attention costs (benchmarks/RESULTS.md).
    - "dense": one attention call for all heads with a per-head additive mask (relative bias
      inside the head's window, -inf outside): a single launch, but a masked kernel with O(L^2)
      work per head; meant for GPUs, where launch count matters (not yet measured).
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
        self._layout_cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        num_heads = len(window_sizes)
        if num_heads == 0 or dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads ({window_sizes})")
        if any(w < 0 for w in window_sizes):
            raise ValueError(f"window sizes must be >= 0, got {window_sizes}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_sizes = [int(w) for w in window_sizes]
        self.shift = shift
        self._flex = None
        if impl == "flex":  # imported here: the flex kernel builds on this module
            from mwmae.models.flex import FlexWindows

            self._flex = FlexWindows(self.window_sizes, shift)
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

    def _groups(self, seq_len: int) -> list[tuple[int, list[int]]]:
        """[(window, head indices)], window 0 for global heads.

        A window equal to the sequence length is still a windowed head (one window, with its
        relative bias), as in the reference."""
        groups: dict[int, list[int]] = {}
        for h, w in enumerate(self.window_sizes):
            if w and seq_len % w:
                raise ValueError(
                    f"window size {w} does not divide the sequence length {seq_len} "
                    f"(window sizes {self.window_sizes})"
                )
            groups.setdefault(w, []).append(h)
        return sorted(groups.items())

    def _window_bias(self, heads: list[int], w: int, seq_len: int, device, dtype) -> torch.Tensor:
        """Additive logits (len(heads), n_windows or 1, w, w): relative bias (+ shift mask)."""
        pos = torch.arange(w, device=device)
        rel_index = pos[:, None] - pos[None, :] + w - 1  # (w, w)
        tables = torch.stack([self.rel_pos_bias[str(h)] for h in heads])  # (Hg, 2w-1)
        bias = tables[:, rel_index].to(dtype)[:, None]  # (Hg, 1, w, w)
        if self.shift:
            bias = bias + shift_mask(seq_len, w, device, dtype)[None]  # (Hg, nW, w, w)
        return bias

    def _dense_layout(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Static per-length tensors, cached: index (H, N, N) into the concatenated bias tables
        (0 = a zero slot) and the additive mask (H, N, N): -inf outside a head's window,
        -100 across shifted-window regions, 0 elsewhere."""
        key = (seq_len, str(device))
        if key in self._layout_cache:
            return self._layout_cache[key]
        self._groups(seq_len)  # validates that every window divides seq_len
        N = seq_len
        index = torch.zeros(self.num_heads, N, N, dtype=torch.long)
        mask = torch.zeros(self.num_heads, N, N)
        offset = 1
        for h, w in enumerate(self.window_sizes):
            if w == 0:
                continue
            shift = w // 2 if self.shift else 0
            pos = (torch.arange(N) - shift) % N  # position after rolling left by `shift`
            window = pos // w
            inside = window[:, None] == window[None, :]
            rel = pos[:, None] - pos[None, :] + w - 1
            index[h] = torch.where(inside, offset + rel, 0)
            mask[h] = torch.where(inside, 0.0, float("-inf"))
            if shift:
                region = shift_regions(N, w)[pos]
                crosses = inside & (region[:, None] != region[None, :])
                mask[h] = torch.where(crosses, SHIFT_MASK_VALUE, mask[h])
            offset += 2 * w - 1
        layout = (index.to(device), mask.to(device))
        self._layout_cache[key] = layout
        return layout

    def _dense_bias(self, seq_len: int, device, dtype) -> torch.Tensor:
        index, mask = self._dense_layout(seq_len, device)
        tables = [torch.zeros(1, device=device)] + [
            self.rel_pos_bias[str(h)] for h, w in enumerate(self.window_sizes) if w > 0
        ]
        return (torch.cat(tables)[index] + mask).to(dtype)  # (H, N, N)

    # Attention maths shared with `Attention`: the qkv split; the additive logits of all heads.
    split_qkv = Attention.split_qkv

    def attention_bias(self, seq_len: int, device=None, dtype=None) -> torch.Tensor:
        """The additive logits of every head, (H, N, N): relative bias inside the head's
        window, -inf outside it, -100 across shifted-window regions (whatever the kernel)."""
        dtype = dtype or self.qkv.weight.dtype
        return self._dense_bias(seq_len, device or self.qkv.weight.device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.split_qkv(x)  # (B, H, N, hd)
        if self._flex is not None:
            tables = [self.rel_pos_bias[str(h)] for h, w in enumerate(self.window_sizes) if w]
            out = self._flex(q, k, v, tables)
            return self.proj(out.transpose(1, 2).reshape(B, N, C))
        if self.impl == "dense":
            out = self._forward_dense(q, k, v)
        else:
            out = self._forward_grouped(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _forward_dense(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bias = self._dense_bias(q.shape[2], q.device, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def _forward_grouped(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, H, N, hd = q.shape
        out = torch.empty_like(q)
        for w, heads in self._groups(N):
            idx = torch.tensor(heads, device=q.device)
            qg, kg, vg = q.index_select(1, idx), k.index_select(1, idx), v.index_select(1, idx)
            if w == 0:
                out[:, idx] = F.scaled_dot_product_attention(qg, kg, vg)
                continue
            Hg = len(heads)
            shift = w // 2 if self.shift else 0
            if shift:
                qg, kg, vg = (t.roll(-shift, dims=2) for t in (qg, kg, vg))
            n_win = N // w
            # (B, Hg, N, hd) -> (B, Hg * n_win, w, hd): windows become extra "heads".
            qw, kw, vw = (t.reshape(B, Hg * n_win, w, hd) for t in (qg, kg, vg))
            bias = self._window_bias(heads, w, N, q.device, q.dtype)
            bias = bias.expand(Hg, n_win, w, w).reshape(Hg * n_win, w, w)
            og = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=bias).reshape(B, Hg, N, hd)
            out[:, idx] = og.roll(shift, dims=2) if shift else og
        return out


def shift_regions(seq_len: int, window: int, device=None) -> torch.Tensor:
    """(seq_len,) region label of each position of the sequence rolled left by window // 2:
    0 before the last window, 1 for the tail tokens in it, 2 for the wrapped-around head tokens."""
    shift = window // 2
    region = torch.zeros(seq_len, dtype=torch.long, device=device)
    region[seq_len - window : seq_len - shift] = 1
    region[seq_len - shift :] = 2
    return region


def shift_mask(seq_len: int, window: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_windows, w, w) additive mask for shifted windows: -100 between the sequence's tail and
    head tokens that a roll by -w // 2 puts into the same (last) window."""
    region = shift_regions(seq_len, window, device).reshape(seq_len // window, window)
    differs = region[:, :, None] != region[:, None, :]
    return torch.where(differs, SHIFT_MASK_VALUE, 0.0).to(dtype)


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
