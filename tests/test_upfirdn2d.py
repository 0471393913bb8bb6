"""Tests of torch_utils.ops.upfirdn2d: reference vs a naive implementation, wrappers, gradients, CUDA."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import upfirdn2d as ufd

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def naive_upfirdn2d(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """Straight from the definition: zero insertion, index-based padding, per-channel conv2d."""
    n, c, h, w = x.shape
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    z = torch.zeros(n, c, h * upy, w * upx, dtype=x.dtype)
    z[:, :, ::upy, ::upx] = x
    # Padded pixel (r, q) reads upsampled pixel (r - py0, q - px0), zero outside.
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    p = torch.zeros(n, c, hp, wp, dtype=x.dtype)
    r0, r1 = max(0, py0), min(hp, h * upy + py0)
    q0, q1 = max(0, px0), min(wp, w * upx + px0)
    if r1 > r0 and q1 > q0:
        p[:, :, r0:r1, q0:q1] = z[:, :, r0 - py0 : r1 - py0, q0 - px0 : q1 - px0]
    f = f.to(x.dtype)
    f2 = torch.outer(f, f) if f.ndim == 1 else f.clone()
    f2 = f2 * gain
    if not flip_filter:
        f2 = torch.flip(f2, dims=[0, 1])  # conv2d correlates; a true convolution flips the filter
    out = torch.cat([F.conv2d(p[:, ch : ch + 1], f2[None, None]) for ch in range(c)], dim=1)
    return out[:, :, ::downy, ::downx]


def _cases():
    """A spread of geometries (not the full product, to stay fast)."""
    ups = [(1, 1), (2, 2), (4, 4), (2, 1), (1, 4)]
    downs = [(1, 1), (2, 2), (4, 4), (1, 2), (4, 2)]
    pads = [(0, 0, 0, 0), (2, 1, 1, 2), (-1, -2, -1, 0), (3, -2, -3, 5)]
    sizes = [(6, 6), (7, 5)]
    filters = ["1d_even", "1d_odd", "2d"]
    cases = []
    for i, (up, down) in enumerate(itertools.product(ups, downs)):
        pad = pads[i % len(pads)]
        size = sizes[i % len(sizes)]
        kind = filters[i % len(filters)]
        flip = i % 2 == 0
        gain = [1.0, 3.0][(i // 2) % 2]
        cases.append((up, down, pad, size, kind, flip, gain))
    return cases


def _make_filter(kind, gen):
    return {
        "1d_even": lambda: torch.rand(4, generator=gen, dtype=torch.float64) + 0.1,
        "1d_odd": lambda: torch.rand(3, generator=gen, dtype=torch.float64) + 0.1,
        "2d": lambda: torch.randn(3, 4, generator=gen, dtype=torch.float64),
    }[kind]()


def _expected_size(n_in, up, pad0, pad1, taps, down):
    return (n_in * up + pad0 + pad1 - taps + down) // down


@pytest.mark.parametrize("case", range(len(_cases())))
def test_reference_matches_naive(case):
    up, down, pad, size, kind, flip, gain = _cases()[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    f = _make_filter(kind, gen)
    fw, fh = ufd.get_filter_size(f)
    out_h = _expected_size(size[0], up[1], pad[2], pad[3], fh, down[1])
    out_w = _expected_size(size[1], up[0], pad[0], pad[1], fw, down[0])
    if out_h <= 0 or out_w <= 0:
        with pytest.raises(ValueError, match="output size"):
            ufd.upfirdn2d(x, f, up=up, down=down, padding=list(pad))
        return
    got = ufd.upfirdn2d(x, f, up=up, down=down, padding=list(pad), flip_filter=flip, gain=gain, impl="ref")
    assert got.shape == (2, 3, out_h, out_w)
    torch.testing.assert_close(got, naive_upfirdn2d(x, f, up, down, pad, flip, gain))


def test_cases_mostly_nonempty():
    # Guard against a case list that silently tests only the error path.
    empty = 0
    for up, down, pad, size, kind, _, _ in _cases():
        taps_w = 3 if kind == "1d_odd" else 4
        taps_h = 3 if kind != "1d_even" else 4
        empty += _expected_size(size[0], up[1], pad[2], pad[3], taps_h, down[1]) <= 0
        empty += _expected_size(size[1], up[0], pad[0], pad[1], taps_w, down[0]) <= 0
    assert empty <= 3


def test_argument_forms_agree():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    a = ufd.upfirdn2d(x, f, up=2, down=2, padding=1)
    b = ufd.upfirdn2d(x, f, up=(2, 2), down=(2, 2), padding=(1, 1))
    c = ufd.upfirdn2d(x, f, up=[2, 2], down=[2, 2], padding=[1, 1, 1, 1])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_none_filter_is_identity_and_zero_insertion():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(ufd.upfirdn2d(x, None), x)
    y = ufd.upfirdn2d(x, None, up=(3, 2))
    assert y.shape == (2, 3, 8, 15)
    torch.testing.assert_close(y[:, :, ::2, ::3], x)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[:, :, ::2, ::3] = False
    assert (y[mask] == 0).all()  # everything else is an inserted zero


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
@pytest.mark.parametrize("taps", [[1.0, 3.0, 3.0, 1.0], [1.0, 2.0, 1.0]])
def test_wrapper_output_sizes(size, taps):
    x = torch.randn(1, 2, *size)
    for f in (ufd.setup_filter(taps), ufd.setup_filter(taps, separable=False)):
        assert ufd.filter2d(x, f).shape[2:] == size
        assert ufd.filter2d(x, f, padding=(1, 2)).shape[2:] == (size[0] + 4, size[1] + 2)
        assert ufd.upsample2d(x, f).shape[2:] == (size[0] * 2, size[1] * 2)
        assert ufd.upsample2d(x, f, up=(2, 4)).shape[2:] == (size[0] * 4, size[1] * 2)
        assert ufd.downsample2d(x, f).shape[2:] == (size[0] // 2, size[1] // 2)
        assert ufd.downsample2d(x, f, down=(1, 2)).shape[2:] == (size[0] // 2, size[1])


def test_constant_image_stays_constant_in_interior():
    x = torch.full((1, 1, 12, 12), 2.5, dtype=torch.float64)
    f = ufd.setup_filter([1, 3, 3, 1])
    box4 = ufd.setup_filter([1, 1, 1, 1])
    # b: a border wider than the filter's reach into the zero padding, in output pixels.
    for y, b in (
        (ufd.filter2d(x, f), 2),
        (ufd.upsample2d(x, f), 4),
        (ufd.upsample2d(x, box4, up=4), 8),
        (ufd.downsample2d(x, f), 1),
        (ufd.downsample2d(x, f, down=(2, 1)), 2),
    ):
        interior = y[:, :, b:-b, b:-b]
        assert interior.numel() > 0
        torch.testing.assert_close(interior, torch.full_like(interior, 2.5))


def test_wrappers_keep_pixel_centres_aligned():
    # A linear ramp i -> i is mapped exactly by linear-interpolation / box filters, which
    # pins down where each output pixel sits (centres at (j+0.5)/up-0.5, (j+0.5)*down-0.5).
    ramp = torch.arange(12, dtype=torch.float64).repeat(12, 1)[None, None]  # varies along x
    up = ufd.upsample2d(ramp, ufd.setup_filter([1, 3, 3, 1]))
    j = torch.arange(24, dtype=torch.float64)
    torch.testing.assert_close(up[0, 0, 6, 3:-3], ((j + 0.5) / 2 - 0.5)[3:-3])
    down = ufd.downsample2d(ramp, ufd.setup_filter([1, 1]))
    j = torch.arange(6, dtype=torch.float64)
    torch.testing.assert_close(down[0, 0, 3], (j + 0.5) * 2 - 0.5)
    delta = torch.zeros(1, 1, 7, 7)
    delta[0, 0, 3, 3] = 1
    smoothed = ufd.filter2d(delta, ufd.setup_filter([1, 2, 1]))
    assert smoothed[0, 0].argmax().item() == 3 * 7 + 3


def test_setup_filter():
    f = ufd.setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4,)
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    f2 = ufd.setup_filter([1, 3, 3, 1], separable=False)
    assert f2.shape == (4, 4)
    torch.testing.assert_close(f2, torch.outer(f, f))
    # gain ** (ndim / 2): the separable filter applied twice and the 2-D one both give `gain`.
    torch.testing.assert_close(ufd.setup_filter([1, 3, 3, 1], gain=4).sum(), torch.tensor(2.0))
    torch.testing.assert_close(ufd.setup_filter([1, 3, 3, 1], gain=4, separable=False).sum(), torch.tensor(4.0))
    torch.testing.assert_close(ufd.setup_filter([1, 2], flip_filter=True), torch.tensor([2 / 3, 1 / 3]))
    assert ufd.setup_filter(None).tolist() == [1.0]
    assert ufd.setup_filter([[1, 2], [3, 4]], normalize=False).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="separable"):
        ufd.setup_filter([[1, 2], [3, 4]], separable=True)
    with pytest.raises(ValueError, match="sum to 0"):
        ufd.setup_filter([1, -1])
    with pytest.raises(ValueError, match="ndim"):
        ufd.setup_filter(torch.ones(2, 2, 2))


def test_gain_total_for_both_filter_kinds():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    base = ufd.upfirdn2d(x, f)
    torch.testing.assert_close(ufd.upfirdn2d(x, f, gain=3), 3 * base)
    torch.testing.assert_close(ufd.upfirdn2d(x, torch.outer(f, f), gain=3), 3 * base)


def test_helpers_and_errors():
    assert ufd.parse_scaling(2) == (2, 2) and ufd.parse_scaling((1, 3)) == (1, 3)
    assert ufd.parse_padding(1) == (1, 1, 1, 1)
    assert ufd.parse_padding((1, 2)) == (1, 1, 2, 2)
    assert ufd.parse_padding([1, 2, 3, 4]) == (1, 2, 3, 4)
    assert ufd.get_filter_size(None) == (1, 1)
    assert ufd.get_filter_size(torch.ones(5)) == (5, 5)
    assert ufd.get_filter_size(torch.ones(2, 3)) == (3, 2)
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="f must be"):
        ufd.upfirdn2d(x, torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="up must be positive"):
        ufd.upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError, match="down must be positive"):
        ufd.upfirdn2d(x, None, down=(1, -2))
    with pytest.raises(TypeError, match="padding"):
        ufd.upfirdn2d(x, None, padding=[1, 2, 3])
    with pytest.raises(TypeError, match="up"):
        ufd.upfirdn2d(x, None, up=1.5)
    with pytest.raises(ValueError, match="output size"):
        ufd.upfirdn2d(x, torch.ones(6))
    with pytest.raises(ValueError, match="4-D"):
        ufd.upfirdn2d(torch.randn(4, 4), None)
    with pytest.raises(ValueError, match="impl='cuda'"):
        ufd.upfirdn2d(x, None, impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        ufd.upfirdn2d(x, None, impl="triton")


# Geometries for the gradient tests: (up, down, padding, filter shape, flip).
GRAD_CASES = [
    ((2, 2), (1, 1), [2, 1, 2, 1], (4,), False),
    ((1, 1), (2, 2), [1, 1, 1, 1], (4,), True),
    ((2, 1), (1, 2), [1, -1, 0, 2], (3, 2), False),
    ((4, 4), (2, 2), [3, 2, -1, 1], (3,), True),
    ((1, 1), (3, 2), [-1, 2, 1, 0], (2, 3), False),
]


@pytest.mark.parametrize("up,down,pad,fshape,flip", GRAD_CASES)
def test_reference_gradcheck(up, down, pad, fshape, flip):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    f = torch.randn(*fshape, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(x, f):
        return ufd.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.5, impl="ref")

    assert torch.autograd.gradcheck(fn, (x, f), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, f), fast_mode=True)


def _via_function(x, f, up, down, pad, flip, gain, kernel):
    geom = ufd._Geometry(*up, *down, *pad, flip)
    return ufd._upfirdn2d_function(x, f * gain ** (f.ndim / 2), geom, kernel)


@pytest.mark.parametrize("up,down,pad,fshape,flip", GRAD_CASES)
def test_function_backward_formula_on_cpu(up, down, pad, fshape, flip):
    # The CUDA path's autograd.Function, with the reference as the kernel stand-in: its
    # analytic backward (upfirdn2d with the adjoint geometry) must equal autograd of the reference.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    f = torch.randn(*fshape, dtype=torch.float64, generator=gen)
    y_fn = _via_function(x, f, up, down, pad, flip, 2.0, ufd._ref_kernel)
    y_ref = ufd.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0, impl="ref")
    torch.testing.assert_close(y_fn, y_ref)
    dy = torch.randn(y_ref.shape, dtype=torch.float64, generator=gen)
    (dx_fn,) = torch.autograd.grad(y_fn, x, dy, create_graph=True)
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy, create_graph=True)
    torch.testing.assert_close(dx_fn, dx_ref)
    # Gradients of the Function itself, including second order through its own backward.
    def fn(x):
        return _via_function(x, f, up, down, pad, flip, 2.0, ufd._ref_kernel)

    x_small = x[:1, :2, :4, :3].detach().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x_small,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x_small,), fast_mode=True)


def test_adjoint_geometry_restores_input_size():
    for up, down, pad, fshape, flip in GRAD_CASES:
        fh, fw = (fshape * 2)[:2] if len(fshape) == 1 else fshape
        g = ufd._Geometry(*up, *down, *pad, flip)
        for h, w in [(5, 4), (6, 7)]:
            out_h, out_w = g.out_size(h, w, fh, fw)
            if out_h <= 0 or out_w <= 0:
                continue
            assert g.adjoint(h, w, fh, fw).out_size(out_h, out_w, fh, fw) == (h, w)


# ----------------------------------------------------------------------------------------
# CUDA path against the reference (run wherever a GPU is present).


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("up,down,pad,fshape,flip", GRAD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_reference(up, down, pad, fshape, flip, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 19, 14, generator=gen).cuda().to(dtype).requires_grad_()
    f = torch.randn(*fshape, generator=gen).cuda()
    kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=1.5)
    y_cuda = ufd.upfirdn2d(x, f, impl="cuda", **kw)
    y_ref = ufd.upfirdn2d(x.float(), f, impl="ref", **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(y_cuda.float(), y_ref, **tol)
    dy = torch.randn(y_ref.shape, generator=gen).cuda()
    (dx_cuda,) = torch.autograd.grad(y_cuda, x, dy.to(dtype))
    (dx_ref,) = torch.autograd.grad(y_ref, x, dy)
    torch.testing.assert_close(dx_cuda.float(), dx_ref.float(), **tol)


@pytest.mark.cuda
@needs_cuda
def test_cuda_gradgradcheck_and_auto_dispatch():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    f = ufd.setup_filter([1, 3, 3, 1], device=torch.device("cuda")).double()

    def fn(x):
        return ufd.upfirdn2d(x, f, up=2, down=(1, 2), padding=[2, 1, 0, 1], impl="cuda")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    big = torch.randn(2, 3, 33, 40, device="cuda")
    torch.testing.assert_close(ufd.upsample2d(big, f.float()), ufd.upsample2d(big, f.float(), impl="ref"))
