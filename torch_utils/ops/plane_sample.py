"""Mean over P feature planes of their bilinear samples at per-plane grids, with CPU and CUDA kernels.

    out[b, m, :] = mean_p  grid_sample(planes[b, p], grid[b, p, m])          -> [B, M, C]

Bilinear, zeros padding, align_corners=False (exactly `F.grid_sample`'s convention), for
planes [B, P, C, H, W] and grid [B, P, M, 2] in [-1, 1] (x along W, y along H). This is the
tri-plane decoder's input (P = 3).

`impl`:
* None: a kernel for float32 tensors when the grid needs no gradient and the kernel's plugin
  builds: `plane_sample_cpu.cpp` on a CPU, `plane_sample.cu` on a GPU (except under
  `torch.use_deterministic_algorithms(True)`: its backward adds with atomics, in no fixed
  order); else the reference path.
* 'ref': `grid_sample_gradfix.grid_sample` on the P planes, then the mean: twice
  differentiable, any device and dtype, gradients for the grid too.

The kernels' gradient reaches the planes only and is not differentiable again (no double
backward through it: nothing in training needs one, since R1 differentiates D alone). Their
sums run in a different order from torch's kernels, so values agree to float rounding.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from torch_utils.custom_ops import CudaPlugin
from torch_utils.ops import cpu_kernels
from torch_utils.ops import grid_sample_gradfix

__all__ = ["sample_mean", "sample_mean_ref"]

_plugin = cpu_kernels.plugin
_cuda_plugin = CudaPlugin("plane_sample_plugin", sources=["plane_sample.cpp", "plane_sample.cu"],
                          headers=["plane_sample.h"])


def sample_mean(planes: torch.Tensor, grid: torch.Tensor, impl: Optional[str] = None) -> torch.Tensor:
    """planes [B,P,C,H,W], grid [B,P,M,2] -> the mean over P of the bilinear samples, [B,M,C]."""
    _check(planes, grid, impl)
    if impl is None and _kernel_applies(planes, grid):
        if planes.device.type == "cpu":
            module = _plugin.get()
            if module is not None:
                return _SampleMeanCpu.apply(planes, grid.contiguous(), module)
        elif not torch.are_deterministic_algorithms_enabled():
            module = _cuda_plugin.get()
            if module is not None:
                return _SampleMeanCuda.apply(planes, grid.contiguous(), module)
    return sample_mean_ref(planes, grid)


def sample_mean_ref(planes: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The same with torch's grid_sample (through grid_sample_gradfix), differentiable twice."""
    b, p, c, h, w = planes.shape
    if planes.stride(0) != p * planes.stride(1):
        # Planes interleaved in memory (tri-planes viewed from a channels-last [B, P*C, H, W]):
        # merging B and P would copy them all, so sample one plane at a time, in place.
        out = sum(grid_sample_gradfix.grid_sample(planes[:, i], grid[:, i, :, None]) for i in range(p))
        return (out[..., 0] / p).transpose(1, 2)  # [B,M,C]
    out = grid_sample_gradfix.grid_sample(planes.reshape(b * p, c, h, w), grid.reshape(b * p, -1, 1, 2))
    return out.reshape(b, p, c, -1).mean(dim=1).transpose(1, 2)  # [B,M,C]


def _check(planes: torch.Tensor, grid: torch.Tensor, impl: Optional[str]) -> None:
    if impl not in (None, "ref"):
        raise ValueError(f"plane_sample: impl must be None or 'ref', got {impl!r}")
    if planes.dim() != 5:
        raise ValueError(f"plane_sample: planes must be [B,P,C,H,W], got {tuple(planes.shape)}")
    if grid.dim() != 4 or grid.shape[-1] != 2 or tuple(grid.shape[:2]) != tuple(planes.shape[:2]):
        raise ValueError(f"plane_sample: grid must be [B,P,M,2] with the planes' B and P "
                         f"{tuple(planes.shape[:2])}, got {tuple(grid.shape)}")
    if grid.device != planes.device:
        raise ValueError(f"plane_sample: grid is on {grid.device} but planes are on {planes.device}")


def _kernel_applies(planes: torch.Tensor, grid: torch.Tensor) -> bool:
    return (planes.device.type in ("cpu", "cuda") and planes.dtype == torch.float32 and grid.dtype == torch.float32
            and not grid.requires_grad and planes.numel() > 0 and grid.shape[2] > 0)


class _SampleMeanCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, planes: torch.Tensor, grid: torch.Tensor, module) -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        ctx.save_for_backward(planes, grid)
        return module.sample_mean_forward(planes, grid)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        planes, grid = ctx.saved_tensors
        grad_planes = None
        if ctx.needs_input_grad[0]:
            grad_planes = ctx.module.sample_mean_backward(grad_out, planes, grid)
        return grad_planes, None, None


class _SampleMeanCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, planes: torch.Tensor, grid: torch.Tensor, module) -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        ctx.plane_shape = tuple(planes.shape[2:])  # (C, H, W); the backward needs no plane values
        ctx.save_for_backward(grid)
        return module.sample_mean_forward(planes, grid, torch.cuda.current_stream(planes.device).cuda_stream)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grid,) = ctx.saved_tensors
        grad_planes = None
        if ctx.needs_input_grad[0]:
            stream = torch.cuda.current_stream(grid.device).cuda_stream
            grad_planes = ctx.module.sample_mean_backward(grad_out, grid, *ctx.plane_shape, stream)
        return grad_planes, None, None
