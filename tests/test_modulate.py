"""torch_utils.ops.modulate: the CPU kernels against plain torch ops (float64), in both layouts."""

import pytest
import torch

from torch_utils.ops import modulate


@pytest.fixture
def kernel_calls(monkeypatch, cpu_kernels_module):
    """Records which kernels ran."""
    module = cpu_kernels_module
    calls = []

    class Spy:
        def __getattr__(self, name):
            fn = getattr(module, name)
            return lambda *args: calls.append(name) or fn(*args)
    monkeypatch.setattr(modulate._plugin, "_module", Spy())
    return calls


def _tensors(shape, channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return dict(x=x, s=torch.randn(n, c, generator=gen), d=torch.rand(n, c, generator=gen) + 0.5,
                noise=torch.randn(n, 1, h, w, generator=gen), bias=torch.randn(c, generator=gen) * 0.1,
                g=torch.randn(shape, generator=gen))


SHAPES = [(2, 5, 7, 9), (3, 64, 16, 16), (1, 3, 40, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_channels_and_its_gradients_match_torch(kernel_calls, shape, channels_last):
    t = _tensors(shape, channels_last)
    results = []
    for dtype, impl in ((torch.float32, None), (torch.float64, "ref")):
        x, s = (t[k].to(dtype).requires_grad_(True) for k in ("x", "s"))
        y = modulate.scale_channels(x, s, impl=impl)
        dx, ds = torch.autograd.grad(y, [x, s], t["g"].to(dtype), create_graph=True)
        # Second order (a penalty on both gradients): dx depends on s and ds on x.
        second = torch.autograd.grad(dx.square().sum() + ds.square().sum(), [x, s])
        results.append([y, dx, ds, *second])
    assert results[0][0].stride() == t["x"].stride()
    for got, want in zip(*results):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert {"scale_channels", "channel_dot"} <= set(kernel_calls)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("noise_kind", ["per_sample", "shared", "none"])
@pytest.mark.parametrize("act,clamp", [("lrelu", 1.0), ("lrelu", None), ("linear", 0.5), ("relu", None)])
def test_epilogue_matches_fma_then_bias_act(kernel_calls, shape, channels_last, noise_kind, act, clamp):
    t = _tensors(shape, channels_last, seed=1)
    noise = {"per_sample": t["noise"], "shared": t["noise"][0, 0], "none": None}[noise_kind]
    results = []
    for dtype, impl in ((torch.float32, None), (torch.float64, "ref")):
        x, d, b = (t[k].to(dtype).requires_grad_(True) for k in ("x", "d", "bias"))
        z = None if noise is None else noise.to(dtype).requires_grad_(True)
        y = modulate.modulated_epilogue(x, d, z, b, act=act, gain=1.4, clamp=clamp, impl=impl)
        inputs = [x, d, b] + ([z] if z is not None else [])
        results.append([y, *torch.autograd.grad(y, inputs, t["g"].to(dtype))])
    assert results[0][0].stride() == t["x"].stride()
    for got, want in zip(*results):
        scale = max(1.0, want.abs().max().item())  # summed gradients grow with the pixel count
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=1e-5, atol=1e-5)
    assert kernel_calls == ["epilogue_forward", "epilogue_backward"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_skip", [True, False])
@pytest.mark.parametrize("clamp", [0.5, None])
def test_skip_epilogue_matches_bias_act_plus_skip(kernel_calls, shape, channels_last, with_skip, clamp):
    t = _tensors(shape, channels_last, seed=4)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    skip0 = torch.randn(shape).contiguous(memory_format=layout) if with_skip else None
    results = []
    for dtype, impl in ((torch.float32, None), (torch.float64, "ref")):
        x, b = (t[k].to(dtype).requires_grad_(True) for k in ("x", "bias"))
        skip = None if skip0 is None else skip0.to(dtype).requires_grad_(True)
        y = modulate.skip_epilogue(x, b, skip, clamp=clamp, impl=impl)
        inputs = [x, b] + ([skip] if with_skip else [])
        results.append([y, *torch.autograd.grad(y, inputs, t["g"].to(dtype))])
    assert results[0][0].stride() == t["x"].stride()
    if clamp is not None:  # some of x + b lie beyond the clamp, so the mask is exercised
        assert 0 < (results[1][1] == 0).double().mean() < 1
    for got, want in zip(*results):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=1e-5, atol=1e-5)
    assert kernel_calls[0] == "skip_epilogue_forward"
    assert ("skip_epilogue_backward" in kernel_calls) == (clamp is not None)


def test_skip_epilogue_of_other_layouts_and_dtypes_uses_torch_ops(kernel_calls):
    """A skip image laid out unlike x, or float16 x (a CUDA fp16 block's conv output), takes
    bias_act and a separate sum, which has the skip image's dtype and layout."""
    t = _tensors((2, 3, 6, 6), True, seed=5)
    skip = torch.randn(2, 3, 6, 6)  # NCHW, x is channels-last
    y = modulate.skip_epilogue(t["x"], t["bias"], skip, clamp=1.0)
    torch.testing.assert_close(y, (t["x"] + t["bias"].reshape(1, -1, 1, 1)).clamp(-1, 1) + skip)
    y16 = modulate.skip_epilogue(t["x"].half(), t["bias"], skip, clamp=1.0)
    assert y.is_contiguous() and y16.dtype == torch.float32 and y16.is_contiguous()
    assert not [name for name in kernel_calls if name.startswith("skip_epilogue")]
    with pytest.raises(ValueError, match="skip must have x's shape"):
        modulate.skip_epilogue(t["x"], t["bias"], skip[:, :2], clamp=1.0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("clamp", [0.5, None])
def test_skip_epilogue_of_bfloat16_x_computes_in_float32(kernel_calls, channels_last, clamp):
    """A CPU bf16 block's ToRGB output: the kernel sums in float32 and gives dx in bfloat16."""
    shape = (2, 6, 9, 11)
    t = _tensors(shape, channels_last, seed=6)
    skip = torch.randn(shape).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = t["x"].bfloat16().requires_grad_(True)
    b, s = t["bias"].clone().requires_grad_(True), skip.clone().requires_grad_(True)
    y = modulate.skip_epilogue(x, b, s, clamp=clamp)
    dx, db, ds = torch.autograd.grad(y, [x, b, s], t["g"])
    pre = x.detach().double() + b.detach().double().reshape(1, -1, 1, 1)
    inside = torch.ones_like(pre) if clamp is None else (pre.abs() < clamp).double()
    want_y = (pre if clamp is None else pre.clamp(-clamp, clamp)) + skip.double()
    assert y.dtype == torch.float32 and y.stride() == x.stride() and dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), want_y, rtol=1e-6, atol=1e-6)
    assert torch.equal(dx, (t["g"].double() * inside).float().bfloat16())  # rounded as torch rounds
    torch.testing.assert_close(db.double(), (t["g"].double() * inside).sum([0, 2, 3]), rtol=1e-5, atol=1e-5)
    assert torch.equal(ds, t["g"])
    assert kernel_calls[0] == "skip_epilogue_forward"
    assert ("skip_epilogue_backward" in kernel_calls) == (clamp is not None)


def _rel_err(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("channels_last", [False, True])
def test_scale_channels_of_bfloat16_rounds_the_float32_result(kernel_calls, channels_last):
    """bf16 x and gradient: the kernels compute in float32 and round each stored element once."""
    t = _tensors((2, 16, 9, 11), channels_last, seed=7)
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = t["x"].bfloat16().to(dtype).requires_grad_(True)  # the same values in both dtypes
        s = t["s"].clone().requires_grad_(True)
        y = modulate.scale_channels(x, s)
        out[dtype] = (y, *torch.autograd.grad(y, [x, s], t["g"].bfloat16().to(dtype)))
    (y, dx, ds), (y32, dx32, ds32) = out[torch.bfloat16], out[torch.float32]
    assert y.dtype == dx.dtype == torch.bfloat16 and ds.dtype == torch.float32 and y.stride() == y32.stride()
    assert torch.equal(y, y32.bfloat16()) and torch.equal(dx, dx32.bfloat16())
    torch.testing.assert_close(ds, ds32, rtol=1e-5, atol=1e-5)  # the same float32 sums
    assert kernel_calls.count("scale_channels") == 4 and kernel_calls.count("channel_dot") == 2


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act,clamp", [("lrelu", 1.0), ("linear", None)])
def test_epilogue_of_bfloat16_rounds_the_float32_result(kernel_calls, channels_last, act, clamp):
    t = _tensors((2, 16, 9, 11), channels_last, seed=8)
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        x = t["x"].bfloat16().to(dtype).requires_grad_(True)
        d, z, b = (t[k].clone().requires_grad_(True) for k in ("d", "noise", "bias"))
        y = modulate.modulated_epilogue(x, d, z, b, act=act, gain=1.4, clamp=clamp)
        out[dtype] = (y, *torch.autograd.grad(y, [x, d, z, b], t["g"].bfloat16().to(dtype)))
    (y, dx, *sums), (y32, dx32, *sums32) = out[torch.bfloat16], out[torch.float32]
    assert y.dtype == dx.dtype == torch.bfloat16 and all(v.dtype == torch.float32 for v in sums)
    torch.testing.assert_close(y.float(), y32, rtol=2 ** -8, atol=0)  # one rounding
    # The slope is read from the stored output, so it may differ where bf16 rounded y onto the clamp.
    away = torch.ones_like(y32, dtype=torch.bool) if clamp is None else (y32.abs() < clamp * (1 - 2 ** -7))
    assert away.float().mean() > 0.5
    torch.testing.assert_close(dx.float()[away], dx32[away], rtol=2 ** -8, atol=0)
    for got, want in zip(sums, sums32):  # dd, dnoise, dbias: float32 sums of the same terms
        assert _rel_err(got, want) < 1e-2
    assert kernel_calls == ["epilogue_forward", "epilogue_backward"] * 2


def test_bfloat16_rounding_of_the_kernel_matches_torch(kernel_calls):
    """dx's float32 -> bfloat16 rounding, on ties, huge values, subnormals, infinities and NaN."""
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80C000, 0x7F7FFFFF, 0x00000001, 0x00018000, 0x80008000,
                         0x7F800000, 0xFF800000, 0x7FC00001, 0xFF800001, 0x3F7FFFFF], dtype=torch.int64)
    special = bits.to(torch.int32).view(torch.float32)  # int64 -> int32 wraps the sign bit in
    g = torch.cat([special, torch.randn(64) * 10.0 ** torch.randint(-30, 30, (64,))]).reshape(1, 1, 4, 19)
    x = torch.zeros_like(g, dtype=torch.bfloat16).requires_grad_(True)
    y = modulate.skip_epilogue(x, torch.zeros(1), torch.zeros_like(g), clamp=1e30)  # a clamp, so the kernel's dx
    (dx,) = torch.autograd.grad(y, [x], g)
    want = g.bfloat16()
    assert torch.equal(dx.isnan(), want.isnan()) and dx.isnan().sum() == 2
    finite = ~want.isnan()
    assert torch.equal(dx[finite].view(torch.int16), want[finite].view(torch.int16))
    assert kernel_calls == ["skip_epilogue_forward", "skip_epilogue_backward"]


