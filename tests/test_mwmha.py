"""Fast (grouped, fused) MW-MHA against a naive per-head, per-window loop in float64."""

import pytest
import torch

from mwmae.analysis.probes import capture_attention
from mwmae.models import MultiWindowAttention, default_window_sizes
from mwmae.models.layers import Attention


def naive_mwmha(module: MultiWindowAttention, x: torch.Tensor):
    """Loop over heads and windows; every step explicit. Returns output and dense probs."""
    B, N, C = x.shape
    H, hd = module.num_heads, module.head_dim
    qkv = x @ module.qkv.weight.T + module.qkv.bias  # (B, N, 3C)
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    heads_out = []
    probs = torch.zeros(B, H, N, N, dtype=x.dtype)
    for h, w in enumerate(module.window_sizes):
        qh, kh, vh = (t[..., h * hd : (h + 1) * hd] for t in (q, k, v))
        if w == 0:
            logits = qh @ kh.transpose(1, 2) / hd**0.5
            p = logits.softmax(-1)
            probs[:, h] = p
            heads_out.append(p @ vh)
            continue
        shift = w // 2 if module.shift else 0
        # position of each token after rolling the sequence left by `shift`
        order = [(i + shift) % N for i in range(N)]
        table = module.rel_pos_bias[str(h)]
        out_h = torch.zeros(B, N, hd, dtype=x.dtype)
        for start in range(0, N, w):
            members = order[start : start + w]  # original token indices in this window
            logits = torch.zeros(B, w, w, dtype=x.dtype)
            for i in range(w):
                for j in range(w):
                    qi, kj = members[i], members[j]
                    value = (qh[:, qi] * kh[:, kj]).sum(-1) / hd**0.5 + table[i - j + w - 1]
                    # shifted windows: tokens that were not neighbours (wrapped) get -100
                    if shift and start == N - w:
                        wrapped_i = qi < shift
                        wrapped_j = kj < shift
                        tail_i = not wrapped_i and qi >= N - w + shift
                        tail_j = not wrapped_j and kj >= N - w + shift
                        region = lambda wr, tl: 2 if wr else (1 if tl else 0)  # noqa: E731
                        if region(wrapped_i, tail_i) != region(wrapped_j, tail_j):
                            value = value - 100.0
                    logits[:, i, j] = value
            p = logits.softmax(-1)
            for i in range(w):
                out_h[:, members[i]] = sum(p[:, i, j, None] * vh[:, members[j]] for j in range(w))
                for j in range(w):
                    probs[:, h, members[i], members[j]] = p[:, i, j]
        heads_out.append(out_h)
    out = torch.cat(heads_out, dim=-1) @ module.proj.weight.T + module.proj.bias
    return out, probs


@pytest.mark.parametrize("impl", ["dense", "grouped"])
@pytest.mark.parametrize(
    "windows,N,shift",
    [
        ([2, 5, 10, 0], 20, False),
        ([2, 5, 10, 0], 20, True),
        ([3, 3, 0, 6], 12, True),  # repeated window sizes share one fused call
        ([4, 12, 0, 0], 12, True),  # a window as long as the sequence keeps its bias
        ([6, 2, 3, 0, 1, 12], 12, False),  # unsorted mix, window of 1
    ],
)
def test_fast_equals_naive(windows, N, shift, impl):
    torch.manual_seed(len(windows) + N)
    dim = 24 if len(windows) != 6 else 36
    module = MultiWindowAttention(dim, windows, shift=shift, impl=impl).double()
    with torch.no_grad():  # non-trivial biases so that an index error cannot hide
        for p in module.rel_pos_bias.values():
            p.normal_()
    x = torch.randn(2, N, module.qkv.in_features, dtype=torch.float64)
    with capture_attention([module]):
        fast = module(x)
        ref, ref_probs = naive_mwmha(module, x)
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(module.last_attention, ref_probs, rtol=1e-10, atol=1e-10)
        # rows of the captured attention are distributions
        torch.testing.assert_close(
            module.last_attention.sum(-1), torch.ones(2, len(windows), N, dtype=torch.float64)
        )


