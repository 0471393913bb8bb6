"""Tests for torch_utils.ops.grid_sample_gradfix: agreement with F.grid_sample and double backward."""

import functools

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops.grid_sample_gradfix import grid_sample, grid_sample_ref


PADDINGS = ["zeros", "border", "reflection"]


def _builtin(x, g, padding_mode="zeros"):
    return F.grid_sample(x, g, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _inputs(dtype=torch.float32, seed=0, size=(2, 3, 5, 6), out=(4, 3)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*size, generator=gen, dtype=dtype)
    # Range beyond [-1, 1] exercises the padding at the borders; reflection at +-3 reflects twice.
    g = (torch.rand(size[0], *out, 2, generator=gen, dtype=dtype) * 6 - 3)
    return x, g


@pytest.mark.parametrize("padding", PADDINGS)
def test_forward_and_first_grads_match_builtin(padding):
    x, g = _inputs()
    probe = torch.randn(2, 3, 4, 3)
    results = []
    for fn in (_builtin, grid_sample):
        fn = functools.partial(fn, padding_mode=padding)
        xs, gs = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
        y = fn(xs, gs)
        results.append((y, *torch.autograd.grad((y * probe).sum(), (xs, gs))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("padding", PADDINGS)
def test_reference_sampler_matches_builtin(padding):
    x, g = _inputs(torch.float64, seed=1)
    torch.testing.assert_close(grid_sample_ref(x, g, padding), _builtin(x, g, padding))


def test_gradcheck_and_gradgradcheck_all_terms():
    x, g = _inputs(torch.float64, seed=2, size=(1, 2, 4, 4), out=(3, 2))
    x.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(grid_sample, (x, g))
    assert torch.autograd.gradgradcheck(grid_sample, (x, g))


@pytest.mark.parametrize("padding", PADDINGS)
def test_gradgradcheck_input_only_terms(padding):
    """The common case (R1 through the ADA warp): the loss depends on d/d input only; grid is a constant."""
    x, g = _inputs(torch.float64, seed=3, size=(1, 2, 4, 5), out=(2, 3))
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x: grid_sample(x, g, padding), (x,))


def test_second_derivative_never_calls_torchs_own():
    """Torch 2.11 cannot differentiate grid_sampler_2d_backward (2.13 can); this module must not need to."""
    x, g = _inputs(torch.float64, seed=6)
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(grid_sample(x, g, "reflection").square().sum(), x, create_graph=True)
    names = set()
    stack = [gx.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node.name() not in names:
            names.add(node.name())
            stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert not any("GridSampler2DBackward" in name for name in names), names
    assert any("_GridSampleBackwardFn" in name for name in names), names


@pytest.mark.parametrize("padding", PADDINGS)
def test_second_order_matches_reference_sampler(padding):
    """grad of |d<y,p>/dx|^2 + |d<y,p>/dgrid|^2 w.r.t. (x, grid), against the autograd-only sampler."""
    x, g = _inputs(torch.float64, seed=4)
    probe = torch.randn(2, 3, 4, 3, dtype=torch.float64)

    def second_order(fn):
        xs, gs = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
        gx, gg = torch.autograd.grad((fn(xs, gs) * probe).sum(), (xs, gs), create_graph=True)
        return torch.autograd.grad(gx.square().sum() + gg.square().sum(), (xs, gs))

    for a, b in zip(second_order(functools.partial(grid_sample, padding_mode=padding)),
                    second_order(functools.partial(grid_sample_ref, padding_mode=padding))):
        torch.testing.assert_close(a, b)


def test_disabled_and_bad_shapes():
    x, g = _inputs()
    grid_sample_gradfix.state.enabled = False
    try:
        torch.testing.assert_close(grid_sample(x, g), _builtin(x, g))
    finally:
        grid_sample_gradfix.state.enabled = True
    with pytest.raises(ValueError, match="grid"):
        grid_sample(x, g[..., :1])
    with pytest.raises(ValueError, match="padding_mode.*'mirror'"):
        grid_sample(x, g, padding_mode="mirror")
