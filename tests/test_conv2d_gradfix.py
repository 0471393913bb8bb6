"""Tests for torch_utils.ops.conv2d_gradfix: agreement with torch.nn.functional, double backward, weight-grad skipping."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import conv2d_gradfix

# (in_ch, out_ch, kernel (kh, kw), stride, padding, dilation, groups, input size (h, w))
CASES = [
    (3, 4, (3, 3), 1, 1, 1, 1, (7, 6)),
    (4, 6, (3, 2), 2, (1, 0), 1, 2, (8, 7)),
    (2, 3, (1, 1), 2, 0, 1, 1, (5, 5)),
    (4, 4, (3, 3), (2, 1), 2, 2, 4, (9, 6)),
]


def _grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    probe = torch.randn_like(out, generator=torch.Generator().manual_seed(5))
    grads = torch.autograd.grad((out * probe).sum(), leaves)
    return out, grads


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups,size", CASES)
def test_conv2d_matches_functional(cin, cout, k, stride, pad, dil, groups, size):
    torch.manual_seed(0)
    x = torch.randn(2, cin, *size)
    w = torch.randn(cout, cin // groups, *k)
    b = torch.randn(cout)
    ref_out, ref_g = _grads(lambda x, w, b: F.conv2d(x, w, b, stride, pad, dil, groups), x, w, b)
    out, g = _grads(lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, stride, pad, dil, groups), x, w, b)
    torch.testing.assert_close(out, ref_out)
    for a, r in zip(g, ref_g):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def _min_stride(case):
    stride = case[3]
    return stride if isinstance(stride, int) else min(stride)


# output_padding must stay below the stride.
TRANSPOSE_CASES = [case + (op,) for case in CASES for op in (0, 1) if op < _min_stride(case)]


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups,size,out_pad", TRANSPOSE_CASES)
def test_conv_transpose2d_matches_functional(cin, cout, k, stride, pad, dil, groups, size, out_pad):
    torch.manual_seed(1)
    x = torch.randn(2, cin, *size)
    w = torch.randn(cin, cout // groups, *k)
    b = torch.randn(cout)
    args = (stride, pad, out_pad, groups, dil)
    ref_out, ref_g = _grads(lambda x, w, b: F.conv_transpose2d(x, w, b, *args), x, w, b)
    out, g = _grads(lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, *args), x, w, b)
    torch.testing.assert_close(out, ref_out)
    for a, r in zip(g, ref_g):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transpose", [False, True])
def test_gradcheck_and_gradgradcheck(transpose):
    torch.manual_seed(2)
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    if transpose:
        w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
        fn = lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2)
    else:
        w = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
        fn = lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, stride=2, padding=(1, 0), groups=2)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_r1_style_double_backward_matches_functional():
    """Gradient of |dD/dx|^2 w.r.t. the weights equals the one through F.conv2d."""
    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8)
    w1, w2 = torch.randn(4, 3, 3, 3), torch.randn(1, 4, 3, 3)

    def penalty_grads(conv):
        xs = x.clone().requires_grad_(True)
        ws = [w1.clone().requires_grad_(True), w2.clone().requires_grad_(True)]
        logits = conv(torch.nn.functional.leaky_relu(conv(xs, ws[0], None, 2, 1), 0.2), ws[1], None, 1, 1)
        with conv2d_gradfix.no_weight_gradients():
            (gx,) = torch.autograd.grad(logits.sum(), xs, create_graph=True)
        penalty = gx.square().sum()
        return torch.autograd.grad(penalty, ws)

    ref = penalty_grads(F.conv2d)
    ours = penalty_grads(conv2d_gradfix.conv2d)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_no_weight_gradients_skips_weight_grad_only():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    with conv2d_gradfix.no_weight_gradients():
        conv2d_gradfix.conv2d(x, w, padding=1).square().sum().backward()
    assert w.grad is None
    x_ref = x.detach().clone().requires_grad_(True)
    F.conv2d(x_ref, w.detach(), padding=1).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    # The flag is restored on exit, and disable=False leaves weight gradients on.
    x.grad = None
    with conv2d_gradfix.no_weight_gradients(disable=False):
        conv2d_gradfix.conv2d(x, w, padding=1).square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert not conv2d_gradfix.state.weight_gradients_disabled


def test_disabled_falls_back_to_functional():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3)
    conv2d_gradfix.state.enabled = False
    try:
        y = conv2d_gradfix.conv2d(x, w, padding=1)
        assert "Conv2dFn" not in type(y.grad_fn).__name__
        torch.testing.assert_close(y, F.conv2d(x, w, padding=1))
    finally:
        conv2d_gradfix.state.enabled = True
    assert "Conv2dFn" in type(conv2d_gradfix.conv2d(x, w, padding=1).grad_fn).__name__
