"""MW-MHA on FlexAttention: one `flex_attention` call for all heads.

Each head's window becomes a block mask (token i may attend to token j when both lie in the same
window of that head, windows counted after the head's shift roll) and the relative position bias
(+ the -100 between shifted-window regions) becomes a score modification, both read from the
shared `mwmae.models.windows` layout (small (H, N) integer tables), so the semantics are those of
the "dense" and "grouped" kernels: a window as long as the sequence keeps its bias, and global
heads (window 0) attend everywhere without bias.

The block mask is built once per (sequence length, device) and cached by the kernel. On CUDA
outside `torch.compile` the attention call goes through a compiled `flex_attention` (the fused
kernel); on CPU it runs PyTorch's unfused reference math (correct, not fast; see
`_attention_fn` for training on CPU).
"""

from __future__ import annotations

from typing import Any

import torch

from mwmae.errors import ConfigError
from mwmae.models.windows import SHIFT_MASK_VALUE, WindowLayout, window_layout

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
    """The flex kernel of one MultiWindowAttention: caches its block masks, holds no parameters."""

    def __init__(self, window_sizes: list[int], shift: bool) -> None:
        require_flex()
        self.window_sizes = [int(w) for w in window_sizes]
        self.shift = bool(shift)
        self._block_masks: dict[tuple[int, str], Any] = {}

    def layout(self, seq_len: int, device) -> WindowLayout:
        return window_layout(seq_len, self.window_sizes, self.shift, device)

    def block_mask(self, lay: WindowLayout, device) -> Any:
        """Which (query, key) pairs share a window of their head, for one length and device."""
        key = (lay.seq_len, str(device))
        if key not in self._block_masks:
            window = lay.window

            def same_window(b, h, q_idx, kv_idx):
                return window[h, q_idx] == window[h, kv_idx]

            H, N = window.shape
            self._block_masks[key] = create_block_mask(
                same_window, B=None, H=H, Q_LEN=N, KV_LEN=N, device=device
            )
        return self._block_masks[key]

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        lay: WindowLayout,
        bias_table: torch.Tensor,
    ) -> torch.Tensor:
        """q, k, v (B, H, N, hd); bias_table: the concatenated tables behind their zero slot."""
        block_mask = self.block_mask(lay, q.device)
        bias_table = bias_table.to(torch.promote_types(q.dtype, torch.float32))  # score dtype
        pos, window, region, base = lay.pos, lay.window, lay.region, lay.base

        def add_bias(score, b, h, q_idx, kv_idx):
            inside = window[h, q_idx] == window[h, kv_idx]
            rel = torch.where(inside, base[h] + pos[h, q_idx] - pos[h, kv_idx], 0)
            crosses = region[h, q_idx] != region[h, kv_idx]
            shift_mask = torch.where(crosses, SHIFT_MASK_VALUE, 0.0)
            return score + bias_table[rel] + shift_mask

        attend = _attention_fn(q)
        return attend(q, k, v, score_mod=add_bias, block_mask=block_mask)
