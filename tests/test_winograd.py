"""Tests for torch_utils.ops.winograd: the F(4x4, 3x3) CPU kernel against float64 convolutions,
its use inside conv2d_gradfix (forward, input and weight gradients, double backward), the rules
of `usable`, and bitwise reproducibility across thread counts."""

import pytest
import torch
import torch.nn.functional as F

from kernel_checks import assert_close, channels_last, run_portable_build, threads, training_difference
from torch_utils.ops import conv2d_gradfix, winograd


# (C, K, H, W, padding): tile edges (sizes not multiples of 4), every padding, 16-column panels (K=48).
SHAPES = [
    (16, 32, 9, 7, 1),
    (32, 48, 13, 10, 1),
    (32, 32, 10, 11, 0),
    (16, 16, 6, 9, 2),
    (64, 32, 16, 16, (1, 0)),
]


@pytest.mark.parametrize("c,k,h,w,pad", SHAPES)
def test_conv3x3_matches_float64_conv(cpu_kernels_module, c, k, h, w, pad):
    torch.manual_seed(0)
    x, wt, b = channels_last(torch.randn(3, c, h, w)), torch.randn(k, c, 3, 3) / (9 * c) ** 0.5, torch.randn(k)
    pad = (pad, pad) if isinstance(pad, int) else pad
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=pad)
    for bias in (None, b):
        out = winograd.conv3x3(x, wt, bias, pad)
        assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float32
        assert_close(out, ref if bias is not None else ref - b.double()[:, None, None])


@pytest.mark.parametrize("c,k,h,w,pad", SHAPES[:4])
def test_conv_transpose3x3_matches_float64_conv_transpose(cpu_kernels_module, c, k, h, w, pad):
    torch.manual_seed(1)
    x, wt = channels_last(torch.randn(2, c, h, w)), torch.randn(c, k, 3, 3)  # conv_transpose2d's [in, out, kh, kw]
    ref = F.conv_transpose2d(x.double(), wt.double(), padding=pad)
    assert_close(winograd.conv_transpose3x3(x, wt, None, (pad, pad)), ref)


@pytest.mark.parametrize("c,k,h,w,pad", SHAPES)
def test_weight_grad3x3_matches_float64_convolution_backward(cpu_kernels_module, c, k, h, w, pad):
    torch.manual_seed(2)
    pad = (pad, pad) if isinstance(pad, int) else pad
    x = channels_last(torch.randn(3, c, h, w))
    dy = channels_last(torch.randn(3, k, h + 2 * pad[0] - 2, w + 2 * pad[1] - 2))
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), torch.empty(k, c, 3, 3, dtype=torch.double),
                                              None, [1, 1], list(pad), [1, 1], False, [0, 0], 1,
                                              [False, True, False])[1]
    out = winograd.weight_grad3x3(dy, x, pad)
    assert out.shape == (k, c, 3, 3)
    assert_close(out, ref)
    assert_close(winograd.weight_grad3x3(dy.contiguous(), x, pad), ref)  # an NCHW gradient is converted


def test_many_tiles_use_several_blocks_and_groups(cpu_kernels_module):
    """Enough tiles for several blocks of tiles per thread, and several partial weight gradients."""
    torch.manual_seed(3)
    x, wt = channels_last(torch.randn(2, 32, 70, 66)), torch.randn(32, 32, 3, 3) / 17
    assert_close(winograd.conv3x3(x, wt, None, (1, 1)), F.conv2d(x.double(), wt.double(), padding=1))
    dy = channels_last(torch.randn(2, 32, 70, 66))
    ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), wt.double(), None, [1, 1], [1, 1], [1, 1],
                                              False, [0, 0], 1, [False, True, False])[1]
    assert_close(winograd.weight_grad3x3(dy, x, (1, 1)), ref)


