"""Turning generator outputs into pictures: [-1,1] images to uint8, colour-mapped depth, and grids."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["to_uint8", "colorize_depth", "make_grid", "save_grid"]

# A perceptually ordered colour ramp (dark blue -> teal -> yellow), interpolated linearly.
_RAMP = np.array([[0.07, 0.03, 0.30], [0.15, 0.35, 0.55], [0.13, 0.60, 0.55], [0.45, 0.80, 0.35], [0.99, 0.91, 0.15]])


def to_uint8(images: torch.Tensor, drange: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[N,C,H,W] floats in `drange` -> uint8 [N,H,W,C] (C=1 stays one channel)."""
    lo, hi = drange
    x = (images.detach().float().cpu() - lo) * (255.0 / (hi - lo))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def colorize_depth(depth: torch.Tensor, near: Optional[float] = None, far: Optional[float] = None,
                   opacity: Optional[torch.Tensor] = None) -> np.ndarray:
    """Depth [N,1,H,W] -> uint8 RGB [N,H,W,3]: near is yellow, far is dark blue.

    Without near/far, each image is scaled over its own foreground (opacity > 0.5 where given)
    so that the object's relief is visible; background pixels are drawn black.
    """
    d = depth.detach().float().cpu()[:, 0]
    fg = (opacity.detach().float().cpu()[:, 0] > 0.5) if opacity is not None else torch.ones_like(d, dtype=torch.bool)
    out = np.zeros((*d.shape, 3), dtype=np.uint8)
    for i in range(d.shape[0]):
        vals = d[i][fg[i]]
        if vals.numel() == 0:
            continue
        lo = float(vals.min()) if near is None else near
        hi = float(vals.max()) if far is None else far
        t = ((hi - d[i]) / max(hi - lo, 1e-8)).clamp(0, 1).numpy()  # 1 = nearest
        pos = t * (len(_RAMP) - 1)
        idx = np.minimum(pos.astype(int), len(_RAMP) - 2)
        frac = (pos - idx)[..., None]
        rgb = _RAMP[idx] * (1 - frac) + _RAMP[idx + 1] * frac
        out[i] = np.where(fg[i].numpy()[..., None], (rgb * 255).round(), 0).astype(np.uint8)
    return out


def make_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile uint8 [H,W,3] cells (rows of equal length) into one picture; cells are resized to the largest."""
    size = max(max(cell.shape[0] for cell in row) for row in rows)
    ncols = max(len(row) for row in rows)
    grid = np.full((len(rows) * (size + pad) + pad, ncols * (size + pad) + pad, 3), fill, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell.ndim == 2 or cell.shape[-1] == 1:
                cell = np.repeat(cell.reshape(cell.shape[0], cell.shape[1], 1), 3, axis=-1)
            if cell.shape[0] != size:
                cell = np.asarray(Image.fromarray(cell).resize((size, size), Image.NEAREST))
            y, x = pad + r * (size + pad), pad + c * (size + pad)
            grid[y:y + size, x:x + size] = cell
    return grid


def save_grid(path: Union[str, Path], rows: Sequence[Sequence[np.ndarray]]) -> None:
    """Write `make_grid(rows)` as a PNG."""
    Image.fromarray(make_grid(rows)).save(path)