@pytest.mark.parametrize("impl", ["dense", "grouped"])
def test_gradients_match_naive(impl):
    module = MultiWindowAttention(24, [2, 6, 0, 3], shift=True, impl=impl).double()
    x = torch.randn(2, 12, 24, dtype=torch.float64, requires_grad=True)
    module(x).square().sum().backward()
    fast_grads = [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]
    module.zero_grad()
    x.grad = None
    naive_mwmha(module, x)[0].square().sum().backward()
    naive_grads = [p.grad for p in module.parameters()] + [x.grad]
    for a, b in zip(fast_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_global_heads_equal_plain_attention():
    mw = MultiWindowAttention(32, [0, 0, 0, 0]).double()
    plain = Attention(32, 4).double()
    plain.load_state_dict(mw.state_dict())
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    torch.testing.assert_close(mw(x), plain(x))


@pytest.mark.parametrize("impl", ["dense", "grouped"])
def test_window_not_dividing_sequence_is_an_error(impl):
    module = MultiWindowAttention(16, [3, 0], impl=impl)
    with pytest.raises(ValueError, match="does not divide"):
        module(torch.randn(1, 10, 16))


@pytest.mark.parametrize(
    "num_patches,expected",
    [
        (250, [2, 5, 10, 25, 50, 125, 0, 0]),  # 4x16 and 8x8
        (125, [5, 25, 0, 0]),  # 8x16
        (500, [2, 4, 5, 10, 20, 25, 50, 100, 125, 250, 0, 0]),  # 4x8
        (640, [2, 4, 5, 8, 10, 16, 20, 32, 40, 64, 80, 128, 160, 320, 0, 0]),  # 5x5
    ],
)
def test_default_window_rule(num_patches, expected):
    assert default_window_sizes(num_patches) == expected
    # h = number of divisors of L (paper Table 4)
    assert len(expected) == sum(num_patches % d == 0 for d in range(1, num_patches + 1))


@pytest.mark.parametrize("impl", ["dense", "grouped"])
def test_attention_modules_hold_no_capture_state(impl):
    module = MultiWindowAttention(24, [2, 6, 0, 3], shift=True, impl=impl)
    plain = Attention(24, 4)
    x = torch.randn(2, 12, 24)
    for m in (module, plain):
        assert not hasattr(m, "capture") and not hasattr(m, "last_attention")
        before = m(x)
        with capture_attention([m]):
            during = m(x)
            assert m.last_attention.shape == (2, 4, 12, 12)
        assert m.last_attention is None and not m._forward_pre_hooks
        # capturing never changes what the module computes
        torch.testing.assert_close(during, before, rtol=0, atol=0)


def test_one_cached_layout_per_length_windows_shift_and_device():
    from mwmae.models.windows import dense_layout, window_layout

    a = MultiWindowAttention(24, [2, 6, 0, 3], shift=True)
    b = MultiWindowAttention(24, [2, 6, 0, 3], shift=True, impl="dense")
    layout = a.layout(12, torch.device("cpu"))
    assert b.layout(12, "cpu") is layout  # every kernel and module shares it
    assert window_layout(12, (2, 6, 0, 3), True, "cpu") is layout
    assert window_layout(12, [2, 6, 0, 3], False, "cpu") is not layout
    assert dense_layout(layout) is dense_layout(layout)
    # heads grouped by window size, global first; shifted windows roll by w // 2
    assert [(g.window, g.heads, g.roll) for g in layout.groups] == [
        (0, (2,), 0),
        (2, (0,), 1),
        (3, (3,), 1),
        (6, (1,), 3),
    ]
    # bias index into [0 | table_0 (3) | table_1 (11) | table_3 (5)]: offset 0 of each head
    assert layout.base.tolist() == [2, 9, 0, 17]


def test_models_package_imports_without_a_cycle():
    """flex builds on windows, not on layers: each module imports first in a fresh process."""
    import subprocess
    import sys

    for module in ("mwmae.models.flex", "mwmae.models.windows", "mwmae.models.layers"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
