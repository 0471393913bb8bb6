"""Fused multiply-add a*b + c with a backward that sums gradients back to the broadcast shapes."""

from __future__ import annotations

import torch

__all__ = ["fma"]


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a * b + c with broadcasting; uses torch.addcmul, one kernel instead of two."""
    return _FmaFn.apply(a, b, c)


def _unbroadcast(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `grad` over the dimensions that broadcasting expanded to reach grad.shape from `shape`."""
    extra = grad.dim() - len(shape)
    if extra < 0:
        raise ValueError(f"gradient of shape {tuple(grad.shape)} has fewer dims than operand {tuple(shape)}")
    dims = list(range(extra)) + [extra + i for i, size in enumerate(shape)
                                 if size == 1 and grad.shape[extra + i] != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(shape)


class _FmaFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, c):  # type: ignore[override]
        ctx.save_for_backward(a, b)
        ctx.c_shape = c.shape
        return torch.addcmul(c, a, b)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        a, b = ctx.saved_tensors
        # Expressed with differentiable ops (mul, sum), so double backward works too.
        grad_a = _unbroadcast(grad_out * b, a.shape) if ctx.needs_input_grad[0] else None
        grad_b = _unbroadcast(grad_out * a, b.shape) if ctx.needs_input_grad[1] else None
        grad_c = _unbroadcast(grad_out, ctx.c_shape) if ctx.needs_input_grad[2] else None
        return grad_a, grad_b, grad_c
