"""Fused bias + activation + gain + clamp, with a reference PyTorch path and a CUDA kernel path.

    y = clamp(act(x + b, alpha) * gain, -clamp, clamp)

where b is broadcast along dimension `dim` of x. Both paths are twice differentiable (R1
regularisation differentiates the discriminator's input gradient). The CUDA path uses the
kernels of bias_act.cu for the value, the first derivative and the second derivative; third
and higher derivatives through the CUDA path are not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from dnnlib.util import EasyDict
from torch_utils import misc
from torch_utils.custom_ops import CudaPlugin
from torch_utils.ops import cpu_kernels

__all__ = ["activation_funcs", "bias_act"]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _elu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # expm1 of min(x, 0): the unused branch never overflows, so its zero gradient stays finite.
    return torch.where(x > 0, x, alpha * torch.expm1(x.clamp(max=0)))


def _ref_funcs() -> dict[str, Callable[[torch.Tensor, float], torch.Tensor]]:
    return {
        "linear": lambda x, _: x,
        "relu": lambda x, _: torch.relu(x),
        "lrelu": lambda x, alpha: torch.where(x > 0, x, x * alpha),
        "tanh": lambda x, _: torch.tanh(x),
        "sigmoid": lambda x, _: torch.sigmoid(x),
        "elu": _elu,
        "selu": lambda x, alpha: _SELU_SCALE * _elu(x, alpha),
        "softplus": lambda x, _: torch.logaddexp(x, torch.zeros_like(x)),
        "swish": lambda x, _: x * torch.sigmoid(x),
    }


def _make_table() -> dict[str, EasyDict]:
    # (default alpha, default gain, nonzero 2nd derivative, kernel code, what the CUDA backward reads)
    # ref 'y': the derivative follows from the output's sign, so the (often larger-lived) input
    # need not be kept alive; ref 'x': it is recomputed from the saved input and bias.
    rows = {
        "linear": (0.0, 1.0, False, 0, "y"),
        "relu": (0.0, math.sqrt(2), False, 1, "y"),
        "lrelu": (0.2, math.sqrt(2), False, 2, "y"),
        "tanh": (0.0, 1.0, True, 3, "x"),
        "sigmoid": (0.0, 1.0, True, 4, "x"),
        "elu": (1.0, 1.0, True, 5, "x"),
        "selu": (_SELU_ALPHA, 1.0, True, 6, "x"),
        "softplus": (0.0, 1.0, True, 7, "x"),
        "swish": (0.0, 1.0, True, 8, "x"),
    }
    funcs = _ref_funcs()
    return {
        name: EasyDict(func=funcs[name], def_alpha=a, def_gain=g, has_2nd_grad=h, cuda_index=i, ref=r)
        for name, (a, g, h, i, r) in rows.items()
    }


#: Activation records: func(x, alpha), def_alpha, def_gain, has_2nd_grad, cuda_index, ref.
activation_funcs: dict[str, EasyDict] = _make_table()

_plugin = CudaPlugin("bias_act_plugin", sources=["bias_act.cpp", "bias_act.cu"], headers=["bias_act.h"])
_cpu_plugin = cpu_kernels.plugin

# Kernel modes; must match `bias_act::Mode` in bias_act.h.
_FORWARD, _GRAD_FROM_X, _GRAD_FROM_Y, _GRAD2_FROM_X = 0, 1, 2, 3
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Adds bias `b` along `dim`, applies `act`, scales by `gain`, clamps to [-clamp, clamp].

    Args:
        x: input tensor of any shape (floating point).
        b: optional 1-D bias with x.shape[dim] elements.
        dim: dimension of x that b runs along.
        act: one of activation_funcs (linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish).
        alpha: activation parameter (lrelu slope, elu/selu alpha); None means the default.
        gain: scale after the activation; None means the default (sqrt(2) for relu/lrelu, else 1).
        clamp: bound applied after gain; None or negative means no clamp.
        impl: None (CUDA kernel when x is on a GPU and the plugin builds; on CPU a fused
            in-place path for linear/relu/lrelu with gain > 0; else reference),
            'ref' (plain PyTorch) or 'cuda'.
    """
    spec, dim, alpha, gain, clamp = _check_args(x, b, dim, act, alpha, gain, clamp, impl)
    if impl == "cuda" and not x.is_cuda:
        raise ValueError(f"bias_act: impl='cuda' needs x on a CUDA device, got x on {x.device}")
    if impl != "ref" and x.is_cuda and x.dtype in _CUDA_DTYPES and x.numel() > 0:
        module = _plugin.get()
        if module is not None:
            cfg = _CudaConfig.make(act, spec, dim, alpha, gain, clamp, module.bias_act)
            return _bias_act_cuda(x, b, cfg)
    if impl is None and x.device.type == "cpu" and act in _CPU_ACTS and gain > 0 and alpha >= 0 and x.numel() > 0:
        return _bias_act_cuda(x, b, _CudaConfig.make(act, spec, dim, alpha, gain, clamp, _cpu_kernel))
    return _bias_act_ref(x, b, dim, spec, alpha, gain, clamp)


