"""Tests for torch_utils.ops.grid_sample_gradfix: agreement with F.grid_sample and double backward."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import grid_sample_gradfix
from torch_utils.ops.grid_sample_gradfix import grid_sample, grid_sample_ref


def _builtin(x, g):
    return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)


def _inputs(dtype=torch.float32, seed=0, size=(2, 3, 5, 6), out=(4, 3)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*size, generator=gen, dtype=dtype)
    # Range beyond [-1, 1] exercises the zero padding at the borders.
    g = (torch.rand(size[0], *out, 2, generator=gen, dtype=dtype) * 2.4 - 1.2)
    return x, g


def test_forward_and_first_grads_match_builtin():
    x, g = _inputs()
    probe = torch.randn(2, 3, 4, 3)
    results = []
    for fn in (_builtin, grid_sample):
        xs, gs = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
        y = fn(xs, gs)
        results.append((y, *torch.autograd.grad((y * probe).sum(), (xs, gs))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_reference_sampler_matches_builtin():
    x, g = _inputs(torch.float64, seed=1)
    torch.testing.assert_close(grid_sample_ref(x, g), _builtin(x, g))


def test_gradcheck_and_gradgradcheck_all_terms():
    x, g = _inputs(torch.float64, seed=2, size=(1, 2, 4, 4), out=(3, 2))
    x.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(grid_sample, (x, g))
    assert torch.autograd.gradgradcheck(grid_sample, (x, g))


def test_gradgradcheck_input_only_terms():
    """The common case: the loss depends on d/d input only; grid is a constant."""
    x, g = _inputs(torch.float64, seed=3, size=(1, 2, 4, 5), out=(2, 3))
    x.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x: grid_sample(x, g), (x,))


def test_second_order_matches_reference_sampler():
    """grad of |d<y,p>/dx|^2 + |d<y,p>/dgrid|^2 w.r.t. (x, grid), against the autograd-only sampler."""
    x, g = _inputs(torch.float64, seed=4)
    probe = torch.randn(2, 3, 4, 3, dtype=torch.float64)

    def second_order(fn):
        xs, gs = x.clone().requires_grad_(True), g.clone().requires_grad_(True)
        gx, gg = torch.autograd.grad((fn(xs, gs) * probe).sum(), (xs, gs), create_graph=True)
        return torch.autograd.grad(gx.square().sum() + gg.square().sum(), (xs, gs))

    for a, b in zip(second_order(grid_sample), second_order(grid_sample_ref)):
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
