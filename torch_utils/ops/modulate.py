"""The per-sample channel scalings of a modulated convolution, with one-pass CPU kernels.

* `scale_channels(x, s)`: x [N,C,H,W] times s [N,C] (the style modulation of the conv's input).
  Its backward is again `scale_channels` (for x) and `channel_dot` (for s), so it is
  differentiable to any order.
* `channel_dot(a, b)`: sum over pixels of a * b, [N,C] (the style gradient).
* `modulated_epilogue(x, d, noise, bias, act, gain, clamp)`: what follows the conv in a
  synthesis layer, `bias_act(x * d[n,c] + noise, bias, act, gain=gain, clamp=clamp)`, in one pass
  forward and one backward (dx, d's, the noise's and the bias' gradients together).
* `skip_epilogue(x, bias, skip, clamp)`: what follows ToRGB's conv in a skip architecture,
  `bias_act(x, bias, clamp=clamp) + skip`, in one pass forward and one backward (at a
  tri-plane's 256x256x96 that is five passes over 100 MB forward instead of three).

On a CPU with float32 or bfloat16 activations (a bf16 block's, torch_utils/precision.py) in
NCHW or channels-last memory, and float32 styles, coefficients, noise and bias, the compiled
kernels (`modulate_cpu.cpp`, built on first use) run, summing in float32; elsewhere, and with
`impl='ref'`, plain torch ops.
They replace, per layer and step, six to eight passes over the activations by three.

The epilogue kernel's gradient is not differentiable again (no double backward through a
synthesis layer: nothing in training needs one, since R1 differentiates D alone); its
reductions are bitwise reproducible across thread counts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from torch_utils import misc
from torch_utils.ops import cpu_kernels
from torch_utils.ops import bias_act as bias_act_op
from torch_utils.ops import fma

__all__ = ["scale_channels", "channel_dot", "modulated_epilogue", "skip_epilogue"]

_plugin = cpu_kernels.plugin
_EPILOGUE_ACTS = {"linear": 0, "relu": 1, "lrelu": 2}


def _dense_layout(t: torch.Tensor) -> Optional[torch.memory_format]:
    if t.is_contiguous():
        return torch.contiguous_format
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def _module_for(x: torch.Tensor, *floats: torch.Tensor, like_x: Sequence[torch.Tensor] = (),
                bf16: bool = True):
    """The compiled module when every tensor is on the CPU, x is dense 4-D and float32 (or, with
    ``bf16``, bfloat16), ``floats`` are float32 and ``like_x`` have x's dtype."""
    if x.ndim != 4 or x.numel() == 0 or _dense_layout(x) is None:
        return None
    if x.dtype != torch.float32 and not (bf16 and x.dtype == torch.bfloat16):
        return None
    tensors = (x, *floats, *like_x)
    if any(t.device.type != "cpu" for t in tensors) or any(t.dtype != torch.float32 for t in floats):
        return None
    if any(t.dtype != x.dtype for t in like_x):
        return None
    return _plugin.get()


