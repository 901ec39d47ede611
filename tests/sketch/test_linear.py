"""SketchedLinear: forward equals x @ gather(lut, codes)^T; gradients only to x and lut; the LUT gradient is
the scatter-add of the weight gradient (checked against autograd through torch.gather)."""
import pytest
import torch

from helpers import naive_weight
from sketchtune_cli.sketch import SketchedLinear
from sketchtune_kernels import pack_codes


def make_layer(rows=6, cols=12, bits=4, groups=3, bias=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = SketchedLinear(cols, rows, bits, groups, bias=bias, dtype=dtype)
    codes = torch.randint(0, 2**bits, (rows, groups, cols // groups), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        layer.lut.copy_(torch.randn(rows, groups, 2**bits, generator=g, dtype=dtype))
        layer.codes.copy_(pack_codes(codes, bits))
        if bias:
            layer.bias.copy_(torch.randn(rows, generator=g, dtype=dtype))
    return layer, codes


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_forward_matches_naive_gather(bits, groups):
    layer, codes = make_layer(rows=5, cols=8, bits=bits, groups=groups, bias=True)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    w = naive_weight(layer.lut.detach(), codes)
    torch.testing.assert_close(layer.dense_weight(), w, rtol=0, atol=0)
    torch.testing.assert_close(layer(x), x @ w.t() + layer.bias, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    layer, _ = make_layer(rows=4, cols=6, bits=3, groups=2, bias=True)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    from sketchtune_cli.sketch.linear import _LutLinearFn

    fn = lambda x_, lut_: _LutLinearFn.apply(x_, lut_, layer.codes, layer.bias, layer.bits, layer.in_features, False)
    assert torch.autograd.gradcheck(fn, (x, layer.lut.detach().clone().requires_grad_(True)))


def test_gradcheck_float64_cpu_index_path():
    """The CPU path (precomputed flat LUT positions, index_add_) against finite differences."""
    layer, _ = make_layer(rows=4, cols=6, bits=2, groups=3, bias=True)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    from sketchtune_cli.sketch.linear import _LutLinearFn

    index = layer._flat_index()
    fn = lambda x_, lut_: _LutLinearFn.apply(x_, lut_, layer.codes, layer.bias, layer.bits, layer.in_features, False, index)
    assert torch.autograd.gradcheck(fn, (x, layer.lut.detach().clone().requires_grad_(True)))


def test_lut_grad_equals_autograd_through_gather():
    torch.manual_seed(1)
    layer, codes = make_layer(rows=7, cols=16, bits=4, groups=4, dtype=torch.float32)
    x = torch.randn(5, 16)
    grad_y = torch.randn(5, 7)
    layer(x).backward(grad_y)
    lut = layer.lut.detach().clone().requires_grad_(True)
    w = torch.gather(lut, 2, codes.long()).reshape(7, 16)
    (x @ w.t()).backward(grad_y)
    torch.testing.assert_close(layer.lut.grad, lut.grad, rtol=1e-5, atol=1e-6)


def test_only_lut_is_a_parameter_and_codes_get_no_grad():
    layer, _ = make_layer(bias=True)
    assert [n for n, _ in layer.named_parameters()] == ["lut"]
    assert {n for n, _ in layer.named_buffers()} == {"codes", "bias"}
    assert layer.codes.dtype == torch.uint8


def test_lut_gradient_is_deterministic():
    layer, _ = make_layer(rows=32, cols=64, groups=4, dtype=torch.float32)
    x = torch.randn(64, 64)
    grads = []
    for _ in range(2):
        layer.lut.grad = None
        layer(x).square().sum().backward()
        grads.append(layer.lut.grad.clone())
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("bits,groups,cols", [(5, 1, 8), (4, 3, 8), (4, 0, 8)])
def test_bad_shapes_raise_clear_errors(bits, groups, cols):
    with pytest.raises(ValueError, match="bits must be|does not divide"):
        SketchedLinear(cols, 4, bits, groups)


def test_cpu_inference_cache_follows_lut_updates():
    layer, _ = make_layer(dtype=torch.float32)
    x = torch.randn(2, 12)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)
        layer.lut.add_(1.0)  # an in-place update bumps the version: the cache must not serve stale weights
        expected = x @ layer.dense_weight().t()
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    out = layer(x)  # training mode path (grad enabled, lut trainable): no cache, gradients flow
    assert out.requires_grad and layer._dense_cache is None
