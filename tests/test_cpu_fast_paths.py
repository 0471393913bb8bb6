"""Tests of the CPU fast paths of upfirdn2d and bias_act (impl=None on CPU) against the reference paths."""

import itertools

import pytest
import torch

from torch_utils.ops import upfirdn2d as ufd
from torch_utils.ops.bias_act import bias_act

UFD_CASES = list(itertools.product([(1, 1), (2, 2), (3, 1)], [(1, 1), (2, 2), (1, 3)], [(4,), (3,), (6,), (2, 3)],
                                   [False, True], [(0, 0, 0, 0), (-1, 2, 3, -2), (2, 1, 1, 2), (1, 3, 4, 0), (1, 2, 0, 1)]))


@pytest.mark.parametrize("up,down,fshape,flip,pad", UFD_CASES)
def test_upfirdn2d_cpu_fast_path_matches_ref(up, down, fshape, flip, pad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    f = torch.randn(*fshape, dtype=torch.float64, generator=gen)
    kw = dict(up=up, down=down, padding=list(pad), flip_filter=flip, gain=1.7)
    try:
        y_ref = ufd.upfirdn2d(x, f, impl="ref", **kw)
    except ValueError:
        pytest.skip("empty output for this geometry")
    y = ufd.upfirdn2d(x, f, **kw)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(y_ref, x, dy)[0])


@pytest.mark.parametrize("up,down,pad", [((2, 2), (1, 1), (2, 1, 2, 1)), ((1, 1), (2, 2), (1, 1, 1, 1))])
def test_upfirdn2d_cpu_fast_path_gradgradcheck(up, down, pad):
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda x_: ufd.upfirdn2d(x_, f, up=up, down=down, padding=list(pad))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("act,clamp,gain,with_b", list(itertools.product(["linear", "relu", "lrelu"], [None, 0.9],
                                                                    [None, 1.7], [True, False])))
def test_bias_act_cpu_fast_path_matches_ref(act, clamp, gain, with_b):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=gen) * 1.5
    x = torch.where(x.abs() < 0.05, x + 0.1, x)  # off the kink at 0
    b = torch.randn(4, dtype=torch.float64, generator=gen) if with_b else None
    outs = []
    for impl in (None, "ref"):
        xi = x.clone().requires_grad_(True)
        bi = None if b is None else b.clone().requires_grad_(True)
        y = bias_act(xi, bi, act=act, gain=gain, clamp=clamp, impl=impl)
        w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        outs.append((y, torch.autograd.grad((y * w).sum(), [xi] + ([bi] if bi is not None else []))))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for got, want in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(got, want)
    xs = x[:1, :2, :3, :2].clone().requires_grad_(True)
    fn = lambda x_: bias_act(x_, None if b is None else b[:2], act=act, gain=gain, clamp=clamp)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xs,)) and torch.autograd.gradgradcheck(fn, (xs,))


# The C++ kernel (bias_act_cpu.cpp) behind the float32 CPU path, in every layout it walks:
# NCHW blocks, channels-last rows, a bias along the last dim, 2-D, and no bias.
BIAS_ACT_LAYOUTS = {
    "nchw": ((3, 5, 6, 7), 1, False),
    "channels_last": ((3, 5, 6, 7), 1, True),
    "last_dim": ((3, 5, 6, 7), 3, False),
    "rows": ((9, 20), 1, False),
    "no_bias": ((4, 6, 5), None, False),
}


@pytest.mark.parametrize("layout", list(BIAS_ACT_LAYOUTS))
@pytest.mark.parametrize("act,clamp,gain", [("lrelu", None, None), ("lrelu", 0.7, None), ("relu", 0.9, 1.3),
                                            ("linear", 0.8, 2.0)])