def _check_args(x, b, dim, act, alpha, gain, clamp, impl) -> tuple[EasyDict, int, float, float, float]:
    """Validates the arguments; returns the activation record and the resolved dim/alpha/gain/clamp."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"bias_act: x must be a floating-point tensor, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}".rstrip())
    if act not in activation_funcs:
        raise ValueError(f"bias_act: unknown act {act!r}; valid: {', '.join(activation_funcs)}")
    if impl not in (None, "ref", "cuda"):
        raise ValueError(f"bias_act: impl must be None, 'ref' or 'cuda', got {impl!r}")
    if b is None:
        dim = 0  # unused without a bias
    else:
        if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
            raise ValueError(f"bias_act: dim={dim!r} is out of range for x of shape {tuple(x.shape)}")
        dim = dim % x.ndim
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ValueError(f"bias_act: b must be 1-D with x.shape[dim]={x.shape[dim]} elements "
                             f"(x: {tuple(x.shape)}, dim={dim}), got b of shape {got}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}")
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = -1.0 if clamp is None or clamp < 0 else float(clamp)
    return spec, dim, alpha, gain, clamp


def _bias_act_ref(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, spec: EasyDict,
                  alpha: float, gain: float, clamp: float) -> torch.Tensor:
    """Plain PyTorch; autograd supplies derivatives of every order."""
    if b is not None:
        x = x + b.reshape([-1 if d == dim else 1 for d in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# CPU fast path for the piecewise-linear activations: the kernel contract of the CUDA path
# (forward and derivative-from-output modes), met by the C++ kernel of bias_act_cpu.cpp (one
# pass over memory per call) for float32 and bfloat16, else by in-place torch ops (three passes instead of
# five allocating ones). Either way the backward reads only y.

_CPU_ACTS = ("linear", "relu", "lrelu")


def _cpu_kernel(x, b, y, g, mode, act_index, dim, alpha, gain, clamp, stream):
    """CPU stand-in for the plugin's bias_act (linear/relu/lrelu with gain > 0; modes 0 and 2)."""
    del stream
    lay = x if mode == _FORWARD else y
    if lay.dtype in (torch.float32, torch.bfloat16) and (mode == _FORWARD or g.dtype == y.dtype):
        module = _cpu_plugin.get()
        if module is not None:
            return module.bias_act_cpu(x, b, y, g, mode, act_index, dim, alpha, gain, clamp)
    return _cpu_kernel_torch(x, b, y, g, mode, act_index, dim, alpha, gain, clamp)


def _cpu_kernel_torch(x, b, y, g, mode, act_index, dim, alpha, gain, clamp):
    """The same contract with in-place torch ops (any float dtype; used without the C++ kernel)."""
    act = ("linear", "relu", "lrelu")[act_index]
    if mode == _FORWARD:
        if b.numel() > 0:
            shape = [-1 if d == dim else 1 for d in range(x.ndim)]
            out = torch.add(b.reshape(shape) * gain, x, alpha=gain)  # (x + b) * gain in one pass
        else:
            out = x * gain
        # act(z) * gain == act(z * gain) for these activations when gain > 0.
        if act == "relu":
            out.relu_()
        elif act == "lrelu":
            torch.nn.functional.leaky_relu_(out, alpha)
        if clamp >= 0:
            out.clamp_(-clamp, clamp)
        return out
    if mode != _GRAD_FROM_Y:
        raise ValueError(f"bias_act CPU kernel: mode {mode} is not supported")
    # Clamped outputs had no gradient: |y| < clamp tells them apart (as the CUDA kernel does).
    dx = torch.ops.aten.hardtanh_backward(g, y, -clamp, clamp) if clamp >= 0 else g
    if act == "relu":
        dx = torch.ops.aten.threshold_backward(dx, y, 0.0)
    elif act == "lrelu":
        dx = torch.ops.aten.leaky_relu_backward(dx, y, alpha, True)
    return dx * gain if gain != 1 else (dx if dx is not g else dx.clone())


# ---------------------------------------------------------------------------------------------
# CUDA path


