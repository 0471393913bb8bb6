"""Tests for torch_utils.ops.fma: values and broadcast-reduced gradients against autograd of a*b+c."""

import pytest
import torch

from torch_utils.ops.fma import fma

SHAPES = [
    ((2, 3, 4), (2, 3, 4), (2, 3, 4)),
    ((3, 1), (1, 4), (4,)),
    ((1,), (2, 1, 5), (2, 3, 1)),
    ((), (2, 3), (1, 3)),
]


@pytest.mark.parametrize("sa,sb,sc", SHAPES)
def test_matches_autograd_with_broadcasting(sa, sb, sc):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in (sa, sb, sc)]
    ref_leaves = [t.clone().requires_grad_(True) for t in tensors]
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    ref = ref_leaves[0] * ref_leaves[1] + ref_leaves[2]
    out = fma(*leaves)
    torch.testing.assert_close(out, ref)
    probe = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for g, rg, t in zip(torch.autograd.grad((out * probe).sum(), leaves),
                        torch.autograd.grad((ref * probe).sum(), ref_leaves), tensors):
        assert g.shape == t.shape
        torch.testing.assert_close(g, rg)


def test_gradgradcheck():
    a = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fma, (a, b, c))
    assert torch.autograd.gradgradcheck(fma, (a, b, c))