def test_kernels_are_bitwise_reproducible_across_thread_counts(kernel_calls):
    t = _tensors((2, 32, 48, 48), True, seed=2)
    before, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            x, s, d, z, b = (t[k].clone().requires_grad_(True) for k in ("x", "s", "d", "noise", "bias"))
            y = modulate.modulated_epilogue(modulate.scale_channels(x, s), d, z, b, act="lrelu", gain=1.4, clamp=1.0)
            y = modulate.skip_epilogue(y, b, None, clamp=0.5)
            results.append(torch.autograd.grad(y, [x, s, d, z, b], t["g"]))
    finally:
        torch.set_num_threads(before)
    for grads in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0]))


def test_other_dtypes_and_devices_use_torch_ops(kernel_calls):
    t = _tensors((1, 3, 4, 4), False)
    y = modulate.modulated_epilogue(t["x"].double(), t["d"].double(), None, None, act="lrelu")
    modulate.scale_channels(t["x"].double(), t["s"].double())
    modulate.modulated_epilogue(t["x"], t["d"], None, None, act="tanh")  # not a piecewise-linear act
    assert kernel_calls == [] and y.dtype == torch.float64


@pytest.mark.parametrize("call,match", [
    (lambda: modulate.scale_channels(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4)), r"s must be \[N,C\]"),
    (lambda: modulate.channel_dot(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5)), "one shape"),
    (lambda: modulate.modulated_epilogue(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3), torch.zeros(2, 3, 4, 4), None),
     r"noise must be \[N or 1,1,H,W\]"),
])
def test_bad_shapes_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_backward_after_switching_the_kernels_off(kernel_calls):
    """A graph built with the kernels still differentiates after kernels_enabled(False)."""
    from torch_utils.ops.cpu_kernels import kernels_enabled

    t = _tensors((2, 4, 5, 5), True, seed=3)
    x, s, d = (t[k].clone().requires_grad_(True) for k in ("x", "s", "d"))
    y = modulate.modulated_epilogue(modulate.scale_channels(x, s), d, t["noise"], t["bias"], act="lrelu")
    with kernels_enabled(False):
        grads = torch.autograd.grad(y, [x, s, d], t["g"])
    ref = modulate.modulated_epilogue(modulate.scale_channels(x, s, impl="ref"), d, t["noise"], t["bias"],
                                      act="lrelu", impl="ref")
    for got, want in zip(grads, torch.autograd.grad(ref, [x, s, d], t["g"])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
