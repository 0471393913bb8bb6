"""ToRGB of StyleGAN2's skip architecture as one op, with a one-pass CPU kernel.

`modulated_torgb(x, weight, styles, bias, skip, skip_filter, clamp)` is

    y = clamp(conv1x1(x * styles[:, :, None, None], weight) + bias, -clamp, clamp) + up(skip)

where ``up`` is `upfirdn2d.upsample2d(skip, skip_filter)` when ``skip_filter`` is given (the
skip image of the block below, at half the resolution) and the identity otherwise: a
modulated 1x1 convolution without demodulation, ToRGB's bias and clamp, and the running skip
sum. In a tri-plane generator this layer writes the largest tensor of the backbone (the
256x256x96 tri-planes); unfused it is about five passes over it, the kernel
(`torgb_cpu.cpp`) makes it in one.

The kernel runs on a CPU for float32 tensors, output channels a multiple of 16 (tri-plane
channels; an RGB ToRGB keeps the plain path) and a separable 4-tap filter (StyleGAN2's
[1, 3, 3, 1]). It walks channels-last memory, the networks' CPU activation layout in training;
NCHW x or skip (inference's grouped convs) are copied to it first. Its output is channels-last.
Elsewhere, and with ``impl='ref'``, the same function runs as plain torch ops
(`modulated_torgb_ref`).

Gradients: one more kernel pass over the output gradient computes all of them: x's (the
product with the per-sample weight W * s), that weight's (summed over pixels in fixed groups of
rows, so bitwise the same for any thread count; the weight's and the styles' follow from it),
the bias', and the skip's (the adjoint of the upsampling). Where x's channels are not a
multiple of 16, x's and the weight's come from two batched matmuls instead. Clamped elements
get no gradient through the convolution, as with torch.clamp; the forward counts them, and
only when there are any (the clamp is a safety bound that trained networks rarely reach) does
the backward recompute the convolution's output to mask them. The backward is not
differentiable again (no double backward through ToRGB; nothing in training needs one, as
with `modulate.skip_epilogue`).
"""

from __future__ import annotations

import functools
from typing import ContextManager, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from torch_utils import misc
from torch_utils.ops import conv2d_gradfix, cpu_kernels, upfirdn2d

__all__ = ["modulated_torgb", "modulated_torgb_ref", "try_kernel", "kernel_applies", "state", "enabled"]

_plugin = cpu_kernels.plugin
_LANES = 16  # the kernel's output channels come in vectors of 16


class _TorgbState:
    """The switch of this module (one object instead of a loose module global)."""

    def __init__(self) -> None:
        self.enabled: bool = True  # False: the networks take the unfused path (`bench/step.py --compare-torgb`)


state = _TorgbState()


def enabled(flag: bool) -> ContextManager[None]:
    """Within the block, `kernel_applies` answers False when ``flag`` is False (the unfused path runs)."""
    return misc.attribute_set(state, "enabled", bool(flag))


def modulated_torgb_ref(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                        skip: Optional[torch.Tensor] = None, skip_filter: Optional[torch.Tensor] = None,
                        clamp: Optional[float] = None) -> torch.Tensor:
    """The op in plain torch ops (any device and dtype; differentiable to any order)."""
    y = F.conv2d(x * styles.to(x.dtype)[:, :, None, None], weight.to(x.dtype)) + bias.to(x.dtype)[None, :, None, None]
    if clamp is not None and clamp >= 0:
        y = y.clamp(-clamp, clamp)
    if skip is None:
        return y
    if skip_filter is not None:
        skip = upfirdn2d.upsample2d(skip, skip_filter, impl="ref")
    return y + skip


