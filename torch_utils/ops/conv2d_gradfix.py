"""conv2d / conv_transpose2d with full double-backward support and an optional skip of weight gradients.

Same signatures and results as `torch.nn.functional.conv2d` / `conv_transpose2d`, but the
gradients are expressed by custom autograd Functions built from the same two ops:

* gradient w.r.t. the input of a convolution = a transposed convolution with the same
  weight (and vice versa), so it is itself differentiable to any order;
* gradient w.r.t. the weight = `aten.convolution_backward` wrapped in a Function whose own
  backward is again a convolution (the weight gradient is bilinear in grad_output and input).

Inside `with no_weight_gradients():` the backward pass returns no weight gradients. This is
what an R1 penalty needs: `torch.autograd.grad(D(x).sum(), x, create_graph=True)` only asks
for d/dx, and skipping the weight gradient saves a convolution per layer. The flag is read
when the backward runs, so the later backward of the penalty itself (outside the context)
still reaches the weights through the input-gradient graph.

`state.enabled = False` makes both functions plain calls of torch.nn.functional.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from torch_utils.ops import winograd

__all__ = ["conv2d", "conv_transpose2d", "no_weight_gradients", "state"]

IntPair = Union[int, Sequence[int]]


class _GradfixState:
    """Switches of this module, held in one object instead of loose module globals."""

    def __init__(self) -> None:
        self.enabled: bool = True  # False: use torch.nn.functional directly.
        self.weight_gradients_disabled: bool = False


state = _GradfixState()


@contextlib.contextmanager
def no_weight_gradients(disable: bool = True) -> Iterator[None]:
    """Within the block, backward passes through conv2d/conv_transpose2d skip weight gradients."""
    previous = state.weight_gradients_disabled
    if disable:
        state.weight_gradients_disabled = True
    try:
        yield
    finally:
        state.weight_gradients_disabled = previous


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class _ConvSpec:
    """Everything about a convolution except its tensors."""

    transpose: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    output_padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def apply(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The plain forward op (stride-1 3x3 ones on a CPU by Winograd's algorithm where it pays)."""
        if self.transpose:
            if self.output_padding == (0, 0) and winograd.usable(x, w, self.stride, self.padding, self.dilation,
                                                                 self.groups, transposed=True):
                return winograd.conv_transpose3x3(x, w, b, self.padding)
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding,
                                      self.groups, self.dilation)
        if winograd.usable(x, w, self.stride, self.padding, self.dilation, self.groups):
            return winograd.conv3x3(x, w, b, self.padding)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def input_grad_spec(self, input_shape: Sequence[int], output_shape: Sequence[int],
                        weight_shape: Sequence[int]) -> "_ConvSpec":
        """The op mapping grad_output to grad_input: the transposed op of this one."""
        if self.transpose:
            # conv2d on a transposed conv's output size gives back the input size (output_padding < stride).
            return _ConvSpec(False, self.stride, self.padding, (0, 0), self.dilation, self.groups)
        # A strided conv drops trailing rows; output_padding restores them in the transposed op.
        out_pad = tuple(
            input_shape[i + 2]
            - ((output_shape[i + 2] - 1) * self.stride[i] - 2 * self.padding[i]
               + self.dilation[i] * (weight_shape[i + 2] - 1) + 1)
            for i in range(2))
        return _ConvSpec(True, self.stride, self.padding, out_pad, self.dilation, self.groups)  # type: ignore[arg-type]


class _Conv2dFn(torch.autograd.Function):
    """y = conv(x, w) + b, whose backward is built from _Conv2dFn and _WeightGradFn again."""

    @staticmethod
    def forward(ctx, x, w, b, spec: _ConvSpec):  # type: ignore[override]
        ctx.spec = spec
        ctx.input_shape, ctx.weight_shape = tuple(x.shape), tuple(w.shape)
        # Only what the backward needs: the weight for grad_x, the input for grad_w.
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              w if ctx.needs_input_grad[0] else None)
        return spec.apply(x, w, b)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, w = ctx.saved_tensors
        spec: _ConvSpec = ctx.spec
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            back = spec.input_grad_spec(ctx.input_shape, grad_out.shape, ctx.weight_shape)
            grad_x = _Conv2dFn.apply(grad_out, w, None, back)
            assert tuple(grad_x.shape) == ctx.input_shape
        if ctx.needs_input_grad[1] and not state.weight_gradients_disabled:
            grad_w = _WeightGradFn.apply(grad_out, x, spec, ctx.weight_shape)
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None


class _WeightGradFn(torch.autograd.Function):
    """grad_w(grad_out, x): the weight gradient of `spec`, bilinear in its two arguments."""

    @staticmethod
    def forward(ctx, grad_out, x, spec: _ConvSpec, weight_shape):  # type: ignore[override]
        ctx.spec, ctx.weight_shape = spec, weight_shape
        ctx.save_for_backward(grad_out, x)
        # Both paths read only the weight's shape (and dtype); a stand-in of that shape suffices.
        weight = x.new_empty(weight_shape)
        if not spec.transpose and winograd.usable(x, weight, spec.stride, spec.padding, spec.dilation, spec.groups,
                                                  weight_grad=True):
            return winograd.weight_grad3x3(grad_out, x, spec.padding)
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, list(spec.stride), list(spec.padding), list(spec.dilation),
            spec.transpose, list(spec.output_padding), spec.groups, [False, True, False])
        return grad_w

    @staticmethod
    def backward(ctx, gg_w):  # type: ignore[override]
        grad_out, x = ctx.saved_tensors
        spec: _ConvSpec = ctx.spec
        gg_out = gg_x = None
        # <gg_w, grad_w(go, x)> = <go, conv(x, gg_w)> = <conv^T(go, gg_w), x>.
        if ctx.needs_input_grad[0]:
            gg_out = _Conv2dFn.apply(x, gg_w, None, spec)
        if ctx.needs_input_grad[1]:
            back = spec.input_grad_spec(x.shape, grad_out.shape, ctx.weight_shape)
            gg_x = _Conv2dFn.apply(grad_out, gg_w, None, back)
        return gg_out, gg_x, None, None


def _use_custom(x: torch.Tensor) -> bool:
    return state.enabled and x.dim() == 4


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """torch.nn.functional.conv2d (numeric padding only) with double backward and no_weight_gradients()."""
    if not _use_custom(input) or isinstance(padding, str):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    spec = _ConvSpec(False, _pair(stride, "stride"), _pair(padding, "padding"), (0, 0),
                     _pair(dilation, "dilation"), int(groups))
    return _Conv2dFn.apply(input, weight, bias, spec)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     groups: int = 1, dilation: IntPair = 1) -> torch.Tensor:
    """torch.nn.functional.conv_transpose2d with double backward and no_weight_gradients()."""
    stride_, out_pad = _pair(stride, "stride"), _pair(output_padding, "output_padding")
    # output_padding >= stride (legal when dilation is larger) has no exact conv2d adjoint size.
    if not _use_custom(input) or any(op >= s for op, s in zip(out_pad, stride_)):
        return F.conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    spec = _ConvSpec(True, stride_, _pair(padding, "padding"), out_pad, _pair(dilation, "dilation"), int(groups))
    return _Conv2dFn.apply(input, weight, bias, spec)
