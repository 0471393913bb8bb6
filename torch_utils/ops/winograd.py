"""Stride-1 3x3 convolutions on a CPU by Winograd's F(4x4, 3x3): 4x fewer multiply-adds.

`conv3x3(x, w, b, padding)` equals `F.conv2d(x, w, b, padding=padding)` within float32
rounding of the transforms (errors up to ~2e-5 of the output's scale, against ~2e-6 for
oneDNN's direct convolution; tests check it against float64 convolutions); winograd_cpu.cpp
says how. `conv_transpose3x3` is the same for a stride-1 transposed convolution (the input
gradient of a stride-1 conv), which is a conv with the kernel flipped and its two channel axes
swapped. `weight_grad3x3` is the weight gradient, in the same transform domain.

`usable(x, w, ...)` decides where the kernel is used: float32 CPU tensors in channels-last
layout (the networks' layout on a CPU), 3x3 filters, stride 1, no dilation or groups,
padding up to 2, channel counts that are multiples of 16 and at least `MIN_CHANNELS`,
convolutions of at least `MIN_MACS` multiply-adds and `MIN_OUTPUTS` outputs per image, and for
the weight gradient at most `MAX_WEIGHT_GRAD_CHANNELS` channel pairs. Anything else keeps oneDNN's convolution
(so do all of the demo's, which are below `MIN_MACS`).
`bench/winograd.py` times both for the shapes of the training step.

Neither function is differentiable by itself: conv2d_gradfix calls them inside its autograd
Functions, whose backward is again a convolution. `state.enabled = False` (or the compiled CPU
kernels being unavailable) turns the kernel off.
"""

from __future__ import annotations

from typing import ContextManager, Optional, Sequence

import torch

from torch_utils import misc
from torch_utils.ops.cpu_kernels import plugin

__all__ = ["conv3x3", "conv_transpose3x3", "weight_grad3x3", "usable", "state", "enabled",
           "MIN_CHANNELS", "MIN_MACS", "MIN_OUTPUTS", "MAX_WEIGHT_GRAD_CHANNELS"]

# The transforms cost per channel and the products per channel pair, so few channels gain least;
# the networks' steps were measured from 32 channels up (`bench/winograd.py`).
MIN_CHANNELS = 32
# Multiply-adds of the direct convolution below which it is as fast as the kernel (whose weight
# transform, edge tiles and thread start-up are paid per call): measured equal for 128 channels
# at 16x16, batch 4 (151M) and for the demo's 32 channels at 32x32, batch 16 (151M); 1.5x faster
# for 128 channels at 32x32, batch 4 (604M). `bench/winograd.py` prints these.
MIN_MACS = 2 ** 28
# Outputs per image below which the direct convolution wins however many channels there are:
# with few tiles per image the transforms of the weights (and, for the weight gradient, of its
# sums) are paid for too few tiles (512 channels at 16x16, batch 2: 0.64x).
MIN_OUTPUTS = 32 * 32
# Input x output channels above which the weight gradient stays direct: its partial sums
# (36 x C x K floats per group of tiles, 38 MB at 512 x 512) cost more than the products it
# saves (512 channels, batch 2: 0.75x at 64x64, 0.41x at 32x32; 256 channels: 1.9x at 128x128).
MAX_WEIGHT_GRAD_CHANNELS = 256 * 256


class _WinogradState:
    """The module's switch, held in an object instead of a loose global."""

    def __init__(self) -> None:
        self.enabled: bool = True


state = _WinogradState()


def enabled(flag: bool) -> ContextManager[None]:
    """Within the block, conv2d_gradfix uses (True) or skips (False) the kernel."""
    return misc.attribute_set(state, "enabled", bool(flag))


def usable(x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
           dilation: Sequence[int], groups: int, transposed: bool = False, weight_grad: bool = False) -> bool:
    """Whether conv2d (or, with `transposed`, conv_transpose2d without output padding) of x
    and w with these arguments runs through the kernel; with `weight_grad`, whether the
    convolution's weight gradient does."""
    if not state.enabled or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    if x.dim() != 4 or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3) or groups != 1:
        return False
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or not all(0 <= p <= 2 for p in padding):
        return False
    c, k = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    if c % 16 or k % 16 or min(c, k) < MIN_CHANNELS:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return False  # NCHW (or a 1x1 image, where the layouts coincide): oneDNN's path
    pad = [2 - p for p in padding] if transposed else padding
    out_h, out_w = x.shape[2] + 2 * pad[0] - 2, x.shape[3] + 2 * pad[1] - 2
    if out_h < 1 or out_w < 1 or out_h * out_w < MIN_OUTPUTS or x.shape[0] * c * k * out_h * out_w * 9 < MIN_MACS:
        return False
    if weight_grad and c * k > MAX_WEIGHT_GRAD_CHANNELS:
        return False
    return plugin.get() is not None


def conv3x3(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], padding: Sequence[int]) -> torch.Tensor:
    """F.conv2d(x, w, b, padding=padding) for a stride-1 3x3 filter, through the kernel (see `usable`)."""
    ops = plugin.get()
    u = ops.winograd_weight(w.detach(), False)
    return ops.winograd_conv3x3(x, u, None if b is None else b.detach().float(), int(padding[0]), int(padding[1]))


def conv_transpose3x3(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                      padding: Sequence[int]) -> torch.Tensor:
    """F.conv_transpose2d(x, w, b, padding=padding) (stride 1, 3x3): the conv with the filter
    flipped, its channel axes swapped and padding 2 - p."""
    ops = plugin.get()
    u = ops.winograd_weight(w.detach(), True)
    bias = None if b is None else b.detach().float()
    return ops.winograd_conv3x3(x, u, bias, 2 - int(padding[0]), 2 - int(padding[1]))


def weight_grad3x3(grad_out: torch.Tensor, x: torch.Tensor, padding: Sequence[int]) -> torch.Tensor:
    """The weight gradient [K, C, 3, 3] of conv3x3(x, w, padding) for the output gradient
    `grad_out` (as aten.convolution_backward's), computed in the same transform domain."""
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    return plugin.get().winograd_weight_grad(grad_out, x, int(padding[0]), int(padding[1]))
