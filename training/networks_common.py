"""Helpers shared by the generator and the discriminator (image resizing between render and output resolutions)."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["resize_image"]


def resize_image(x: torch.Tensor, size: Union[int, Tuple[int, int]], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of x [B,C,H,W] to ``size`` (int: square); antialiased when shrinking (and ``antialias``).

    Used for the raw neural render: upsampled as the super-resolution skip path, resized to the
    image resolution for the discriminator's dual input, and (for real images) downsampled to
    the neural-render resolution by the loss.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    if tuple(x.shape[-2:]) == (h, w):
        return x
    shrinking = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                         antialias=bool(antialias and shrinking))