@dataclass(frozen=True)
class _CudaConfig:
    """Everything the autograd Functions need besides tensors; `kernel` has the plugin's signature."""

    act_index: int
    dim: int
    alpha: float
    gain: float
    clamp: float
    has_2nd_grad: bool
    save: str  # 'x', 'y' or 'none': what the backward reads
    kernel: Callable[..., torch.Tensor]

    @staticmethod
    def make(act: str, spec: EasyDict, dim: int, alpha: float, gain: float, clamp: float,
             kernel: Callable[..., torch.Tensor]) -> "_CudaConfig":
        save = spec.ref
        if act == "linear" and clamp < 0:
            save = "none"  # the derivative is the constant gain
        elif act == "lrelu" and alpha < 0:
            save = "x"  # a negative slope makes the output's sign ambiguous
        return _CudaConfig(spec.cuda_index, dim, alpha, gain, clamp, spec.has_2nd_grad, save, kernel)

    def launch(self, mode: int, x: torch.Tensor, b: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        lay = y if mode == _GRAD_FROM_Y else x
        stream = torch.cuda.current_stream(lay.device).cuda_stream if lay.is_cuda else 0
        return self.kernel(x, b, y, misc.same_strides(g, lay), mode, self.act_index, self.dim,
                           self.alpha, self.gain, self.clamp, stream)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when its memory is one dense block (contiguous or channels-last), else a copy."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Gradient of a bias broadcast along `dim`: sum over every other dimension."""
    other = [d for d in range(t.ndim) if d != dim]
    return t.sum(dim=other) if other else t


def _bias_act_cuda(x: torch.Tensor, b: Optional[torch.Tensor], cfg: _CudaConfig) -> torch.Tensor:
    # Layout and dtype fixes happen here, outside the Function, so autograd tracks them and the
    # tensors saved for backward stay connected to the caller's graph (needed for double backward).
    x = _dense(x)
    if b is not None:
        b = b.to(x.dtype).contiguous()
    return _BiasActCuda.apply(x, b, cfg)


def _empty(like: torch.Tensor) -> torch.Tensor:
    """Stands for "not used" in kernel arguments and saved tensors."""
    return torch.empty([0], dtype=like.dtype, device=like.device)


class _BiasActCuda(torch.autograd.Function):
    """y = bias_act(x, b) by the kernel; backward through _BiasActCudaGrad (itself differentiable)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, b: Optional[torch.Tensor], cfg: _CudaConfig) -> torch.Tensor:
        empty = _empty(x)
        b_ = empty if b is None else b
        y = cfg.launch(_FORWARD, x, b_, empty, empty)
        ctx.cfg = cfg
        ctx.has_b = b is not None
        ctx.save_for_backward(x if cfg.save == "x" else empty, b_ if cfg.save == "x" else empty,
                              y if cfg.save == "y" else empty)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, b, y = ctx.saved_tensors
        cfg: _CudaConfig = ctx.cfg
        if cfg.save == "none":
            dx = dy * cfg.gain if cfg.gain != 1 else dy
        else:
            dx = _BiasActCudaGrad.apply(dy, x, b, y, cfg)
        db = _sum_except(dx, cfg.dim) if ctx.has_b and ctx.needs_input_grad[1] else None
        return dx, db, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dx = dy * gain * act'(x + b) * clamp_mask by the kernel, from the saved x (and b) or y."""

    @staticmethod
    def forward(ctx, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor, y: torch.Tensor,
                cfg: _CudaConfig) -> torch.Tensor:
        mode = _GRAD_FROM_X if cfg.save == "x" else _GRAD_FROM_Y
        dx = cfg.launch(mode, x, b, y, dy)
        ctx.cfg = cfg
        ctx.save_for_backward(dy if cfg.has_2nd_grad else _empty(dy), x, b, y)
        return dx

    @staticmethod
    def backward(ctx, d_dx: torch.Tensor):
        dy, x, b, y = ctx.saved_tensors
        cfg: _CudaConfig = ctx.cfg
        # dx is linear in dy, so its derivative w.r.t. dy is this same Function applied to d_dx.
        d_dy = _BiasActCudaGrad.apply(d_dx, x, b, y, cfg) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if cfg.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            # d(dx)/dx = dy * gain * act''(x + b) * mask; computed once, not differentiable further.
            d_x = cfg.launch(_GRAD2_FROM_X, x, b, y, d_dx * dy)
            if b.numel() > 0 and ctx.needs_input_grad[2]:
                d_b = _sum_except(d_x, cfg.dim)
        return d_dy, d_x, d_b, None, None
