"""Tests of torch_utils.ops.bias_act: reference path vs a naive implementation, derivatives, errors, CUDA path."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.bias_act import activation_funcs, bias_act

# The module itself (its private CUDA-path pieces); the package attribute may be the function.
ba = importlib.import_module("torch_utils.ops.bias_act")

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]
SMOOTH_ACTS = ["tanh", "sigmoid", "elu", "selu", "softplus", "swish"]


def naive_act(x: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    """Each activation from torch.nn.functional or its textbook formula."""
    if act == "linear":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "lrelu":
        return F.leaky_relu(x, alpha)
    if act == "tanh":
        return (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1)
    if act == "sigmoid":
        return 1 / (1 + torch.exp(-x))
    if act == "elu":
        return F.elu(x, alpha)
    if act == "selu":
        # F.selu has fixed constants; rebuild it from elu for a general alpha.
        return 1.0507009873554805 * F.elu(x, alpha)
    if act == "softplus":
        return F.softplus(x)
    if act == "swish":
        return x / (1 + torch.exp(-x))
    raise AssertionError(act)


def naive_bias_act(x, b, dim, act, alpha, gain, clamp):
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.view(shape)
    y = naive_act(x, act, alpha) * gain
    if clamp is not None and clamp >= 0:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)), torch.full_like(y, clamp))
    return y


DEFAULTS = {  # act: (alpha, gain) as documented
    "linear": (0.0, 1.0), "relu": (0.0, math.sqrt(2)), "lrelu": (0.2, math.sqrt(2)), "tanh": (0.0, 1.0),
    "sigmoid": (0.0, 1.0), "elu": (1.0, 1.0), "selu": (1.6732632423543772, 1.0), "softplus": (0.0, 1.0),
    "swish": (0.0, 1.0),
}


# ---------------------------------------------------------------------------------------------
# Reference path


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("with_b", [False, True])
def test_ref_matches_naive(act, dim, with_b):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(x.shape[dim], generator=gen, dtype=torch.float64) if with_b else None
    for alpha, gain, clamp in [(None, None, None), (0.3, 0.7, None), (0.1, 2.5, 0.8)]:
        a = DEFAULTS[act][0] if alpha is None else alpha
        g = DEFAULTS[act][1] if gain is None else gain
        y = bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")
        expected = naive_bias_act(x, b, dim % 3, act, a, g, clamp)
        assert y.shape == x.shape
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ACTS)
def test_clamp_applies_after_gain(act):
    x = torch.linspace(-6, 6, 97, dtype=torch.float64).reshape(1, 97)
    gain, clamp = 3.0, 0.5
    y = bias_act(x, act=act, gain=gain, clamp=clamp)
    unclamped = naive_act(x, act, DEFAULTS[act][0]) * gain
    assert y.abs().max() <= clamp
    assert (unclamped.abs() > clamp).any(), "test inputs should reach the clamp"
    torch.testing.assert_close(y, unclamped.clamp(-clamp, clamp))


@pytest.mark.parametrize("clamp", [None, -1.0])
def test_no_clamp_for_none_or_negative(clamp):
    x = torch.linspace(-50, 50, 11)
    torch.testing.assert_close(bias_act(x.view(1, -1), act="lrelu", clamp=clamp),
                               F.leaky_relu(x.view(1, -1), 0.2) * math.sqrt(2))


@pytest.mark.parametrize("act", ACTS)
def test_default_alpha_and_gain(act):
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    alpha, gain = DEFAULTS[act]
    assert activation_funcs[act].def_alpha == pytest.approx(alpha)
    assert activation_funcs[act].def_gain == pytest.approx(gain)
    torch.testing.assert_close(bias_act(x, act=act), naive_act(x, act, alpha) * gain)


def test_selu_default_is_torch_selu_and_table_is_complete():
    x = torch.randn(50, dtype=torch.float64).view(1, -1)
    torch.testing.assert_close(bias_act(x, act="selu"), F.selu(x))
    assert sorted(activation_funcs) == sorted(ACTS)
    for name, spec in activation_funcs.items():
        assert spec.has_2nd_grad == (name in SMOOTH_ACTS), name
        assert callable(spec.func)


def _inputs_away_from_kinks(act, gain, clamp, shape=(2, 3, 4), seed=0):
    """float64 x and b with x + b away from 0 (kinks of relu-like acts) and |v| away from the clamp."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 1.5
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64) * 0.5
    z = x + b.view(1, -1, 1)
    x = torch.where(z.abs() < 0.05, x + 0.2, x)  # move off the kink
    z = x + b.view(1, -1, 1)
    v = naive_act(z, act, DEFAULTS[act][0]) * gain
    if clamp is not None:
        assert ((v.abs() - clamp).abs() > 1e-3).all(), "inputs too close to the clamp for finite differences"
        assert (v.abs() > clamp).any() and (v.abs() < clamp).any(), "inputs should be on both sides of the clamp"
    return x.requires_grad_(True), b.requires_grad_(True)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_ref_gradcheck_and_gradgradcheck(act, clamp):
    x, b = _inputs_away_from_kinks(act, 1.3, clamp)
    fn = lambda x_, b_: bias_act(x_, b_, dim=1, act=act, gain=1.3, clamp=clamp, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_ref_handles_other_dims_dtypes_and_empty():
    x = torch.randn(4, 6, dtype=torch.float16)
    b = torch.randn(4, dtype=torch.float16)
    y = bias_act(x, b, dim=0, act="relu")
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), naive_bias_act(x.float(), b.float(), 0, "relu", 0.0, math.sqrt(2), None),
                               rtol=1e-2, atol=1e-2)
    assert bias_act(torch.empty(0, 3), torch.zeros(3), act="tanh").shape == (0, 3)
    scalar = torch.tensor(-2.0, dtype=torch.float64)
    torch.testing.assert_close(bias_act(scalar, act="lrelu"), F.leaky_relu(scalar, 0.2) * math.sqrt(2))


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_act_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown act 'gelu'.*lrelu.*swish"):
        bias_act(torch.zeros(2, 3), act="gelu")