@functools.lru_cache(maxsize=16)
def _taps_of(filter_values: Tuple[float, ...]) -> Optional[Tuple[float, float, float, float]]:
    """(e0, e1, o0, o1) of `upfirdn2d.upsample2d` with this 1-D filter, or None if they do not describe it.

    Along each axis output 2i is e0 * s[i-1] + e1 * s[i] and output 2i+1 is o0 * s[i] + o1 * s[i+1].
    The taps are read off upsample2d itself, so that the kernel follows its conventions (flip,
    padding, gain) by construction: the response to a centred impulse in a 3x3 image is
    t[Y] * t[X] with t = [0, o1, e1, o0, e0, 0] (rows sum to t[X] * sum(t), and the sum of all
    is sum(t)^2).
    """
    if len(filter_values) != 4:
        return None
    impulse = torch.zeros([1, 1, 3, 3], dtype=torch.float64)
    impulse[..., 1, 1] = 1
    f = torch.tensor(filter_values, dtype=torch.float64)
    response = upfirdn2d.upsample2d(impulse, f, impl="ref")[0, 0]
    total = float(response.sum())
    if response.shape != (6, 6) or total <= 0:
        return None
    t = response.sum(dim=0) / total ** 0.5
    if not torch.allclose(response, torch.outer(t, t), atol=1e-12) or t[0] != 0 or t[5] != 0:
        return None
    return float(t[4]), float(t[2]), float(t[3]), float(t[1])


def _skip_taps(skip_filter: torch.Tensor) -> Optional[Tuple[float, float, float, float]]:
    if skip_filter.ndim != 1 or skip_filter.numel() != 4:
        return None
    return _taps_of(tuple(float(v) for v in skip_filter.detach().cpu().double()))


def _kernel_taps(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                 skip: Optional[torch.Tensor], skip_filter: Optional[torch.Tensor]) -> Optional[tuple]:
    """None where the kernel does not apply, else the skip's upsampling taps (() without upsampling)."""
    if not state.enabled or _plugin.get() is None:
        return None
    tensors = [x, weight, styles, bias] + ([] if skip is None else [skip])
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if x.ndim != 4 or x.numel() == 0 or weight.ndim != 4 or weight.shape[2:] != (1, 1) or weight.shape[0] % _LANES:
        return None
    return () if skip is None or skip_filter is None else _skip_taps(skip_filter)


def kernel_applies(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                   skip: Optional[torch.Tensor] = None, skip_filter: Optional[torch.Tensor] = None) -> bool:
    """Whether `modulated_torgb` runs these arguments through the CPU kernel (see the module docstring)."""
    return _kernel_taps(x, weight, styles, bias, skip, skip_filter) is not None


def try_kernel(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
               skip: Optional[torch.Tensor] = None, skip_filter: Optional[torch.Tensor] = None,
               clamp: Optional[float] = None) -> Optional[torch.Tensor]:
    """`modulated_torgb` through the CPU kernel, or None where it does not apply (the caller then
    takes its own unfused path: `ToRGBLayer` its scaling, conv and epilogue ops)."""
    _check(x, weight, styles, bias, skip, skip_filter)
    taps = _kernel_taps(x, weight, styles, bias, skip, skip_filter)
    if taps is None:
        return None
    # The kernel walks channels-last memory (the networks' training layout on a CPU; their
    # inference path, grouped convs, hands over NCHW, which costs one copy here).
    x = x.contiguous(memory_format=torch.channels_last)
    skip = None if skip is None else skip.contiguous(memory_format=torch.channels_last)
    clamp_value = -1.0 if clamp is None or clamp < 0 else float(clamp)
    return _TorgbCpu.apply(x, weight, styles, bias, skip, taps or None, clamp_value)


def modulated_torgb(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
                    skip: Optional[torch.Tensor] = None, skip_filter: Optional[torch.Tensor] = None,
                    clamp: Optional[float] = None, impl: Optional[str] = None) -> torch.Tensor:
    """clamp(conv1x1(x * styles, weight) + bias) + skip, upsampled 2x with ``skip_filter`` if given.

    x [N,C,H,W], weight [K,C,1,1], styles [N,C], bias [K]; skip None, [N,K,H,W], or with
    ``skip_filter`` (a `upfirdn2d.setup_filter` filter) [N,K,H/2,W/2]; clamp None for none.
    The result is [N,K,H,W], channels-last from the kernel.
    """
    if impl not in (None, "ref"):
        raise ValueError(f"modulated_torgb: impl must be None or 'ref', got {impl!r}")
    y = try_kernel(x, weight, styles, bias, skip, skip_filter, clamp) if impl is None else None
    if y is not None:
        return y
    _check(x, weight, styles, bias, skip, skip_filter)
    return modulated_torgb_ref(x, weight, styles, bias, skip, skip_filter, clamp)


