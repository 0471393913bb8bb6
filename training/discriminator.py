"""Pose-unaware, class-conditional StyleGAN2 residual discriminator with optional dual (image + raw render) input."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from torch_utils import misc, precision
from training.networks_common import resize_image
from training.networks_stylegan2 import Conv2dLayer, FullyConnectedLayer, MappingNetwork, synthesis_channels

__all__ = ["DiscriminatorBlock", "MinibatchStdLayer", "DiscriminatorEpilogue", "Discriminator"]

ImageInput = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs (the second downsamples 2x) plus a 1x1 downsampling skip, each branch scaled by sqrt(1/2).

    ``in_channels=0`` makes the first block, which starts with a 1x1 FromRGB conv on the image.
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, activation: str = "lrelu", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: Optional[float] = None, use_fp16: bool = False,
                 fp16_channels_last: bool = False) -> None:
        super().__init__()
        self.in_channels, self.img_channels, self.resolution = in_channels, img_channels, resolution
        self.use_fp16, self.channels_last = use_fp16, (use_fp16 and fp16_channels_last)
        conv = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, **conv)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, **conv)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2,
                                 resample_filter=resample_filter, **conv)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], force_fp32: bool = False) -> torch.Tensor:
        device = (img if x is None else x).device
        dtype = precision.half_dtype(device) if self.use_fp16 and not force_fp32 else torch.float32
        memory_format = misc.activation_memory_format(device, dtype, self.channels_last)
        if self.in_channels == 0:
            misc.assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
            x = self.fromrgb(img.to(dtype=dtype, memory_format=memory_format))
        else:
            misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
            x = x.to(dtype=dtype, memory_format=memory_format)
        gain = math.sqrt(0.5)  # the sum of two unit-variance branches keeps unit variance
        y = self.skip(x, gain=gain)
        x = self.conv1(self.conv0(x), gain=gain)
        return y + x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture=resnet, use_fp16={self.use_fp16}"


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for g in range(min(n, limit), 0, -1):
        if n % g == 0:
            return g
    return 1


class MinibatchStdLayer(nn.Module):
    """Appends ``num_channels`` feature maps holding the std over groups of samples (a diversity cue for D).

    Samples i and i + N/G, i + 2N/G, ... form a group. The group size is the largest divisor of
    the batch that does not exceed ``group_size`` (so any batch size works).
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        if group_size < 1 or num_channels < 1:
            raise ValueError(f"group_size and num_channels must be >= 1, got {group_size}, {num_channels}")
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = _largest_divisor_at_most(n, self.group_size)
        f = self.num_channels
        if c % f != 0:
            raise ValueError(f"mbstd num_channels={f} must divide the {c} feature channels")
        y = x.reshape(g, n // g, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n/g, f]: mean std over channels and pixels
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # back to [n, f, h, w], same order as x
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std, conv, FC, output FC; with cmap_dim > 0 the class-projection score."""

    def __init__(self, in_channels: int, cmap_dim: int, resolution: int = 4, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, activation: str = "lrelu", conv_clamp: Optional[float] = None) -> None:
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: torch.Tensor, cmap: Optional[torch.Tensor]) -> torch.Tensor:
        misc.assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.out(self.fc(x.flatten(1)))
        if self.cmap_dim > 0:
            misc.assert_shape(cmap, [x.shape[0], self.cmap_dim])
            # Projection discriminator: the score is the feature's projection onto the class embedding.
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """D(image, class) -> score [B, 1] ([B, 2] with a low-resolution head). It never receives a camera pose.

    With ``dual_input`` the input is the image concatenated with the raw neural render resized to
    the image resolution (2 x img_channels channels). ``forward`` takes either a dict with
    'image' and 'image_raw' (any raw resolution) or a tensor that already has the input channels.

    ``low_res_head`` (0: none) adds a second, smaller discriminator of the same design that scores
    the input downsampled (antialiased) to that resolution; its score is the second column. The
    losses average over all scores, so each head gets its own logistic loss, as in multi-scale
    discriminators: the small head judges silhouettes and coarse shape, where the full one spends
    its few high-resolution channels on edges and texture (the demo's boxes, README: The demo).
    """

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int = 3, dual_input: bool = True,
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 4,
                 conv_clamp: Optional[float] = 256, cmap_dim: Optional[int] = None, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01,
                 fp16_channels_last: bool = False, low_res_head: int = 0) -> None:
        super().__init__()
        self.init_kwargs: Dict[str, Any] = dict(
            c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels, dual_input=dual_input,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
            cmap_dim=cmap_dim, mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
            mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
            fp16_channels_last=fp16_channels_last, low_res_head=low_res_head)
        log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 8 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 8, got {img_resolution}")
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.dual_input = dual_input
        self.in_channels = img_channels * (2 if dual_input else 1)
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = synthesis_channels(self.block_resolutions + [4], channel_base, channel_max)
        self.cmap_dim = (channels[4] if cmap_dim is None else cmap_dim) if c_dim > 0 else 0
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.block_names = []
        for res in self.block_resolutions:
            in_ch = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(in_ch, channels[res], channels[res // 2], resolution=res,
                                       img_channels=self.in_channels, conv_clamp=conv_clamp,
                                       use_fp16=(res >= fp16_resolution), fp16_channels_last=fp16_channels_last)
            setattr(self, f"b{res}", block)
            self.block_names.append(f"b{res}")
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=self.cmap_dim, num_ws=None, w_avg_beta=None,
                                          num_layers=mapping_layers, lr_multiplier=mapping_lr_multiplier)
        self.epilogue = DiscriminatorEpilogue(channels[4], cmap_dim=self.cmap_dim, mbstd_group_size=mbstd_group_size,
                                              mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)
        self.low_res_head = int(low_res_head)
        if self.low_res_head:
            if not 8 <= self.low_res_head < img_resolution or self.low_res_head & (self.low_res_head - 1):
                raise ValueError(f"low_res_head must be 0 or a power of two in [8, {img_resolution}), "
                                 f"got {low_res_head}")
            # Same design and widths at its own, small size; fp32 (its layers are few and cheap).
            self.low = Discriminator(**{**self.init_kwargs, "img_resolution": self.low_res_head,
                                        "num_fp16_res": 0, "low_res_head": 0})

    def assemble_input(self, img: ImageInput) -> torch.Tensor:
        """The network's input tensor [B, in_channels, R, R] from a dict or a ready tensor."""
        if isinstance(img, Mapping):
            if "image" not in img:
                raise KeyError("Discriminator input dict needs an 'image' entry")
            image = img["image"]
            if self.dual_input:
                if "image_raw" not in img:
                    raise KeyError("Discriminator(dual_input=True) input dict needs an 'image_raw' entry")
                raw = resize_image(img["image_raw"].to(image.dtype), self.img_resolution)
                image = torch.cat([image, raw], dim=1)
        else:
            image = img
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"Discriminator input must have {self.in_channels} channels "
                             f"(dual_input={self.dual_input}), got shape {tuple(image.shape)}")
        misc.assert_shape(image, [None, self.in_channels, self.img_resolution, self.img_resolution])
        return image

    def forward(self, img: ImageInput, c: Optional[torch.Tensor], update_emas: bool = False,
                force_fp32: bool = False) -> torch.Tensor:
        del update_emas  # kept for a call signature symmetric with G; D has no running averages
        x_img = self.assemble_input(img)
        x = None
        for idx, name in enumerate(self.block_names):
            x = getattr(self, name)(x, x_img if idx == 0 else None, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        logits = self.epilogue(x, cmap)
        if self.low_res_head:
            low = resize_image(x_img.to(torch.float32), self.low_res_head)
            logits = torch.cat([logits, self.low(low, c, force_fp32=force_fp32)], dim=1)
        return logits

    def extra_repr(self) -> str:
        return (f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, in_channels={self.in_channels}, "
                f"cmap_dim={self.cmap_dim}")