@pytest.mark.parametrize("b", [torch.zeros(4), torch.zeros(3, 1), torch.zeros(()), [0.0, 0.0, 0.0]])
def test_bad_bias_shape(b):
    with pytest.raises(ValueError, match="b must be 1-D with x.shape\\[dim\\]=3"):
        bias_act(torch.zeros(2, 3), b, dim=1)


def test_bad_impl_and_dim():
    with pytest.raises(ValueError, match="impl must be None, 'ref' or 'cuda'"):
        bias_act(torch.zeros(2, 3), impl="triton")
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        bias_act(torch.zeros(2, 3), torch.zeros(3), dim=2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        bias_act(torch.zeros(2, 3, dtype=torch.int64))


def test_cuda_impl_on_cpu_tensor_names_the_argument():
    with pytest.raises(ValueError, match="impl='cuda' needs x on a CUDA device"):
        bias_act(torch.zeros(2, 3), impl="cuda")


# ---------------------------------------------------------------------------------------------
# The CUDA path's autograd wiring, run on CPU with a stand-in for the kernel. The stand-in obeys
# the kernel contract of bias_act.h but gets its derivatives from autograd on the naive functions,
# so it checks the Functions (saved tensors, double backward, bias gradients) independently.

ACT_NAMES = {spec.cuda_index: name for name, spec in activation_funcs.items()}


def fake_kernel(x, b, y, g, mode, act_index, dim, alpha, gain, clamp, stream):
    lay = y if mode == 2 else x
    assert lay.numel() > 0 and stream == 0
    if mode != 0:
        assert g.shape == lay.shape and g.stride() == lay.stride(), "g must share the layout of x / y"
    if lay.dtype in (torch.float16, torch.bfloat16):  # like the kernel: compute in float32, store rounded
        x32, b32, y32, g32 = (t.float() for t in (x, b, y, g))  # y32 is exact; its clamp test uses y's dtype
        return _fake_kernel_f(x32, b32, y32, g32, y.dtype, mode, act_index, dim, alpha, gain, clamp).to(lay.dtype)
    return _fake_kernel_f(x, b, y, g, y.dtype, mode, act_index, dim, alpha, gain, clamp)


def _fake_kernel_f(x, b, y, g, y_dtype, mode, act_index, dim, alpha, gain, clamp):
    act = ACT_NAMES[act_index]
    if mode == 2:  # derivative from the sign of the saved output
        assert act in ("linear", "relu", "lrelu")
        positive = (y > 0) if gain > 0 else (y < 0)
        d1 = {"linear": torch.ones_like(y), "relu": positive.to(y.dtype),
              "lrelu": torch.where(positive, torch.ones_like(y), torch.full_like(y, alpha))}[act]
        clamp_y = torch.tensor(clamp, dtype=y_dtype).to(y.dtype)  # the clamp rounded to the stored dtype
        mask = (y.abs() < clamp_y) if clamp >= 0 else torch.ones_like(y, dtype=torch.bool)
        return g * gain * d1 * mask
    z = x.detach().clone()
    if b.numel() > 0:
        shape = [1] * z.ndim
        shape[dim] = -1
        z = z + b.detach().view(shape)
    z.requires_grad_(True)
    with torch.enable_grad():
        v = naive_act(z, act, alpha) * gain
        (d1,) = torch.autograd.grad(v.sum(), z, create_graph=True)
        d2 = torch.autograd.grad(d1.sum(), z, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(z) if d2 is None else d2
    mask = (v.abs() <= clamp) if clamp >= 0 else torch.ones_like(v, dtype=torch.bool)
    if mode == 0:
        return (v.clamp(-clamp, clamp) if clamp >= 0 else v).detach()
    return (g * (d1 if mode == 1 else d2) * mask).detach()


def _fake_cuda(x, b, dim, act, alpha=None, gain=None, clamp=None):
    spec, dim, alpha, gain, clamp = ba._check_args(x, b, dim, act, alpha, gain, clamp, None)
    cfg = ba._CudaConfig.make(act, spec, dim, alpha, gain, clamp, fake_kernel)
    return ba._bias_act_cuda(x, b, cfg)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_cuda_wiring_gradcheck_with_stand_in_kernel(act, clamp):
    x, b = _inputs_away_from_kinks(act, 1.3, clamp)
    fn = lambda x_, b_: _fake_cuda(x_, b_, 1, act, gain=1.3, clamp=clamp)  # noqa: E731
    torch.testing.assert_close(fn(x, b), bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("act", ["lrelu", "swish", "elu"])
def test_cuda_wiring_r1_style_second_derivative_matches_ref(act):
    """Penalty on the input gradient of bias_act(x * W, b), differentiated w.r.t. W and b."""
    x, b = _inputs_away_from_kinks(act, 1.0, None, shape=(2, 3, 5), seed=1)
    x = x.detach().permute(0, 2, 1).contiguous().permute(0, 2, 1).requires_grad_(True)  # non-contiguous x
    weight = (torch.rand(2, 3, 5, dtype=torch.float64) + 0.5).requires_grad_(True)
    w = torch.randn(2, 3, 5, dtype=torch.float64)
    results = []
    for impl in ("fake_cuda", "ref"):
        h = x * weight
        y = _fake_cuda(h, b, 1, act) if impl == "fake_cuda" else bias_act(h, b, act=act, impl="ref")
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), [weight, b], allow_unused=True))
    for got, want in zip(*results):
        if want is None:  # lrelu: the penalty does not depend on b
            assert got is None or torch.all(got == 0)
        else:
            torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# CUDA kernel vs reference (GPU only)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the bias_act kernel")