def test_results_do_not_depend_on_the_thread_count(cpu_kernels_module):
    torch.manual_seed(4)
    x, wt = channels_last(torch.randn(2, 32, 70, 66)), torch.randn(48, 32, 3, 3)
    dy = channels_last(torch.randn(2, 48, 70, 66))
    runs = []
    for n in (1, 2, 3):
        with threads(n):
            runs.append((winograd.conv3x3(x, wt, None, (1, 1)), winograd.weight_grad3x3(dy, x, (1, 1))))
    for y, dw in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(dw, runs[0][1])


# F(4x4, 3x3) filter transform (Lavin & Gray 2016): U = G g G^T.
_G = torch.tensor([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
], dtype=torch.float64)


def _reference_weight_transform(w: torch.Tensor) -> torch.Tensor:
    """[K, C, 3, 3] weight -> U packed as [36, K / NR, C, NR] (NR = 32 if it divides K, else 16).

    Computed in float64 and rounded once, so U is the float32 rounding of the exact transform.
    An independent reference for the kernel's `winograd_weight` (einsum in float64).
    """
    k, c = w.shape[:2]
    nr = 32 if k % 32 == 0 else 16
    g = _G.to(w.device)
    u = torch.einsum("ar,kcrs,js->ajck", g, w.double(), g)  # [6, 6, C, K]
    u = u.reshape(36, c, k // nr, nr).permute(0, 2, 1, 3)  # [36, K / NR, C, NR]
    return u.to(torch.float32).contiguous()


@pytest.fixture
def small_convs_use_the_kernel(monkeypatch):
    """The tests' convolutions are far below the size where the networks start to use the kernel."""
    monkeypatch.setattr(winograd, "MIN_MACS", 0)
    monkeypatch.setattr(winograd, "MIN_OUTPUTS", 0)


def test_weight_transform_matches_the_reference(cpu_kernels_module):
    torch.manual_seed(7)
    for k, c in ((32, 16), (48, 32)):
        w = torch.randn(k, c, 3, 3)
        expected = _reference_weight_transform(w)
        assert torch.allclose(cpu_kernels_module.winograd_weight(w, False), expected, rtol=1e-6, atol=1e-7)
        flipped = w.transpose(0, 1).flip([2, 3]).contiguous()  # a transposed conv's weight of the same op
        assert torch.allclose(cpu_kernels_module.winograd_weight(flipped, True), _reference_weight_transform(w),
                              rtol=1e-6, atol=1e-7)
        # Any strides are read as they are: channels-last weights (the networks') and views.
        assert torch.equal(cpu_kernels_module.winograd_weight(w.contiguous(memory_format=torch.channels_last), False),
                           cpu_kernels_module.winograd_weight(w, False))
        assert torch.equal(cpu_kernels_module.winograd_weight(w.transpose(0, 1).flip([2, 3]), True),
                           cpu_kernels_module.winograd_weight(flipped, True))


def _eligible_case():
    torch.manual_seed(5)
    x = channels_last(torch.randn(2, 32, 34, 33))
    w = torch.randn(32, 32, 3, 3) / 17
    b = torch.randn(32)
    return x, w, b


def test_usable_rules(cpu_kernels_module, monkeypatch):
    x, w, _ = _eligible_case()
    assert not winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)  # below MIN_MACS
    macs = 2 * 32 * 32 * 34 * 33 * 9  # batch x C x K x output pixels x taps
    monkeypatch.setattr(winograd, "MIN_MACS", macs + 1)
    assert not winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)
    monkeypatch.setattr(winograd, "MIN_MACS", macs)
    assert winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)
    assert winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1, transposed=True)
    assert not winograd.usable(x.contiguous(), w, (1, 1), (1, 1), (1, 1), 1)  # NCHW
    assert not winograd.usable(x, w, (2, 2), (1, 1), (1, 1), 1)  # strided
    assert not winograd.usable(x, w, (1, 1), (1, 1), (2, 2), 1)  # dilated
    assert not winograd.usable(x, w[:, :16], (1, 1), (1, 1), (1, 1), 2)  # grouped
    assert not winograd.usable(x, w, (1, 1), (3, 3), (1, 1), 1)  # padding beyond 2
    assert not winograd.usable(x.double(), w.double(), (1, 1), (1, 1), (1, 1), 1)
    assert not winograd.usable(channels_last(x[:, :16]), w[:16, :16], (1, 1), (1, 1), (1, 1), 1)  # below MIN_CHANNELS
    assert not winograd.usable(channels_last(x[:, :, :8, :8]), w, (1, 1), (1, 1), (1, 1), 1)  # below MIN_MACS again
    monkeypatch.setattr(winograd, "MIN_MACS", 0)
    monkeypatch.setattr(winograd, "MIN_OUTPUTS", 34 * 33 + 1)  # one more than this conv's outputs per image
    assert not winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)
    monkeypatch.setattr(winograd, "MIN_OUTPUTS", 34 * 33)
    assert winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1, weight_grad=True)
    monkeypatch.setattr(winograd, "MAX_WEIGHT_GRAD_CHANNELS", 32 * 32 - 1)
    assert not winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1, weight_grad=True)
    assert winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)  # the forward still does
    assert not winograd.usable(x, torch.randn(32, 32, 1, 1), (1, 1), (0, 0), (1, 1), 1)  # 1x1
    winograd.state.enabled = False
    try:
        assert not winograd.usable(x, w, (1, 1), (1, 1), (1, 1), 1)
    finally:
        winograd.state.enabled = True


