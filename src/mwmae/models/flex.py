"""MW-MHA on FlexAttention: one `flex_attention` call for all heads.

Each head's window becomes a block mask (token i may attend to token j when both lie in the same
window of that head, windows counted after the head's shift roll) and the relative position bias
(+ the -100 between shifted-window regions) becomes a score modification. The semantics are those
of the "dense" and "grouped" kernels in `mwmae.models.layers`: window ids, rolled positions and
region labels are computed the same way (`shift_regions`), a window as long as the sequence keeps
its bias, and global heads (window 0) attend everywhere without bias.

The per-length layout (small (H, N) integer tables and the block mask) is built once per
(sequence length, device) and cached. On CUDA outside `torch.compile` the attention call goes
through a compiled `flex_attention` (the fused kernel); on CPU it runs PyTorch's unfused
reference math (correct, not fast; see `_attention_fn` for training on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mwmae.errors import ConfigError
from mwmae.models.layers import SHIFT_MASK_VALUE, shift_regions

try:  # FlexAttention appeared in torch 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - depends on the installed torch
    create_block_mask = flex_attention = None

_COMPILED_FLEX: Any = None  # built on first use
_CPU_TRAINABLE_FLEX: Any = None


def flex_available() -> bool:
    """Whether the installed torch provides `torch.nn.attention.flex_attention`."""
    return flex_attention is not None


def require_flex() -> None:
    """Raise ConfigError naming the torch version when FlexAttention is missing."""
    if not flex_available():
        raise ConfigError(
            f"mwmha_impl 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5), "
            f"but torch {torch.__version__} does not provide it; use 'grouped' or 'dense'"
        )


@dataclass(frozen=True)
class FlexLayout:
    """Static per-length tables, each (H, N) long, and the block mask.

    `pos[h, i]` is token i's position after head h's roll (0 for global heads), `window[h, i]`
    its window id, `region[h, i]` its shifted-window region (0 without shift) and `base[h]` the
    index of head h's bias entry for relative offset 0 in the concatenated tables (slot 0 of the
    concatenation is a zero, used by global heads and outside windows)."""

    pos: torch.Tensor
    window: torch.Tensor
    region: torch.Tensor
    base: torch.Tensor
    block_mask: Any


def build_layout(window_sizes: list[int], shift: bool, seq_len: int, device) -> FlexLayout:
    """The tables and block mask for one sequence length (windows must divide it)."""
    H, N = len(window_sizes), seq_len
    pos = torch.zeros(H, N, dtype=torch.long)
    window = torch.zeros(H, N, dtype=torch.long)
    region = torch.zeros(H, N, dtype=torch.long)
    base = torch.zeros(H, dtype=torch.long)
    offset = 1
    for h, w in enumerate(window_sizes):
        if w == 0:
            continue
        if N % w:
            raise ValueError(
                f"window size {w} does not divide the sequence length {N} "
                f"(window sizes {window_sizes})"
            )
        roll = w // 2 if shift else 0
        pos[h] = (torch.arange(N) - roll) % N  # position after rolling left by `roll`
        window[h] = pos[h] // w
        if roll:
            region[h] = shift_regions(N, w)[pos[h]]
        base[h] = offset + w - 1
        offset += 2 * w - 1
    pos, window, region, base = (t.to(device) for t in (pos, window, region, base))

    def same_window(b, h, q_idx, kv_idx):
        return window[h, q_idx] == window[h, kv_idx]

    block_mask = create_block_mask(same_window, B=None, H=H, Q_LEN=N, KV_LEN=N, device=device)
    return FlexLayout(pos, window, region, base, block_mask)


def _attention_fn(q: torch.Tensor):
    """The attention callable for q's device and autograd state.

    CUDA outside torch.compile: a compiled flex_attention (the fused kernel). CPU with autograd:
    the public function refuses backward on CPU, so call the FlexAttention operator under the
    same eager-backend compile the public function uses (PyTorch's unfused reference math, with
    gradients for q, k, v and the bias tables). Otherwise: flex_attention as is."""
    global _COMPILED_FLEX, _CPU_TRAINABLE_FLEX
    if torch.compiler.is_compiling():
        return flex_attention
    if q.device.type == "cuda":
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        return _COMPILED_FLEX
    if q.device.type == "cpu" and q.requires_grad and torch.is_grad_enabled():
        if _CPU_TRAINABLE_FLEX is None:
            _CPU_TRAINABLE_FLEX = torch.compile(_reference_flex, backend="eager", fullgraph=True)
        return _CPU_TRAINABLE_FLEX
    return flex_attention


def _reference_flex(q, k, v, score_mod, block_mask):
    try:
        from torch._higher_order_ops.flex_attention import flex_attention as flex_operator
    except ImportError as exc:  # pragma: no cover - depends on the installed torch
        raise ConfigError(
            f"mwmha_impl 'flex' cannot train on CPU with torch {torch.__version__} "
            f"(no FlexAttention operator); use 'grouped' on CPU"
        ) from exc
    scale = q.shape[-1] ** -0.5
    out, _, _ = flex_operator(q, k, v, score_mod, block_mask.as_tuple(), scale, {})
    return out


class FlexWindows:
    """The flex kernel of one MultiWindowAttention: holds the layout cache, no parameters."""

    def __init__(self, window_sizes: list[int], shift: bool) -> None:
        require_flex()
        self.window_sizes = [int(w) for w in window_sizes]
        self.shift = bool(shift)
        self._cache: dict[tuple[int, str], FlexLayout] = {}

    def layout(self, seq_len: int, device) -> FlexLayout:
        key = (seq_len, str(device))
        if key not in self._cache:
            self._cache[key] = build_layout(self.window_sizes, self.shift, seq_len, device)
        return self._cache[key]

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: list[torch.Tensor]
    ) -> torch.Tensor:
        """q, k, v (B, H, N, hd); tables: the windowed heads' bias tables in head order."""
        lay = self.layout(q.shape[2], q.device)
        dtype = torch.promote_types(q.dtype, torch.float32)  # the kernel's score precision
        zero = torch.zeros(1, device=q.device, dtype=dtype)
        bias_table = torch.cat([zero] + [t.to(dtype) for t in tables])
        pos, window, region, base = lay.pos, lay.window, lay.region, lay.base

        def add_bias(score, b, h, q_idx, kv_idx):
            inside = window[h, q_idx] == window[h, kv_idx]
            rel = torch.where(inside, base[h] + pos[h, q_idx] - pos[h, kv_idx], 0)
            crosses = region[h, q_idx] != region[h, kv_idx]
            shift_mask = torch.where(crosses, SHIFT_MASK_VALUE, 0.0)
            return score + bias_table[rel] + shift_mask

        attend = _attention_fn(q)
        return attend(q, k, v, score_mod=add_bias, block_mask=lay.block_mask)
