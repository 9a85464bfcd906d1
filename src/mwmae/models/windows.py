"""The MW-MHA window layout: the one place that turns (sequence length, window sizes, shift)
into the index tables every MW-MHA kernel reads.

Head h with window w > 0 attends within non-overlapping blocks of w consecutive positions; with
`shift` the sequence is first rolled left by w // 2 (Swin-style), so the last window holds the
sequence's tail followed by its wrapped-around head, and logits between those two regions get
SHIFT_MASK_VALUE. Window 0 is a global head. A window as long as the sequence is still a windowed
head (one window, with its relative bias), as in the reference.

Relative position bias: the windowed heads' tables (2w - 1 entries each, in head order) are
concatenated behind one zero slot; `base[h]` is the index of head h's entry for offset 0, so the
bias of query i and key j is `concatenated[base[h] + pos[h, i] - pos[h, j]]` inside a window and
slot 0 (zero) for global heads.

Layouts are cached per (seq_len, window sizes, shift, device) in module-level dicts, so the
blocks of a model (and every model) with the same windows share one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

SHIFT_MASK_VALUE = -100.0  # the reference's value for logits across shifted-window regions

LayoutKey = tuple[int, tuple[int, ...], bool, str]


def nondividing_window(window_sizes: Sequence[int], length: int) -> int | None:
    """The first window (> 0) of `window_sizes` that does not divide `length`, else None."""
    return next((w for w in window_sizes if w and length % w), None)


def check_windows_divide(window_sizes: Sequence[int], seq_len: int) -> None:
    """ValueError unless every window divides the sequence length (the kernels' one check;
    `ModelConfig` reports the same problem in model terms before any kernel runs)."""
    w = nondividing_window(window_sizes, seq_len)
    if w is not None:
        raise ValueError(
            f"window size {w} does not divide the sequence length {seq_len} "
            f"(window sizes {list(window_sizes)})"
        )


def shift_regions(seq_len: int, window: int, device=None) -> torch.Tensor:
    """(seq_len,) region label of each position of the sequence rolled left by window // 2:
    0 before the last window, 1 for the tail tokens in it, 2 for the wrapped-around head tokens."""
    shift = window // 2
    region = torch.zeros(seq_len, dtype=torch.long, device=device)
    region[seq_len - window : seq_len - shift] = 1
    region[seq_len - shift :] = 2
    return region


@dataclass(frozen=True)
class WindowGroup:
    """Heads sharing one window size, run by the grouped kernel in one attention call on the
    rolled sequence with the windows folded into the head axis."""

    window: int  # 0: global heads
    heads: tuple[int, ...]
    head_index: torch.Tensor  # (Hg,) long: `heads` on the layout's device
    roll: int  # the group's left roll (w // 2 when shifted, else 0)
    bias_index: torch.Tensor | None  # (Hg, w, w) into the concatenated tables; None if global
    shift_mask: torch.Tensor | None  # (n_windows, w, w): 0 / -100; None unless rolled


@dataclass(frozen=True)
class WindowLayout:
    """Per-position tables, each (H, N) long (0 for global heads), and the head groups.

    `pos[h, i]` is token i's position after head h's roll, `window[h, i]` its window id,
    `region[h, i]` its shifted-window region (0 without shift) and `base[h]` (H,) head h's
    offset-0 entry in the concatenated bias tables."""

    key: LayoutKey
    pos: torch.Tensor
    window: torch.Tensor
    region: torch.Tensor
    base: torch.Tensor
    groups: tuple[WindowGroup, ...]  # ascending window size, global heads first

    @property
    def seq_len(self) -> int:
        return self.key[0]


_LAYOUTS: dict[LayoutKey, WindowLayout] = {}
_DENSE: dict[LayoutKey, tuple[torch.Tensor, torch.Tensor]] = {}


def _cached(cache: dict[LayoutKey, Any], key: LayoutKey, build: Callable[[], Any]) -> Any:
    if key not in cache:
        cache[key] = build()
    return cache[key]


def window_layout(
    seq_len: int, window_sizes: Sequence[int], shift: bool, device=None
) -> WindowLayout:
    """The cached layout; ValueError when a window does not divide `seq_len`."""
    key = (int(seq_len), tuple(int(w) for w in window_sizes), bool(shift), str(device))
    return _cached(_LAYOUTS, key, lambda: _build_layout(key, device))


def _build_layout(key: LayoutKey, device) -> WindowLayout:
    N, window_sizes, shift, _ = key
    check_windows_divide(window_sizes, N)
    H = len(window_sizes)
    pos, window, region = (torch.zeros(H, N, dtype=torch.long) for _ in range(3))
    base = torch.zeros(H, dtype=torch.long)
    offset = 1  # slot 0 of the concatenated tables is the zero
    for h, w in enumerate(window_sizes):
        if w == 0:
            continue
        roll = w // 2 if shift else 0
        pos[h] = (torch.arange(N) - roll) % N  # position after rolling left by `roll`
        window[h] = pos[h] // w
        if roll:
            region[h] = shift_regions(N, w)[pos[h]]
        base[h] = offset + w - 1
        offset += 2 * w - 1
    groups = tuple(_group(w, heads, N, shift, base, device) for w, heads in _by_window(key))
    pos, window, region, base = (t.to(device) for t in (pos, window, region, base))
    return WindowLayout(key, pos, window, region, base, groups)


def _by_window(key: LayoutKey) -> list[tuple[int, tuple[int, ...]]]:
    """[(window, head indices)] in ascending window size."""
    groups: dict[int, list[int]] = {}
    for h, w in enumerate(key[1]):
        groups.setdefault(w, []).append(h)
    return [(w, tuple(heads)) for w, heads in sorted(groups.items())]


def _group(
    w: int, heads: tuple[int, ...], N: int, shift: bool, base: torch.Tensor, device
) -> WindowGroup:
    head_index = torch.tensor(heads, device=device)
    if w == 0:
        return WindowGroup(w, heads, head_index, 0, None, None)
    roll = w // 2 if shift else 0
    offsets = torch.arange(w)[:, None] - torch.arange(w)[None, :]  # i - j
    bias_index = base[list(heads)][:, None, None] + offsets  # (Hg, w, w)
    shift_mask = None
    if roll:  # -100 between the tail and the wrapped-around head sharing the last window
        region = shift_regions(N, w).reshape(N // w, w)
        differs = region[:, :, None] != region[:, None, :]
        shift_mask = torch.where(differs, SHIFT_MASK_VALUE, 0.0).to(device)
    return WindowGroup(w, heads, head_index, roll, bias_index.to(device), shift_mask)


def dense_layout(layout: WindowLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, mask), each (H, N, N), cached: the index into the concatenated tables (0 outside
    a head's window and for global heads) and the additive mask: -inf outside the head's window,
    -100 across shifted-window regions, 0 elsewhere. The dense kernel and `attention_bias`."""
    return _cached(_DENSE, layout.key, lambda: _build_dense(layout))


def _build_dense(layout: WindowLayout) -> tuple[torch.Tensor, torch.Tensor]:
    pos, window, region = (t[:, :, None] for t in (layout.pos, layout.window, layout.region))
    pos_t, window_t, region_t = (t.transpose(1, 2) for t in (pos, window, region))
    inside = window == window_t
    index = torch.where(inside, layout.base[:, None, None] + pos - pos_t, 0)
    crosses = region != region_t
    mask = torch.where(inside, torch.where(crosses, SHIFT_MASK_VALUE, 0.0), float("-inf"))
    return index, mask
