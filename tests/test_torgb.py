"""Tests for torch_utils.ops.torgb: the one-pass ToRGB CPU kernel against a float64 reference
(values and every gradient, with and without the skip's upsampling and the clamp), the taps it
reads off upsample2d, when it applies, bitwise reproducibility across thread counts, its use
inside the synthesis network, and its portable (non-AVX-512) build."""

import pytest
import torch

from kernel_checks import assert_close, channels_last, run_portable_build, threads, training_difference
from torch_utils.ops import cpu_kernels, torgb, upfirdn2d


def _count_kernel_calls(monkeypatch) -> dict:
    calls = {"forward": 0}
    forward = torgb._TorgbCpu.forward

    def spy(ctx, *args):
        calls["forward"] += 1
        return forward(ctx, *args)

    monkeypatch.setattr(torgb._TorgbCpu, "forward", staticmethod(spy))
    return calls


def _inputs(n, c, k, h, w, skip_mode, seed=0):
    torch.manual_seed(seed)
    x = channels_last(torch.randn(n, c, h, w))
    weight = torch.randn(k, c, 1, 1) / c ** 0.5
    styles, bias = torch.randn(n, c), torch.randn(k)
    skip = None
    if skip_mode == "up":
        skip = channels_last(torch.randn(n, k, h // 2, w // 2))
    elif skip_mode == "same":
        skip = channels_last(torch.randn(n, k, h, w))
    return x, weight, styles, bias, skip


# (N, C, K, H, W, skip, filter, clamp): widths that leave a partial 4-pixel block, 16 to 112
# channels (112: a full 96-channel register block and a 16-channel one), a filter that is not
# symmetric (catches flipped taps), clamps that cut a third of the outputs or none, heights
# beyond one 16-row group of the weight gradient's partial sums. x channels that are multiples
# of 16 take the one-pass backward, the others the matmul one.
CASES = [
    (2, 32, 48, 10, 14, "up", [1, 3, 3, 1], None),
    (2, 16, 16, 6, 10, "up", [1, 2, 5, 3], 0.5),
    (2, 112, 112, 34, 6, "up", [1, 3, 3, 1], 0.5),
    (3, 16, 32, 5, 9, "same", None, 0.5),
    (2, 48, 96, 4, 7, None, None, None),
    (1, 33, 112, 8, 6, "up", [1, 3, 3, 1], 1e4),
    (1, 20, 48, 6, 6, "up", [1, 2, 5, 3], 0.5),
    (2, 24, 96, 4, 7, None, None, None),
]


@pytest.mark.parametrize("n,c,k,h,w,skip_mode,filt,clamp", CASES)
def test_kernel_matches_float64_reference_with_every_gradient(cpu_kernels_module, monkeypatch, n, c, k, h, w,
                                                              skip_mode, filt, clamp):
    calls = _count_kernel_calls(monkeypatch)
    x, weight, styles, bias, skip = _inputs(n, c, k, h, w, skip_mode)
    matmul_backward = torgb._backward_with_matmuls
    monkeypatch.setattr(torgb, "_backward_with_matmuls",
                        lambda *a: calls.__setitem__("matmuls", calls.get("matmuls", 0) + 1) or matmul_backward(*a))
    f = upfirdn2d.setup_filter(filt) if filt is not None else None
    leaves = [t for t in (x, weight, styles, bias, skip) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_args = ref_leaves + ([None] if skip is None else [])
    ref = torgb.modulated_torgb_ref(*ref_args, skip_filter=None if f is None else f.double(), clamp=clamp)
    if clamp == 0.5:
        assert (ref.abs() > clamp).any()  # the masked gradient path is exercised
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)

    # The last cases come in NCHW (as from inference's grouped convs), which the op copies.
    layout = torch.contiguous_format if c in (24, 20) else torch.channels_last
    leaves = [(t.contiguous(memory_format=layout) if t.ndim == 4 else t).detach().requires_grad_() for t in leaves]
    args = leaves + ([None] if skip is None else [])
    assert torgb.kernel_applies(*args, skip_filter=f)
    out = torgb.modulated_torgb(*args, skip_filter=f, clamp=clamp)
    assert calls["forward"] == 1
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
    assert_close(out, ref)
    grads = torch.autograd.grad(out, leaves, grad.float())
    assert calls.get("matmuls", 0) == (0 if c % 16 == 0 else 1)
    for name, g, g_ref in zip(["x", "weight", "styles", "bias", "skip"], grads, ref_grads):
        assert g.shape == g_ref.shape, name
        assert_close(g, g_ref, rel=5e-5)


def test_taps_are_read_off_upsample2d():
    # [1, 3, 3, 1] / 8 with gain 2 per axis: even outputs 1/4, 3/4; odd ones 3/4, 1/4.
    assert torgb._skip_taps(upfirdn2d.setup_filter([1, 3, 3, 1])) == pytest.approx((0.25, 0.75, 0.75, 0.25))
    assert torgb._skip_taps(upfirdn2d.setup_filter([1, 2, 3, 4, 3, 2])) is None  # 6 taps
    assert torgb._skip_taps(upfirdn2d.setup_filter([1, 3, 3, 1], separable=False)) is None  # a 2-D filter


def test_kernel_applies_only_where_it_can(cpu_kernels_module):
    x, weight, styles, bias, skip = _inputs(2, 8, 32, 8, 8, "up")
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert torgb.kernel_applies(x, weight, styles, bias, skip, f)
    assert torgb.kernel_applies(x.contiguous(), weight, styles, bias, skip.contiguous(), f)  # NCHW: copied
    assert not torgb.kernel_applies(x, weight[:3], styles, bias[:3], None)  # an RGB ToRGB
    assert torgb.try_kernel(x, weight[:3], styles, bias[:3], None) is None  # the caller's own path then
    assert not torgb.kernel_applies(x.bfloat16(), weight, styles, bias, skip, f)
    assert not torgb.kernel_applies(x, weight, styles, bias, skip, upfirdn2d.setup_filter([1, 2, 1]))
    with cpu_kernels.kernels_enabled(False):
        assert not torgb.kernel_applies(x, weight, styles, bias, skip, f)
    with torgb.enabled(False):
        assert not torgb.kernel_applies(x, weight, styles, bias, skip, f)
    assert torgb.kernel_applies(x, weight, styles, bias, skip, f)


def test_bad_input_is_named(cpu_kernels_module):
    x, weight, styles, bias, skip = _inputs(2, 8, 32, 8, 8, "up")
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match="skip must be"):
        torgb.modulated_torgb(x, weight, styles, bias, skip, None)  # half-size skip without a filter
    with pytest.raises(ValueError, match="styles must be"):
        torgb.modulated_torgb(x, weight, styles[:1], bias, skip, f)
    with pytest.raises(ValueError, match="impl"):
        torgb.modulated_torgb(x, weight, styles, bias, skip, f, impl="cuda")
    with pytest.raises(RuntimeError, match="multiple of 16"):
        cpu_kernels_module.torgb_forward(x, torch.randn(20, 8), styles, torch.randn(20), x.new_empty([0]),
                                         x.new_empty([0]), -1.0)
    with pytest.raises(RuntimeError, match="channels-last"):
        cpu_kernels_module.torgb_forward(x.contiguous(), weight.reshape(32, 8), styles, bias, x.new_empty([0]),
                                         x.new_empty([0]), -1.0)


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_results_do_not_depend_on_the_thread_count(cpu_kernels_module, clamp):
    x, weight, styles, bias, skip = _inputs(2, 32, 96, 16, 12, "up", seed=3)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    grad = channels_last(torch.randn(2, 96, 16, 12))
    results = []
    for count in (1, 2, 3):
        with threads(count):
            leaves = [t.detach().requires_grad_() for t in (x, weight, styles, bias, skip)]
            out = torgb.modulated_torgb(*leaves, skip_filter=f, clamp=clamp)
            results.append([out] + list(torch.autograd.grad(out, leaves, grad)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_synthesis_network_with_and_without_the_kernel(cpu_kernels_module, monkeypatch):
    """A channels-last tri-plane backbone (48-channel skip images, clamp 256): forward and every
    parameter's gradient agree with the unfused path (upsample2d, 1x1 conv, skip epilogue)."""
    from training.networks_stylegan2 import SynthesisNetwork, ToRGBLayer

    torch.manual_seed(0)
    net = SynthesisNetwork(w_dim=32, img_resolution=32, img_channels=48, channel_base=256, channel_max=32,
                           conv_clamp=256)
    ws = torch.randn(2, net.num_ws, 32)
    calls = _count_kernel_calls(monkeypatch)
    results = {}
    for on in (False, True):
        with cpu_kernels.kernels_enabled(on):
            torch.manual_seed(1)
            img = net(ws)
            grad = torch.randn_like(img)
            net.zero_grad(set_to_none=True)
            img.backward(grad)
            results[on] = [img.detach()] + [p.grad.clone() for p in net.parameters()]
        if on:
            # every block's ToRGB: 2x upsampled skips, and same-size ones in the extra blocks
            assert calls["forward"] == sum(isinstance(m, ToRGBLayer) for m in net.modules()) == 8
        else:
            assert calls["forward"] == 0
    for a, b in zip(results[True], results[False]):
        assert_close(a, b.double(), rel=1e-4)


def test_training_with_the_kernel_follows_training_without_it(cpu_kernels_module, tiny_dataset, tmp_path,
                                                              monkeypatch):
    """Three training steps of the tiny config (16 tri-plane channels, so that its 48-channel
    skip images take the kernel, forward and one-pass backward) end with the same weights as
    without it, up to float rounding (1.2e-9 measured)."""
    from training_fixtures import tiny_options

    opts = tiny_options(tiny_dataset, kimg=0.012)
    opts.G.triplane_channels = 16
    calls = _count_kernel_calls(monkeypatch)
    difference = training_difference(opts, tmp_path, torgb.enabled)
    assert calls["forward"] > 0
    assert difference <= 1e-6, f"relative difference {difference:.3g}"


_PORTABLE_CHECK = r"""
# Checks run after the build (see kernel_checks.run_portable_build): the 16-float vector
# types lower to narrower registers and the streaming stores to plain ones.
cl = torch.channels_last
f64 = dict(dtype=torch.float64)
x = torch.randn(2, 32, 10, 14, **f64)
w, s, b = torch.randn(112, 32, **f64) / 6, torch.randn(2, 32, **f64), torch.randn(112, **f64)
skip = torch.randn(2, 112, 5, 7, **f64).requires_grad_()
taps = torch.tensor([0.25, 0.75, 0.75, 0.25])


def up1(t, dim):  # even 2i <- s[i-1] / 4 + 3 s[i] / 4; odd 2i+1 <- 3 s[i] / 4 + s[i+1] / 4
    n = t.shape[dim]
    pad = torch.nn.functional.pad(t.movedim(dim, -1), (1, 1)).movedim(-1, dim)
    even = 0.25 * pad.narrow(dim, 0, n) + 0.75 * pad.narrow(dim, 1, n)
    odd = 0.75 * pad.narrow(dim, 1, n) + 0.25 * pad.narrow(dim, 2, n)
    return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)


def check(out, expected, tol):
    err = (out.double() - expected).abs().max().item() / expected.abs().max().item()
    assert err < tol, err


pre = torch.einsum("nchw,kc,nc->nkhw", x, w, s) + b[None, :, None, None]
up = up1(up1(skip, 2), 3)
y, clamped = ops.torgb_forward(x.float().contiguous(memory_format=cl), w.float(), s.float(), b.float(),
                               skip.detach().float().contiguous(memory_format=cl), taps, 3.0)
check(y, pre.clamp(-3, 3) + up, 2e-6)
assert clamped == int((pre.abs() > 3).sum()), (clamped, int((pre.abs() > 3).sum()))
g = torch.randn_like(pre)
dx, dwn, db, dskip = ops.torgb_backward(g.float().contiguous(memory_format=cl), x.float().contiguous(memory_format=cl),
                                         w.float(), s.float(), b.float(), taps, 3.0)
gm = g * (pre.abs() <= 3)
check(dx, torch.einsum("nkhw,kc,nc->nchw", gm, w, s), 2e-6)
check(dwn, torch.einsum("nchw,nkhw->nck", x, gm), 2e-6)
check(db, gm.sum(dim=[0, 2, 3]), 2e-6)
check(dskip, torch.autograd.grad(up, skip, g)[0], 2e-6)
print("ok")
"""


def test_portable_build_without_avx512_matches_too(tmp_path):
    """The kernel's plain C++ path (CPUs without AVX-512), built separately in a fresh process."""
    from pathlib import Path


    run_portable_build(Path(torgb.__file__).with_name("torgb_cpu.cpp"), _PORTABLE_CHECK, tmp_path)