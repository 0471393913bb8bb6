"""Style-modulated super-resolution from the neural-render resolution to the output image resolution."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from torch_utils import misc
from training.networks_common import resize_image
from training.networks_stylegan2 import SynthesisBlock, synthesis_channels

__all__ = ["SuperResolution", "resize_image"]


def _log2_exact(value: int, name: str) -> int:
    log2 = int(round(math.log2(value))) if value > 0 else -1
    if log2 < 2 or 2 ** log2 != value:
        raise ValueError(f"{name} must be a power of two >= 4, got {value}")
    return log2


class SuperResolution(nn.Module):
    """Neural render [B, C, nr, nr] (first 3 channels: RGB in [-1,1]) -> image [B, 3, img_res, img_res].

    One upsampling SynthesisBlock per doubling, then one refine block at the output resolution
    (so ``img_res == neural_res`` is a single refine block). Every layer is modulated by the last
    w of the generator (``ws[:, -1]``). The result is the bilinearly upsampled raw RGB plus the
    blocks' skip-ToRGB residual, so at initialisation the output already resembles the render.
    """

    def __init__(self, in_channels: int, neural_res: int, img_res: int, w_dim: int, channel_base: int = 16384,
                 channel_max: int = 256, num_fp16_res: int = 4, conv_clamp: Optional[float] = 256,
                 antialias: bool = True, noise_mode: str = "none", **block_kwargs) -> None:
        super().__init__()
        lo, hi = _log2_exact(neural_res, "neural_res"), _log2_exact(img_res, "img_res")
        if hi < lo:
            raise ValueError(f"img_res ({img_res}) must be >= neural_res ({neural_res})")
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (RGB first), got {in_channels}")
        self.in_channels, self.neural_res, self.img_res, self.w_dim = in_channels, neural_res, img_res, w_dim
        self.antialias, self.noise_mode = antialias, noise_mode
        resolutions = [2 ** i for i in range(lo + 1, hi + 1)] + [img_res]
        ups = [2] * (hi - lo) + [1]
        channels = synthesis_channels(resolutions, channel_base, channel_max)
        fp16_resolution = img_res // 2 ** (num_fp16_res - 1) if num_fp16_res > 0 else 2 * img_res
        self.block_names = []
        in_ch = in_channels
        for idx, (res, up) in enumerate(zip(resolutions, ups)):
            block = SynthesisBlock(in_ch, channels[res], w_dim=w_dim, resolution=res, img_channels=3, up=up,
                                   conv_clamp=conv_clamp, use_fp16=(res >= fp16_resolution), **block_kwargs)
            setattr(self, f"block{idx}", block)
            self.block_names.append(f"block{idx}")
            in_ch = channels[res]

    def forward(self, x: torch.Tensor, ws: torch.Tensor, noise_mode: Optional[str] = None,
                **block_kwargs) -> torch.Tensor:
        """x: [B, in_channels, neural_res, neural_res]; ws: [B, K, w_dim] (only ws[:, -1] is used)."""
        misc.assert_shape(x, [None, self.in_channels, self.neural_res, self.neural_res])
        if ws.ndim != 3 or ws.shape[0] != x.shape[0] or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must be [{x.shape[0]}, K, {self.w_dim}], got {tuple(ws.shape)}")
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        w = ws[:, -1:].to(torch.float32)
        base = resize_image(x[:, :3].to(torch.float32), self.img_res, antialias=self.antialias)
        feat, residual = x, None
        for name in self.block_names:
            block = getattr(self, name)
            block_ws = w.expand(-1, block.num_conv + block.num_torgb, -1)
            feat, residual = block(feat, residual, block_ws, noise_mode=noise_mode, **block_kwargs)
        return base + residual

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, neural_res={self.neural_res}, img_res={self.img_res}"