def _check(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
           skip: Optional[torch.Tensor], skip_filter: Optional[torch.Tensor]) -> None:
    if x.ndim != 4 or weight.ndim != 4 or weight.shape[1] != x.shape[1] or weight.shape[2:] != (1, 1):
        raise ValueError(f"modulated_torgb: need x [N,C,H,W] and weight [K,C,1,1], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if styles.shape != x.shape[:2] or bias.shape != weight.shape[:1]:
        raise ValueError(f"modulated_torgb: styles must be {list(x.shape[:2])} and bias [{weight.shape[0]}], got "
                         f"{tuple(styles.shape)} and {tuple(bias.shape)}")
    if skip is not None:
        f = 2 if skip_filter is not None else 1
        want = (x.shape[0], weight.shape[0], x.shape[2] // f, x.shape[3] // f)
        if tuple(skip.shape) != want or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"modulated_torgb: skip must be {list(want)}"
                             f"{' (half of x, to be upsampled)' if f == 2 else ''}, got {tuple(skip.shape)}")


class _TorgbCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, styles, bias, skip, taps, clamp):  # type: ignore[override]
        ctx.module = _plugin.get()  # kept: the backward must not depend on the switch's later state
        taps_t = x.new_tensor(taps) if taps is not None else x.new_empty([0])
        y, clamped = ctx.module.torgb_forward(x, weight.reshape(weight.shape[0], -1), styles, bias,
                                              x.new_empty([0]) if skip is None else skip, taps_t, clamp)
        ctx.save_for_backward(x, weight, styles, bias, taps_t)
        ctx.has_skip, ctx.clamp, ctx.clamped = skip is not None, clamp, clamped
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, styles, bias, taps_t = ctx.saved_tensors
        g = grad.contiguous(memory_format=torch.channels_last)
        k, c = weight.shape[0], x.shape[1]
        w2 = weight.reshape(k, c)
        mask_clamp = ctx.clamp if ctx.clamped else -1.0
        if c % _LANES == 0:  # one pass over g for everything
            dx, dwn, db, dskip = ctx.module.torgb_backward(g, x, w2, styles, bias, taps_t, mask_clamp)
        else:
            dx, dwn, db, dskip = _backward_with_matmuls(ctx.module, g, x, w2, styles, bias, taps_t, mask_clamp)
        if not ctx.has_skip:
            dskip = None
        elif not taps_t.numel():
            dskip = g  # a same-size skip image is added as it is
        dweight = dstyles = None
        if ctx.needs_input_grad[1] and not conv2d_gradfix.state.weight_gradients_disabled:
            layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) \
                and not weight.is_contiguous() else torch.contiguous_format
            dweight = (dwn * styles[:, :, None]).sum(dim=0).t().reshape(weight.shape).to(memory_format=layout)
        if ctx.needs_input_grad[2]:
            dstyles = (dwn * w2.t()[None]).sum(dim=2)
        return dx, dweight, dstyles, db, dskip, None, None


def _backward_with_matmuls(module, g: torch.Tensor, x: torch.Tensor, w2: torch.Tensor, styles: torch.Tensor,
                           bias: torch.Tensor, taps_t: torch.Tensor, mask_clamp: float):
    """torgb_backward's results for any channel count: the skip's and bias' gradients from one
    kernel pass, x's and the per-sample weight's from two batched matmuls with W * s."""
    n, c, h, w = x.shape
    k = w2.shape[0]
    dskip = db = None
    if taps_t.numel():
        dskip, db = module.torgb_skip_backward(g, taps_t)
    g3 = g.permute(0, 2, 3, 1).reshape(n, h * w, k)  # a view: g is channels-last
    x3 = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
    wn = w2.t()[None] * styles[:, :, None]  # [N,C,K]: the per-sample weight
    if mask_clamp >= 0:  # mask the elements the clamp cut (their gradient stops before the conv)
        pre = torch.baddbmm(bias.view(1, 1, k), x3, wn)
        g3 = g3 * (pre.abs() <= mask_clamp).to(g3.dtype)
        db = None
    if db is None:
        db = g3.sum(dim=[0, 1])
    dx = torch.bmm(g3, wn.transpose(1, 2)).view(n, h, w, c).permute(0, 3, 1, 2)
    dwn = torch.bmm(x3.transpose(1, 2), g3)
    return dx, dwn, db, dskip
