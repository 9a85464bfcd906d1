"""MW-MHA on FlexAttention (`impl="flex"`) against the naive per-head loop of test_mwmha."""

import pytest
import torch
from test_mwmha import naive_mwmha

import mwmae
from mwmae.errors import ConfigError
from mwmae.models import MultiWindowAttention
from mwmae.models import flex as flex_module

CASES = [
    ([2, 5, 10, 0], 20, False),
    ([2, 5, 10, 0], 20, True),
    ([3, 3, 0, 6], 12, True),  # repeated window sizes
    ([4, 12, 0, 0], 12, True),  # a window as long as the sequence keeps its bias
    ([6, 2, 3, 0, 1, 12], 12, False),  # unsorted mix, window of 1
    ([2, 4, 8, 0], 136, True),  # longer than one 128-token block of the block mask
]


def flex_module_with_random_biases(windows, N, shift):
    torch.manual_seed(len(windows) + N)
    dim = 6 * len(windows)
    module = MultiWindowAttention(dim, windows, shift=shift, impl="flex").double()
    with torch.no_grad():  # non-trivial biases so that an index error cannot hide
        for p in module.rel_pos_bias.values():
            p.normal_()
    return module


@pytest.mark.parametrize("windows,N,shift", CASES)
def test_flex_forward_equals_naive(windows, N, shift):
    module = flex_module_with_random_biases(windows, N, shift)
    x = torch.randn(2, N, module.qkv.in_features, dtype=torch.float64)
    with torch.no_grad():
        fast = module(x)
    ref, _ = naive_mwmha(module, x)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("windows,N,shift", CASES[:5])
def test_flex_gradients_equal_naive(windows, N, shift):
    module = flex_module_with_random_biases(windows, N, shift)
    x = torch.randn(2, N, module.qkv.in_features, dtype=torch.float64, requires_grad=True)
    module(x).square().sum().backward()
    named = dict(module.named_parameters())
    fast_grads = {name: p.grad.clone() for name, p in named.items()} | {"x": x.grad.clone()}
    module.zero_grad()
    x.grad = None
    naive_mwmha(module, x)[0].square().sum().backward()
    naive_grads = {name: p.grad for name, p in named.items()} | {"x": x.grad}
    assert fast_grads.keys() == naive_grads.keys()
    for name in fast_grads:  # every bias table receives its gradient through the score_mod
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=1e-9, atol=1e-10)
        assert fast_grads[name].abs().sum() > 0, name


def test_flex_equals_dense_in_float32():
    dense = MultiWindowAttention(32, [2, 5, 0, 10], shift=True, impl="dense")
    flex = MultiWindowAttention(32, [2, 5, 0, 10], shift=True, impl="flex")
    flex.load_state_dict(dense.state_dict())
    x = torch.randn(3, 20, 32)
    with torch.no_grad():
        torch.testing.assert_close(flex(x), dense(x), rtol=1e-5, atol=1e-5)


def test_block_mask_built_once_per_shape_and_device(monkeypatch):
    calls = []
    real = flex_module.create_block_mask

    def counting(*args, **kwargs):
        calls.append(kwargs["Q_LEN"])
        return real(*args, **kwargs)

    monkeypatch.setattr(flex_module, "create_block_mask", counting)
    module = MultiWindowAttention(16, [2, 0, 4, 5], impl="flex")
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(2, 20, 16))
        module(torch.randn(5, 20, 16))  # another batch size reuses the mask (B=None)
        module(torch.randn(1, 40, 16))  # a new length builds a new one
        module(torch.randn(1, 40, 16))
    assert calls == [20, 40]


def test_block_mask_is_the_window_pattern():
    """Block-mask density: each windowed head keeps N * w of N * N pairs, a global head all."""
    kernel = flex_module.FlexWindows([4, 0, 2], shift=True)
    layout = kernel.layout(8, "cpu")
    same = layout.window[:, :, None] == layout.window[:, None, :]
    assert same.sum((1, 2)).tolist() == [8 * 4, 64, 8 * 2]
    # the shifted head of window 4 groups rolled positions: tokens 6, 7, 0, 1 share a window
    assert layout.window[0].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]


def test_window_not_dividing_sequence_is_an_error():
    module = MultiWindowAttention(16, [3, 0], impl="flex")
    with pytest.raises(ValueError, match="does not divide"):
        module(torch.randn(1, 10, 16))


def test_missing_flex_attention_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(flex_module, "flex_attention", None)
    with pytest.raises(ConfigError, match=r"mwmha_impl 'flex' needs .*torch"):
        MultiWindowAttention(16, [2, 0], impl="flex")
    with pytest.raises(ConfigError, match="flex"):
        mwmae.create_model("mwmae_tiny_4x16", depth=1, decoder_depth=1, mwmha_impl="flex")


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match=r"mwmha_impl must be one of .*'flex'"):
        mwmae.create_model("mwmae_tiny_4x16", mwmha_impl="flash")


def test_model_with_flex_equals_grouped_and_trains():
    kw = {"depth": 1, "decoder_depth": 1, "shift_windows": True}
    grouped = mwmae.create_model("mwmae_tiny_4x16", **kw)
    flex = mwmae.create_model("mwmae_tiny_4x16", mwmha_impl="flex", **kw)
    flex.load_state_dict(grouped.state_dict())
    c = grouped.config
    spec = torch.randn(2, 1, c.num_frames, c.num_mels)
    noise = torch.rand(2, c.num_patches)
    out_g, out_f = grouped(spec, noise=noise), flex(spec, noise=noise)
    torch.testing.assert_close(out_f.pred, out_g.pred, rtol=1e-4, atol=1e-5)
    out_f.loss.backward()
    out_g.loss.backward()
    g_flex = dict(flex.named_parameters())
    for name, p in grouped.named_parameters():
        torch.testing.assert_close(g_flex[name].grad, p.grad, rtol=1e-3, atol=1e-6)


def test_flex_model_traces_under_torch_compile():
    """Dynamo traces the flex path (block-mask build included); aot_eager needs no C++ build."""
    kw = {"depth": 1, "decoder_depth": 2, "shift_windows": True}
    grouped = mwmae.create_model("mwmae_tiny_4x16", **kw).eval()
    flex = mwmae.create_model("mwmae_tiny_4x16", mwmha_impl="flex", **kw).eval()
    flex.load_state_dict(grouped.state_dict())
    c = grouped.config
    spec = torch.randn(2, 1, c.num_frames, c.num_mels)
    noise = torch.rand(2, c.num_patches)
    torch._dynamo.reset()
    compiled = torch.compile(flex, backend="aot_eager")
    with torch.no_grad():
        for _ in range(2):  # the second call runs with the cached block masks
            out = compiled(spec, noise=noise).pred
        torch.testing.assert_close(out, grouped(spec, noise=noise).pred, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
