"""Bilinear grid_sample (align_corners=False) whose gradients can be differentiated again.

`grid_sample(input, grid, padding_mode)` equals `F.grid_sample(input, grid, mode='bilinear',
padding_mode=padding_mode, align_corners=False)` for padding_mode 'zeros' (the tri-plane
sampler), 'border' or 'reflection' (the ADA warp). Torch's own grid_sampler_2d_backward has
no derivative in torch 2.11 (2.13 has one), so R1 through augmented reals needs this module.
Its backward is a custom Function (`_GridSampleBackwardFn`) that computes (grad_input,
grad_grid) with `aten.grid_sampler_2d_backward`, and whose own backward supplies the
second-order terms:

Terms from a loss on grad_input (the common case, e.g. R1 or path-length penalties that
flow back through sampled feature planes), computed in closed form with the same aten ops
and therefore differentiable again:
    d/d grad_output = grid_sample(gg_input, grid)
    d/d input       = 0                       (grad_input does not depend on input)
    d/d grid        = grad_grid of grid_sample(gg_input, grid) for upstream grad_output

Terms from a loss on grad_grid (needed only when a loss contains d/d grid): computed by
differentiating a pure-PyTorch bilinear sampler (`grid_sample_ref`) with autograd. They are
correct to second order but are not differentiable a third time, and are slower.

Bilinear sampling is only piecewise smooth: derivatives at grid points that fall exactly on
pixel centres (or, with border/reflection padding, exactly on the clamping and reflection
edges) are one-sided, as in torch's own kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["grid_sample", "grid_sample_ref", "state"]

_BILINEAR, _ALIGN_CORNERS = 0, False
_PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}  # aten's GridSamplerPadding enum


class _GridSampleState:
    """Switches of this module, held in one object."""

    def __init__(self) -> None:
        self.enabled: bool = True  # False: plain F.grid_sample.


state = _GridSampleState()


def grid_sample(input: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear, align_corners=False sampling of input [N,C,H,W] at grid [N,Ho,Wo,2] in [-1,1].

    padding_mode: 'zeros', 'border' or 'reflection', as in F.grid_sample.
    """
    if input.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid_sample expects input [N,C,H,W] and grid [N,Ho,Wo,2], got "
                         f"input {tuple(input.shape)} and grid {tuple(grid.shape)}")
    padding = _padding_code(padding_mode)
    if not state.enabled:
        return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return _GridSampleFn.apply(input, grid, padding)


def _padding_code(padding_mode: str) -> int:
    if padding_mode not in _PADDING_CODES:
        raise ValueError(f"grid_sample: padding_mode must be one of {sorted(_PADDING_CODES)}, got {padding_mode!r}")
    return _PADDING_CODES[padding_mode]


def grid_sample_ref(input: torch.Tensor, grid: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """The same sampling written with gathers, so plain autograd can differentiate it to any order."""
    padding = _padding_code(padding_mode)
    n, c, h, w = input.shape
    # align_corners=False: -1 and 1 are the outer edges of the border pixels.
    ix = _pad_coordinates(((grid[..., 0] + 1) * w - 1) / 2, w, padding)
    iy = _pad_coordinates(((grid[..., 1] + 1) * h - 1) / 2, h, padding)
    x0, y0 = ix.detach().floor(), iy.detach().floor()
    fx, fy = ix - x0, iy - y0
    flat = input.reshape(n, c, h * w)
    out = 0
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(n, 1, -1).expand(n, c, -1)
        values = flat.gather(2, index).reshape(n, c, *ix.shape[1:])
        out = out + values * (weight * inside).unsqueeze(1)
    return out


def _pad_coordinates(coord: torch.Tensor, size: int, padding: int) -> torch.Tensor:
    """Pixel coordinates after border or reflection padding (align_corners=False), differentiably.

    Reflection mirrors about the outer pixel edges -0.5 and size - 0.5 (repeatedly, for points
    far outside), then both modes clamp to the pixel centres [0, size-1]: a sample there reads
    the border pixel alone, which is what the padded image holds.
    """
    if padding == _PADDING_CODES["zeros"]:
        return coord
    if padding == _PADDING_CODES["reflection"]:
        shifted = (coord + 0.5).abs()
        flips = torch.div(shifted.detach(), size, rounding_mode="floor")
        extra = shifted - flips * size
        coord = torch.where(flips.remainder(2) == 0, extra, size - extra) - 0.5
    return coord.clamp(0, size - 1)


class _GridSampleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, grid, padding: int):  # type: ignore[override]
        ctx.save_for_backward(input, grid)
        ctx.padding = padding
        return torch.grid_sampler_2d(input, grid, _BILINEAR, padding, _ALIGN_CORNERS)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        input, grid = ctx.saved_tensors
        grads = _GridSampleBackwardFn.apply(grad_out, input, grid, ctx.padding,
                                            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return *grads, None


def _aten_backward(grad_out, input, grid, padding: int, need_input: bool, need_grid: bool):
    return torch.ops.aten.grid_sampler_2d_backward(
        grad_out, input, grid, _BILINEAR, padding, _ALIGN_CORNERS, [need_input, need_grid])


class _GridSampleBackwardFn(torch.autograd.Function):
    """(grad_out, input, grid) -> (grad_input, grad_grid) of bilinear grid sampling."""

    @staticmethod
    def forward(ctx, grad_out, input, grid, padding: int, need_input: bool, need_grid: bool):  # type: ignore[override]
        ctx.save_for_backward(grad_out, input, grid)
        ctx.padding = padding
        ctx.set_materialize_grads(False)  # Unused outputs then arrive as None, skipping their terms.
        grad_input, grad_grid = _aten_backward(grad_out, input, grid, padding, need_input, need_grid)
        return (grad_input if need_input else None), (grad_grid if need_grid else None)

    @staticmethod
    def backward(ctx, gg_input, gg_grid):  # type: ignore[override]
        grad_out, input, grid = ctx.saved_tensors
        need_go, need_in, need_grid = ctx.needs_input_grad[:3]
        d_go = d_in = d_grid = None
        if gg_input is not None:
            # grad_input = A(grid)^T grad_out, with A(grid) the (linear in input) sampling operator.
            if need_go:
                d_go = _GridSampleFn.apply(gg_input, grid, ctx.padding)
            if need_grid:
                d_grid = _GridSampleBackwardFn.apply(grad_out, gg_input, grid, ctx.padding, False, True)[1]
        if gg_grid is not None and (need_go or need_in or need_grid):
            terms = _grad_grid_terms(grad_out, input, grid, gg_grid, ctx.padding)
            d_go, d_in, d_grid = (_add(a, b) if need else None
                                  for a, b, need in zip((d_go, d_in, d_grid), terms, (need_go, need_in, need_grid)))
        return d_go, d_in, d_grid, None, None, None


def _add(a, b):
    return b if a is None else a + b


def _grad_grid_terms(grad_out, input, grid, gg_grid, padding: int):
    """Gradients of <gg_grid, grad_grid(grad_out, input, grid)> via autograd on the gather reference."""
    mode = next(name for name, code in _PADDING_CODES.items() if code == padding)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (grad_out, input, grid)]
        go, inp, grd = leaves
        (grad_grid,) = torch.autograd.grad(grid_sample_ref(inp, grd, mode), grd, go, create_graph=True)
        return torch.autograd.grad(grad_grid, leaves, gg_grid, allow_unused=True, materialize_grads=True)