def _check_nc(x: torch.Tensor, s: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or s.shape != x.shape[:2]:
        raise ValueError(f"modulate: {name} must be [N,C] = {list(x.shape[:2])} for x of shape "
                         f"{tuple(x.shape)}, got {tuple(s.shape)}")


def scale_channels(x: torch.Tensor, s: torch.Tensor, impl: Optional[str] = None) -> torch.Tensor:
    """x [N,C,H,W] * s[:, :, None, None]."""
    _check_nc(x, s, "s")
    if impl is None and _module_for(x, s) is not None:
        return _ScaleChannels.apply(x, s)
    return x * s.to(x.dtype).reshape(*s.shape, 1, 1)


def channel_dot(a: torch.Tensor, b: torch.Tensor, impl: Optional[str] = None) -> torch.Tensor:
    """(a * b).sum over H and W: [N,C]."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"modulate: channel_dot needs two [N,C,H,W] tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if impl is None and _module_for(a, like_x=[b]) is not None:
        return _ChannelDot.apply(a, b)
    return (a * b).sum(dim=[2, 3])


class _ScaleChannels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, s)
        return _plugin.get().scale_channels(x, s.contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, s = ctx.saved_tensors
        dx = scale_channels(grad, s) if ctx.needs_input_grad[0] else None
        ds = channel_dot(misc.same_strides(grad, x), x) if ctx.needs_input_grad[1] else None
        return dx, ds


class _ChannelDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, b)
        return _plugin.get().channel_dot(a, misc.same_strides(b, a))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        da = scale_channels(b, grad) if ctx.needs_input_grad[0] else None
        db = scale_channels(a, grad) if ctx.needs_input_grad[1] else None
        return da, db


def modulated_epilogue(x: torch.Tensor, d: torch.Tensor, noise: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       act: str = "lrelu", gain: float = 1.0, clamp: Optional[float] = None,
                       impl: Optional[str] = None) -> torch.Tensor:
    """bias_act(x * d[:, :, None, None] + noise, bias, act, gain=gain, clamp=clamp).

    x: conv output [N,C,H,W]; d: demodulation coefficients [N,C]; noise: None or [N or 1,1,H,W] ([H,W]: shared);
    bias: None or [C]. The default alpha of `act` is used.
    """
    _check_nc(x, d, "d")
    n, c, h, w = x.shape
    if noise is not None and noise.ndim < 4:  # e.g. a constant [H,W] noise image
        noise = noise.reshape((1,) * (4 - noise.ndim) + tuple(noise.shape))
    if noise is not None and (noise.ndim != 4 or noise.shape[1] != 1 or noise.shape[2:] != x.shape[2:]
                              or noise.shape[0] not in (1, n)):
        raise ValueError(f"modulate: noise must be [N or 1,1,H,W] for x of shape {tuple(x.shape)}, "
                         f"got {tuple(noise.shape)}")
    clamp_value = -1.0 if clamp is None or clamp < 0 else float(clamp)
    floats = [t for t in (d, noise, bias) if t is not None]
    if impl is None and act in _EPILOGUE_ACTS and gain > 0 and _module_for(x, *floats) is not None:
        alpha = float(bias_act_op.activation_funcs[act].def_alpha)
        return _Epilogue.apply(x, d, noise, bias, (_EPILOGUE_ACTS[act], alpha, float(gain), clamp_value))
    scale = d.to(x.dtype).reshape(n, c, 1, 1)
    x = fma.fma(x, scale, noise.to(x.dtype)) if noise is not None else x * scale
    return bias_act_op.bias_act(x, None if bias is None else bias.to(x.dtype), act=act, gain=gain, clamp=clamp)


class _Epilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, d, noise, bias, cfg):  # type: ignore[override]
        act, alpha, gain, clamp = cfg
        n, _, h, w = x.shape
        empty = x.new_empty([0])
        noise_np = empty if noise is None else noise.reshape(-1, h * w).expand(n, h * w).contiguous()
        ctx.module = _plugin.get()  # kept: the backward must not depend on the switch's later state
        y = ctx.module.epilogue_forward(x, d.contiguous(), noise_np, empty if bias is None else bias.contiguous(),
                                        act, alpha, gain, clamp)
        ctx.cfg = cfg
        ctx.noise_shape = None if noise is None else noise.shape
        ctx.bias_none = bias is None
        ctx.save_for_backward(x, d, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, d, y = ctx.saved_tensors
        act, alpha, gain, clamp = ctx.cfg
        dx, dd, db, dnoise = ctx.module.epilogue_backward(misc.same_strides(grad, x), x, y, d.contiguous(), act, alpha,
                                                          gain, clamp)
        if ctx.bias_none:
            db = None
        if ctx.noise_shape is None:
            dnoise = None
        else:
            n, _, h, w = x.shape
            dnoise = dnoise.reshape(n, 1, h, w)
            if ctx.noise_shape[0] == 1 and n != 1:
                dnoise = dnoise.sum(dim=0, keepdim=True)
        return dx, dd, dnoise, db, None


def skip_epilogue(x: torch.Tensor, bias: torch.Tensor, skip: Optional[torch.Tensor], clamp: Optional[float] = None,
                  impl: Optional[str] = None) -> torch.Tensor:
    """bias_act(x, bias, clamp=clamp) + skip; x [N,C,H,W], bias [C], skip None or x's shape.

    The sum takes the skip image's dtype and memory layout (the skip image is the running
    output of a skip architecture; x may be a float16 or bfloat16 conv output). The CPU
    kernel also takes bfloat16 x with a float32 skip, and computes in float32.
    """
    if skip is not None and skip.shape != x.shape:
        raise ValueError(f"modulate: skip must have x's shape {tuple(x.shape)}, got {tuple(skip.shape)}")
    clamp_value = -1.0 if clamp is None or clamp < 0 else float(clamp)
    floats = [bias] if skip is None else [bias, skip]
    if (impl is None and _module_for(x, *floats, bf16=skip is not None) is not None
            and (skip is None or skip.stride() == x.stride())):
        return _SkipEpilogue.apply(x, bias, skip, clamp_value)
    y = bias_act_op.bias_act(x, bias.to(x.dtype), clamp=clamp)
    if skip is None:
        return y
    return skip + y.to(dtype=skip.dtype, memory_format=_dense_layout(skip) or torch.contiguous_format)


class _SkipEpilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, skip, clamp):  # type: ignore[override]
        ctx.module = _plugin.get()  # kept: the backward must not depend on the switch's later state
        ctx.clamp, ctx.has_skip = clamp, skip is not None
        ctx.save_for_backward(x, bias)
        return ctx.module.skip_epilogue_forward(x, bias.contiguous(), x.new_empty([0]) if skip is None else skip,
                                                clamp)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        grad = misc.same_strides(grad, x)
        if ctx.clamp < 0:  # no clamp: the bias' gradient is a plain sum, and dx is grad itself
            dx, db = grad.to(x.dtype), grad.sum(dim=[0, 2, 3])
        else:
            dx, db = ctx.module.skip_epilogue_backward(grad, x, bias.contiguous(), ctx.clamp)
        return dx, db, grad if ctx.has_skip else None, None
