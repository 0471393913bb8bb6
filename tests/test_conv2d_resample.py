"""Tests for torch_utils.ops.conv2d_resample: fused paths against the naive composition, analytic cases, gradients."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops.conv2d_resample import conv2d_resample
from torch_utils.ops.upfirdn2d import setup_filter, upfirdn2d


def _naive(x, w, f, up, down, padding, groups, flip_weight, flip_filter):
    """The documented definition, step by step: upsample+pad+filter, valid conv, subsample."""
    px0, px1, py0, py1 = padding
    if up == 1 and down == 1:
        u = F.pad(x, [px0, px1, py0, py1])
    else:
        fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else tuple(f.shape)
        ax0 = (fw + up - down) // 2  # centres aligned: (fw + up - down - 1) / 2 rounded up
        ay0 = (fh + up - down) // 2
        pads = [ax0 + px0, fw - 1 - ax0 + px1, ay0 + py0, fh - 1 - ay0 + py1]
        u = upfirdn2d(x, f, up=up, padding=pads, gain=up * up, flip_filter=flip_filter, impl="ref")
    c = F.conv2d(u, w if flip_weight else w.flip([2, 3]), groups=groups)
    return c[:, :, ::down, ::down]


FILTER_SYM = [1.0, 3.0, 3.0, 1.0]
FILTER_ASYM = [1.0, 2.0, 4.0]

CASES = [  # (up, down, k, groups, padding [x0,x1,y0,y1], flip_weight, flip_filter, filter)
    (up, down, k, groups, [k // 2] * 4, fw_flag, False, FILTER_SYM)
    for up, down, k, groups, fw_flag in itertools.product([1, 2], [1, 2], [1, 3], [1, 2], [True, False])
] + [
    (2, 1, 3, 1, [0, 2, 1, 0], True, False, FILTER_ASYM),
    (1, 2, 3, 2, [2, 1, 0, 1], False, True, FILTER_ASYM),
    (2, 2, 2, 1, [1, 0, 0, 1], True, True, FILTER_ASYM),
    (2, 1, 4, 1, [1, 2, 2, 1], False, False, FILTER_SYM),
]


@pytest.mark.parametrize("up,down,k,groups,padding,flip_weight,flip_filter,taps", CASES)
def test_matches_naive_composition(up, down, k, groups, padding, flip_weight, flip_filter, taps):
    gen = torch.Generator().manual_seed(up * 100 + down * 10 + k)
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, generator=gen, dtype=torch.float64)
    f = setup_filter(taps)
    args = (f, up, down, padding, groups, flip_weight, flip_filter)

    def run(fn):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = fn(xs, ws, *args)
        probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
        return (y, *torch.autograd.grad((y * probe).sum(), (xs, ws)))

    ours = run(lambda x, w, *a: conv2d_resample(x, w, *a))
    ref = run(_naive)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_same_padding_gives_scaled_resolution(up, down):
    x = torch.randn(1, 2, 8, 6)
    y = conv2d_resample(x, torch.randn(3, 2, 3, 3), setup_filter(FILTER_SYM), up=up, down=down, padding=1)
    assert y.shape == (1, 3, 8 * up // down, 6 * up // down)


def test_box_filter_up_is_nearest_and_down_is_average_pooling():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    identity = torch.eye(3, dtype=torch.float64)[:, :, None, None]
    box = setup_filter([1, 1])
    up = conv2d_resample(x, identity, box, up=2)
    torch.testing.assert_close(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    down = conv2d_resample(x, identity, box, down=2)
    torch.testing.assert_close(down, F.avg_pool2d(x, 2))


@pytest.mark.parametrize("up,down", [(2, 1), (1, 2)])
def test_mirror_symmetry_shows_centred_alignment(up, down):
    """Symmetric filter and kernel: mirroring the input mirrors the output (no half-pixel shift)."""
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    w = w + w.flip([2, 3])
    f = setup_filter(FILTER_SYM)
    y = conv2d_resample(x, w, f, up=up, down=down, padding=1)
    y_mirror = conv2d_resample(x.flip([2, 3]), w, f, up=up, down=down, padding=1)
    torch.testing.assert_close(y_mirror, y.flip([2, 3]))


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    f = setup_filter(FILTER_SYM)
    for up, down in [(2, 1), (1, 2)]:
        fn = lambda x, w: conv2d_resample(x, w, f, up=up, down=down, padding=1)
        assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


def test_bad_arguments_are_named():
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(ValueError, match="groups=3"):
        conv2d_resample(x, torch.randn(3, 2, 3, 3), groups=3)
    with pytest.raises(ValueError, match="up"):
        conv2d_resample(x, torch.randn(3, 4, 3, 3), up=0)