def _require_plugin():
    """On a GPU machine the plugin must build: a failure here is a bug, not a reason to skip."""
    if ba._plugin.get() is None:
        pytest.fail(f"bias_act plugin did not build: {ba._plugin.failed_reason}")


def _cuda_inputs(act, dim, dtype, clamp, device, shape=(4, 8, 6, 5)):
    """Inputs rounded to `dtype` (so both paths see the same numbers), kept off the clamp boundary,
    where a float64 reference and a low-precision kernel may disagree about which side is which."""
    gen = torch.Generator(device=device).manual_seed(0)
    x, dy, w = (torch.randn(shape, generator=gen, device=device, dtype=torch.float64) for _ in range(3))
    b = torch.randn(shape[dim], generator=gen, device=device, dtype=torch.float64)
    x, b, dy, w = (t.to(dtype).double() for t in (x * 1.5, b, dy, w))
    if clamp is not None:
        bias = b.view([-1 if d == dim else 1 for d in range(len(shape))])
        v = naive_act(x + bias, act, DEFAULTS[act][0]) * DEFAULTS[act][1]
        near = ((v.abs() - clamp).abs() < 0.02).expand_as(x)
        x = torch.where(near, (0.3 - bias).expand_as(x), x).to(dtype).double()  # z = 0.3: far from clamp and kinks
        v = naive_act(x + bias, act, DEFAULTS[act][0]) * DEFAULTS[act][1]
        assert ((v.abs() - clamp).abs() > 0.01).all()
    bias = b.view([-1 if d == dim else 1 for d in range(len(shape))])
    x = torch.where((x + bias).abs() < 0.02, x + 0.05, x).to(dtype).double()  # off the kinks at z = 0
    return x, b, dy, w