def _count_kernel_calls(monkeypatch):
    calls = {"conv": 0, "transpose": 0, "weight": 0}

    def wrap(name, key):
        original = getattr(winograd, name)

        def counted(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(winograd, name, counted)
    wrap("conv3x3", "conv")
    wrap("conv_transpose3x3", "transpose")
    wrap("weight_grad3x3", "weight")
    return calls


def test_gradfix_conv2d_runs_forward_and_both_gradients_through_the_kernel(cpu_kernels_module, monkeypatch,
                                                                           small_convs_use_the_kernel):
    x, w, b = _eligible_case()
    probe = channels_last(torch.randn(2, 32, 34, 33, generator=torch.Generator().manual_seed(6)))
    leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    ref = F.conv2d(leaves[0], leaves[1], leaves[2], padding=1)
    ref_grads = torch.autograd.grad((ref * probe.double()).sum(), leaves)
    calls = _count_kernel_calls(monkeypatch)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    out = conv2d_gradfix.conv2d(leaves[0], leaves[1], leaves[2], padding=1)
    grads = torch.autograd.grad((out * probe).sum(), leaves)
    assert calls == {"conv": 1, "transpose": 1, "weight": 1}
    assert_close(out, ref.detach())
    for g, r in zip(grads, ref_grads):
        assert_close(g, r)


def test_gradfix_double_backward_agrees_with_the_direct_convolutions(cpu_kernels_module, monkeypatch,
                                                                     small_convs_use_the_kernel):
    """An R1-style penalty (gradient of a gradient norm) with and without the kernel."""
    x, w, b = _eligible_case()

    def penalty_grads():
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = F.leaky_relu(conv2d_gradfix.conv2d(xi, wi, b, padding=1), 0.2)
        (gx,) = torch.autograd.grad(y.square().sum(), xi, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [xi, wi])

    calls = _count_kernel_calls(monkeypatch)
    with_kernel = penalty_grads()
    assert calls["conv"] > 0 and calls["transpose"] > 0 and calls["weight"] > 0
    winograd.state.enabled = False
    try:
        direct = penalty_grads()
    finally:
        winograd.state.enabled = True
    for g, r in zip(with_kernel, direct):
        assert_close(g, r.double(), rel=1e-4)


def test_kernel_rejects_bad_input(cpu_kernels_module):
    x = channels_last(torch.randn(1, 24, 8, 8))
    with pytest.raises(RuntimeError, match="multiples of 16"):
        cpu_kernels_module.winograd_conv3x3(x, cpu_kernels_module.winograd_weight(torch.randn(16, 24, 3, 3), False),
                                            None, 1, 1)
    with pytest.raises(RuntimeError, match="channels-last"):
        cpu_kernels_module.winograd_conv3x3(torch.randn(1, 16, 8, 8),
                                            cpu_kernels_module.winograd_weight(torch.randn(16, 16, 3, 3), False),
                                            None, 1, 1)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        cpu_kernels_module.winograd_weight(torch.randn(20, 16, 3, 3), False)


_PORTABLE_CHECK = r"""
# Checks run after the build (see kernel_checks.run_portable_build): the matrix products
# take their plain C++ loops instead of the intrinsics.
import torch.nn.functional as F
x = torch.randn(2, 32, 11, 13).contiguous(memory_format=torch.channels_last)
w = torch.randn(48, 32, 3, 3) / 17
y = ops.winograd_conv3x3(x, ops.winograd_weight(w, False), None, 1, 1)
ref = F.conv2d(x.double(), w.double(), padding=1)
dy = torch.randn_like(ref).float().contiguous(memory_format=torch.channels_last)
dw = ops.winograd_weight_grad(dy, x, 1, 1)
dw_ref = torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, [1, 1], [1, 1], [1, 1],
                                             False, [0, 0], 1, [False, True, False])[1]
for out, expected in ((y, ref), (dw, dw_ref)):
    err = (out.double() - expected).abs().max().item() / expected.abs().max().item()
    assert err < 2e-5, err
print("ok")
"""


def test_portable_build_without_avx512_matches_too(tmp_path):
    """The kernel's plain C++ path (CPUs without AVX-512), built separately in a fresh process."""
    from pathlib import Path


    run_portable_build(Path(winograd.__file__).with_name("winograd_cpu.cpp"), _PORTABLE_CHECK, tmp_path)


def test_training_with_the_kernel_follows_training_without_it(cpu_kernels_module, tiny_dataset, tmp_path,
                                                              monkeypatch, small_convs_use_the_kernel):
    """Three training steps of the tiny config (its 32-channel layers at 4x4 and 8x8 through the
    kernel) end with the same weights as without it, up to float rounding."""
    from training_fixtures import tiny_options

    calls = _count_kernel_calls(monkeypatch)
    difference = training_difference(tiny_options(tiny_dataset, kimg=0.012), tmp_path, winograd.enabled)
    assert calls["conv"] > 0 and calls["transpose"] > 0 and calls["weight"] > 0
    assert difference <= 1e-6, f"relative difference {difference:.3g}"


def test_the_demo_step_keeps_oneDNN_and_eg3d_small_uses_the_kernel(cpu_kernels_module):
    """What the README says: none of the demo's convolutions reaches the kernel's size rules
    (so the demo trains as before), while eg3d-small's large layers do (`bench/winograd.py`'s
    shape collection, one G+D step each, with the calls per pass)."""
    import sys
    from pathlib import Path

    sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
    from winograd import PASSES, collect_shapes  # bench/winograd.py

    def used(shape, what):
        n, c, k, h, w, pad = shape
        x = torch.empty(n, c, h, w).contiguous(memory_format=torch.channels_last)
        return winograd.usable(x, torch.empty(k, c, 3, 3), (1, 1), (pad, pad), (1, 1), 1,
                               weight_grad=what == "weight grad")

    demo = collect_shapes("demo", classes=4, batch=16, resolution=64)
    assert demo and not any(used(shape, what) for shape, runs in demo.items() for what in runs)
    small = collect_shapes("eg3d-small", classes=2, batch=4, resolution=128)
    assert all(used(shape, what) for shape, runs in small.items() for what in PASSES if shape[3] >= 32)