def test_bias_act_cpu_kernel_matches_ref(monkeypatch, cpu_kernels_module, layout, act, clamp, gain):
    """Value, x and b gradients, and the R1-style second derivative (through d/d dy) against float64."""
    from torch_utils.ops import bias_act as ba

    module = cpu_kernels_module
    calls = []
    monkeypatch.setattr(ba._cpu_plugin, "_module",
                        type("Spy", (), {"bias_act_cpu": staticmethod(lambda *a: calls.append(a[4]) or
                                                                      module.bias_act_cpu(*a))})())
    shape, dim, channels_last = BIAS_ACT_LAYOUTS[layout]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen) * 1.5
    x = torch.where(x.abs() < 0.05, x + 0.1, x)
    b = None if dim is None else torch.randn(shape[dim], generator=gen) * 0.01  # keeps x + b off the kinks
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy, w = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    results = []
    for dtype, impl in ((torch.float32, None), (torch.float64, "ref")):
        xi, dyi = x.to(dtype).requires_grad_(True), dy.to(dtype).requires_grad_(True)
        bi = None if b is None else b.to(dtype).requires_grad_(True)
        y = bias_act(xi, bi, dim=dim or 1, act=act, gain=gain, clamp=clamp, impl=impl)
        inputs = [xi] + ([bi] if bi is not None else [])
        grads = torch.autograd.grad(y, inputs, dyi, create_graph=True)
        (ddy,) = torch.autograd.grad((grads[0] * w.to(dtype)).sum(), dyi)
        results.append([y, *grads, ddy])
    assert y.shape == x.shape and results[0][0].stride() == x.stride()
    for got, want in zip(*results):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert calls and set(calls) == {0, 2}  # forward and gradient-from-y modes both ran in C++


@pytest.mark.parametrize("layout", list(BIAS_ACT_LAYOUTS))
@pytest.mark.parametrize("act,clamp,gain", [("lrelu", None, 1.4), ("linear", 0.8, 2.0)])
def test_bias_act_cpu_kernel_in_bfloat16_rounds_the_float32_result(monkeypatch, cpu_kernels_module, layout, act,
                                                                     clamp, gain):
    """bf16 tensors (a CPU bf16 block's): computed in float32, each stored element rounded once."""
    from torch_utils.ops import bias_act as ba

    module = cpu_kernels_module
    calls = []
    monkeypatch.setattr(ba._cpu_plugin, "_module",
                        type("Spy", (), {"bias_act_cpu": staticmethod(lambda *a: calls.append(a[0].dtype) or
                                                                      module.bias_act_cpu(*a))})())
    shape, dim, channels_last = BIAS_ACT_LAYOUTS[layout]
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(shape, generator=gen) * 1.5).bfloat16()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    b = None if dim is None else (torch.randn(shape[dim], generator=gen) * 0.3).bfloat16()
    dy = torch.randn(shape, generator=gen).bfloat16()
    results = []
    for dtype, impl in ((torch.bfloat16, None), (torch.float32, "ref")):
        xi = x.to(dtype).requires_grad_(True)
        bi = None if b is None else b.to(dtype)
        y = bias_act(xi, bi, dim=dim or 1, act=act, gain=gain, clamp=clamp, impl=impl)
        results.append((y, *torch.autograd.grad(y, [xi], dy.to(dtype))))
    (y, dx), (y32, dx32) = results
    assert y.dtype == dx.dtype == torch.bfloat16 and y.stride() == x.stride()
    torch.testing.assert_close(y.float(), y32, rtol=2 ** -8, atol=0)
    # The slope is read from the stored y, which bf16 may round onto the clamp.
    away = torch.ones_like(y32, dtype=torch.bool) if clamp is None else (y32.abs() < clamp * (1 - 2 ** -7))
    torch.testing.assert_close(dx.float()[away], dx32[away], rtol=2 ** -8, atol=0)
    assert calls == [torch.bfloat16, torch.bfloat16]  # forward and gradient, both in C++


def test_bfloat16_upsampling_and_the_downsampling_gradient_compute_in_float32(monkeypatch):
    """oneDNN's bf16 depthwise transposed conv is slow on a CPU; bf16 tensors take the fp32 one."""
    seen = []
    conv_transpose2d = ufd.F.conv_transpose2d
    monkeypatch.setattr(ufd.F, "conv_transpose2d", lambda x, *a, **k: seen.append(x.dtype) or
                        conv_transpose2d(x, *a, **k))
    f = ufd.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 5, 8, 8).bfloat16().contiguous(memory_format=torch.channels_last)
    y = ufd.upsample2d(x, f)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ufd.upsample2d(x.float(), f).bfloat16())
    xr = x.clone().requires_grad_(True)
    d = ufd.downsample2d(xr, f)
    g = torch.randn(d.shape).bfloat16()
    (dx,) = torch.autograd.grad(d, xr, g)
    x32 = x.float().requires_grad_(True)
    (dx32,) = torch.autograd.grad(ufd.downsample2d(x32, f), x32, g.float())
    assert dx.dtype == torch.bfloat16 and torch.equal(dx, dx32.bfloat16())
    assert seen and set(seen) == {torch.float32}