def _kernel_path(x, b, dim, act, clamp):
    return bias_act(x, b, dim=dim, act=act, clamp=clamp, impl="cuda")


def _run_both(act, dim, dtype, clamp, channels_last=False, device="cuda", fast=_kernel_path):
    """Forward, backward and double backward through `fast` (in dtype) and the reference (float64)."""
    x, b, dy, w = _cuda_inputs(act, dim, dtype, clamp, device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    out = []
    for impl, dt in (("fast", dtype), ("ref", torch.float64)):
        xi, bi, dyi = (t.to(dt).requires_grad_(True) for t in (x, b, dy))
        if impl == "fast":
            y = fast(xi, bi, dim, act, clamp)
        else:
            y = bias_act(xi, bi, dim=dim, act=act, clamp=clamp, impl="ref")
        gx, gb = torch.autograd.grad(y, [xi, bi], dyi, create_graph=True)
        # dyi takes part so the penalty always has a graph (relu-like acts: gx does not depend on x).
        second = torch.autograd.grad((gx * w.to(dt)).sum() + gb.sum(), [xi, bi, dyi], allow_unused=True)
        second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, (xi, bi, dyi))]
        out.append([t.double() for t in (y, gx, gb, *second)])
    return out


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim,clamp,channels_last", [(1, None, False), (3, 1.5, False), (1, 0.8, True)])
def test_cuda_matches_ref(act, dtype, dim, clamp, channels_last):
    _require_plugin()
    _compare(*_run_both(act, dim, dtype, clamp, channels_last), act, dtype)


def _compare(got, want, act, dtype):
    tol = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=2e-2),
           torch.bfloat16: dict(rtol=6e-2, atol=6e-2)}[dtype]
    for name, g, r in zip(["y", "dx", "db", "ddx", "ddb", "ddy"], got, want):
        # Gradients summed for the bias grow with the number of summed terms: compare relative to their scale.
        scale = max(1.0, r.abs().max().item()) if name in ("db", "ddb") else 1.0
        torch.testing.assert_close(g / scale, r / scale, **tol, msg=lambda m, n=name: f"{act} {dtype} {n}: {m}")


@pytest.mark.parametrize("act", ["relu", "lrelu", "softplus", "swish"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim,clamp,channels_last", [(1, None, False), (3, 0.8, False), (1, 0.8, True)])
def test_gpu_harness_on_cpu_with_stand_in_kernel(act, dtype, dim, clamp, channels_last):
    """The comparison used on the GPU, run here with the stand-in kernel (checks harness, layouts and
    the half-precision clamp test on the stored output)."""
    def fast(x, b, dim_, act_, clamp_):
        return _fake_cuda(x, b, dim_, act_, clamp=clamp_)
    _compare(*_run_both(act, dim, dtype, clamp, channels_last, device="cpu", fast=fast), act, dtype)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_cuda_gradgradcheck_float64(act):
    _require_plugin()
    x, b = _inputs_away_from_kinks(act, 1.0, None)
    x = x.detach().cuda().requires_grad_(True)
    b = b.detach().cuda().requires_grad_(True)
    fn = lambda x_, b_: bias_act(x_, b_, act=act, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
