"""StyleGAN2 building blocks: equalised-lr layers, a class-conditional mapping network, and the synthesis backbone with optional extra (non-upsampling) blocks."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from torch_utils import misc, precision
from torch_utils.ops import bias_act, conv2d_resample, fma, modulate, torgb, upfirdn2d

__all__ = [
    "normalize_2nd_moment",
    "activation_gain",
    "FullyConnectedLayer",
    "Conv2dLayer",
    "MappingNetwork",
    "modulated_conv2d",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "NOISE_MODES",
]

NOISE_MODES = ("random", "const", "none")

# Gains that keep the activations' second moment near 1 (He et al.); bias_act's own defaults
# agree, but the layers pass the gain explicitly so that an extra per-call gain composes.
_ACT_GAINS = {"linear": 1.0, "lrelu": math.sqrt(2.0), "relu": math.sqrt(2.0), "tanh": 1.0, "sigmoid": 1.0,
              "softplus": 1.0, "elu": 1.0, "selu": 1.0, "swish": math.sqrt(2.0)}


def activation_gain(activation: str) -> float:
    """Default output gain of an activation (sqrt(2) for lrelu/relu, 1 for linear)."""
    if activation not in _ACT_GAINS:
        raise ValueError(f"activation must be one of {sorted(_ACT_GAINS)}, got {activation!r}")
    return _ACT_GAINS[activation]


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale x so that its mean square along ``dim`` is 1 (pixel norm of the latent)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _scaled_clamp(conv_clamp: Optional[float], gain: float) -> Optional[float]:
    return None if conv_clamp is None else float(conv_clamp) * gain


# ----------------------------------------------------------------------------------------
# Equalised-learning-rate layers: weights are stored as N(0, 1) / lr_multiplier and scaled at
# run time by lr_multiplier / sqrt(fan_in), so every layer learns at the same effective rate.


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate, optional bias and activation (last dim is features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        activation_gain(activation)  # validates the name
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        # Stored as bias_init / lr_multiplier so that the effective initial bias is exactly bias_init.
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.nn.functional.linear(x, w, b)
        x = x.matmul(w.t())
        return bias_act.bias_act(x, b, dim=x.ndim - 1, act=self.activation, gain=activation_gain(self.activation))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Conv layer with equalised learning rate, FIR-filtered up/downsampling, bias, activation and clamp."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.act_gain = activation_gain(activation)
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)), persistent=False)
        self.padding = kernel_size // 2
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.weight_gain
        # A transposed conv (up > 1) already flips the kernel; flip_weight keeps both paths identical.
        x = conv2d_resample.conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                                            padding=self.padding, flip_weight=(self.up == 1))
        b = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain,
                                 clamp=_scaled_clamp(self.conv_clamp, gain))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
                f"up={self.up}, down={self.down}")


# ----------------------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
    """(z, one-hot class) -> w, broadcast to num_ws; keeps a running mean of w per class for truncation.

    ``z_dim=0`` gives a pure class embedding (the discriminator's cmap). ``num_ws=None`` returns
    [B, w_dim] instead of [B, num_ws, w_dim]. ``w_avg_beta=None`` disables the w averages.
    The averages are a buffer ``w_avg`` [max(c_dim, 1), w_dim]: row k is the running mean of w
    over samples of class k (updated only from classes present in the batch, weighted by the
    label values), so truncation pulls each sample toward its own class's mean.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: Optional[int], num_layers: int = 2,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01,
                 w_avg_beta: Optional[float] = 0.998) -> None:
        super().__init__()
        if z_dim < 0 or c_dim < 0 or z_dim + c_dim == 0:
            raise ValueError(f"MappingNetwork needs z_dim > 0 or c_dim > 0, got z_dim={z_dim}, c_dim={c_dim}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            layer = FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                        lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([max(c_dim, 1), w_dim]))

    def _input(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor]) -> torch.Tensor:
        parts = []
        if self.z_dim > 0:
            misc.assert_shape(z, [None, self.z_dim])
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            misc.assert_shape(c, [None, self.c_dim])
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def _update_w_avg(self, w: torch.Tensor, c: Optional[torch.Tensor]) -> None:
        beta = self.w_avg_beta
        if self.c_dim == 0:
            self.w_avg.copy_(w.mean(dim=0, keepdim=True).lerp(self.w_avg, beta))
            return
        weights = c.to(torch.float32).clamp_min(0)  # [B, c_dim]
        counts = weights.sum(dim=0)  # [c_dim]
        means = (weights.t() @ w) / counts.clamp_min(1e-8)[:, None]
        present = (counts > 0)[:, None]
        self.w_avg.copy_(torch.where(present, means.lerp(self.w_avg, beta), self.w_avg))

    def class_w_avg(self, c: Optional[torch.Tensor], batch_size: Optional[int] = None) -> torch.Tensor:
        """The truncation centre [B, w_dim] per sample: the label-weighted mean of the class averages.

        A row of c that sums to 0 (no class) gets the mean over all class averages.
        """
        if not hasattr(self, "w_avg"):
            raise RuntimeError("this MappingNetwork keeps no w averages (num_ws or w_avg_beta is None)")
        if self.c_dim == 0:
            if batch_size is None:
                raise ValueError("class_w_avg needs batch_size when c_dim == 0")
            return self.w_avg[0].unsqueeze(0).expand(batch_size, -1)
        weights = c.to(torch.float32).clamp_min(0)
        total = weights.sum(dim=1, keepdim=True)
        center = (weights @ self.w_avg) / total.clamp_min(1e-8)
        return torch.where(total > 0, center, self.w_avg.mean(dim=0, keepdim=True).expand_as(center))

    def forward(self, z: Optional[torch.Tensor], c: Optional[torch.Tensor], truncation_psi: float = 1.0,
                truncation_cutoff: Optional[int] = None, update_emas: bool = False) -> torch.Tensor:
        x = self._input(z, c)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and hasattr(self, "w_avg"):
            self._update_w_avg(x.detach(), c)
        if self.num_ws is None:
            if truncation_psi != 1:
                raise ValueError("truncation needs num_ws (this mapping returns a single w)")
            return x
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            center = self.class_w_avg(c, x.shape[0]).unsqueeze(1).to(x.dtype)
            cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
            head = center.lerp(x[:, :cutoff], truncation_psi)
            x = torch.cat([head, x[:, cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ----------------------------------------------------------------------------------------
# Modulated convolution and the synthesis layers.


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding: int = 0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """Conv of x [B,I,H,W] with weight [O,I,k,k] scaled per sample by styles [B,I], optionally demodulated.

    Demodulation divides each output channel by the norm of its modulated kernel, so outputs
    have unit second moment for unit-variance input. ``fused_modconv`` runs one grouped conv
    with per-sample kernels; otherwise x is scaled before and after a shared conv (the same
    result; cheaper in training). ``noise`` [B or 1,1,H',W'] is added after demodulation.
    """
    if not fused_modconv:
        x, dcoefs = modulated_conv2d_parts(x, weight, styles, up=up, down=down, padding=padding,
                                           resample_filter=resample_filter, demodulate=demodulate,
                                           flip_weight=flip_weight)
        if demodulate and noise is not None:
            return fma.fma(x, dcoefs.to(x.dtype).reshape(x.shape[0], -1, 1, 1), noise.to(x.dtype))
        if demodulate:
            return modulate.scale_channels(x, dcoefs.to(x.dtype))
        return x if noise is None else x + noise.to(x.dtype)

    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    misc.assert_shape(styles, [batch, in_ch])
    weight, styles = _prescale_for_fp16(x, weight, styles, demodulate)
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, in_ch, 1, 1)  # [B, O, I, k, k]
    if demodulate:
        w = w * _demodulation_coefficients(weight, styles).reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample.conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                                        groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x if noise is None else x + noise.to(x.dtype)


def modulated_conv2d_parts(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, up: int = 1,
                           down: int = 1, padding: int = 0, resample_filter: Optional[torch.Tensor] = None,
                           demodulate: bool = True, flip_weight: bool = True
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The unfused modulated conv before demodulation: (conv(x * styles, weight), dcoefs [B,O] or None).

    The caller applies the coefficients, e.g. fused with noise, bias and activation by
    `modulate.modulated_epilogue` (one pass instead of three on a CPU).
    """
    batch, in_ch = x.shape[0], weight.shape[1]
    misc.assert_shape(styles, [batch, in_ch])
    weight, styles = _prescale_for_fp16(x, weight, styles, demodulate)
    dcoefs = None
    if demodulate:
        dcoefs = _demodulation_coefficients(weight, styles)
    x = modulate.scale_channels(x, styles.to(x.dtype))
    x = conv2d_resample.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down,
                                        padding=padding, flip_weight=flip_weight)
    return x, dcoefs


def _prescale_for_fp16(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                       demodulate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if x.dtype == torch.float16 and demodulate:
        # Demodulation removes per-sample and per-output-channel scales, so pre-normalising here
        # changes nothing mathematically but keeps the fp16 products from overflowing.
        in_ch, kh, kw = weight.shape[1:]
        weight = weight * (1.0 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    return weight, styles


def _demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """1 / norm of each modulated kernel weight[o] * styles[b]: [O,I,k,k], [B,I] -> [B,O].

    sum_{i,k} (w[o,i,k] s[b,i])^2 = sum_i s[b,i]^2 sum_k w[o,i,k]^2: one [B,I] x [I,O] product
    instead of squaring and summing the [B,O,I,k,k] modulated kernels (and their gradient).
    """
    return (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + per-pixel noise + bias + lrelu + clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.act_gain = activation_gain(activation)
        self.padding = kernel_size // 2
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)), persistent=False)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)  # styles start at 1: plain conv
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def _noise(self, batch: int, device: torch.device, noise_mode: str) -> Optional[torch.Tensor]:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            return torch.randn([batch, 1, self.resolution, self.resolution], device=device) * self.noise_strength
        return self.noise_const * self.noise_strength

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        in_res = self.resolution // self.up
        misc.assert_shape(x, [None, self.in_channels, in_res, in_res])
        styles = self.affine(w)
        noise = self._noise(x.shape[0], x.device, noise_mode)
        act_gain, clamp = self.act_gain * gain, _scaled_clamp(self.conv_clamp, gain)
        if not fused_modconv:
            # Demodulation, noise, bias and activation in one pass (modulate.modulated_epilogue).
            x, dcoefs = modulated_conv2d_parts(x, self.weight, styles, up=self.up, padding=self.padding,
                                               resample_filter=self.resample_filter, flip_weight=(self.up == 1))
            return modulate.modulated_epilogue(x, dcoefs.to(x.dtype), None if noise is None else noise.to(x.dtype),
                                               self.bias.to(x.dtype), act=self.activation, gain=act_gain,
                                               clamp=clamp)
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """1x1 modulated conv without demodulation to the output channels (here: the tri-plane channels)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: Optional[float] = None, channels_last: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim, self.conv_clamp = in_channels, out_channels, w_dim, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size])
                                   .to(memory_format=memory_format))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True,
                skip: Optional[torch.Tensor] = None, skip_filter: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The layer's output, plus ``skip`` if given (summed in the same pass, in skip's dtype and layout).

        With ``skip_filter`` the skip image has half x's resolution and is first upsampled with it
        (`upfirdn2d.upsample2d`); on a CPU `torgb.try_kernel` does all of it in one pass.
        """
        styles = self.affine(w) * self.weight_gain  # without demodulation the fan-in scaling goes here
        y = torgb.try_kernel(x, self.weight, styles, self.bias, skip, skip_filter, self.conv_clamp) \
            if self.padding == 0 else None
        if y is not None:
            return y
        if skip is not None and skip_filter is not None:
            skip = upfirdn2d.upsample2d(skip, skip_filter)
        x = modulated_conv2d(x, self.weight, styles, padding=self.padding, demodulate=False,
                             fused_modconv=fused_modconv)
        return modulate.skip_epilogue(x, self.bias, skip, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


# ----------------------------------------------------------------------------------------
# Blocks and the backbone.


# Skip images with at least this many channels follow the activation layout (see SynthesisBlock).
_WIDE_SKIP_CHANNELS = 8


class SynthesisBlock(nn.Module):
    """Two modulated convs and a skip ToRGB; ``up=2`` doubles the resolution, ``up=1`` keeps it (extra block).

    ``in_channels=0`` makes the first block: a learned constant input and a single conv.
    ``forward(x, img, ws)`` takes ``num_conv + num_torgb`` ws and returns (features, skip image);
    the skip image is upsampled with the FIR filter when ``up=2`` and summed with this block's ToRGB.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 up: int = 2, resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: Optional[float] = None,
                 use_fp16: bool = False, fp16_channels_last: bool = False, **layer_kwargs) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution, self.img_channels = resolution, img_channels
        self.up = 1 if in_channels == 0 else up
        self.use_fp16, self.channels_last = use_fp16, (use_fp16 and fp16_channels_last)
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)), persistent=False)
        common = dict(w_dim=w_dim, resolution=resolution, resample_filter=resample_filter, conv_clamp=conv_clamp,
                      channels_last=self.channels_last)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=self.up, **common, **layer_kwargs)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **common, **layer_kwargs)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                channels_last=self.channels_last)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def compute_dtype(self, device: torch.device, force_fp32: bool = False) -> torch.dtype:
        """fp16 on CUDA where enabled; bf16 on a CPU under `precision.cpu_bf16`; else fp32."""
        return precision.half_dtype(device) if self.use_fp16 and not force_fp32 else torch.float32

    def forward(self, x: Optional[torch.Tensor], img: Optional[torch.Tensor], ws: torch.Tensor,
                force_fp32: bool = False, fused_modconv: Optional[bool] = None, noise_mode: str = "random",
                update_emas: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        del update_emas  # accepted for a uniform block interface; nothing here keeps running averages
        misc.assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        dtype = self.compute_dtype(ws.device, force_fp32)
        memory_format = misc.activation_memory_format(ws.device, dtype, self.channels_last)
        if fused_modconv is None:
            # Grouped convs are fast for inference on a GPU; in training the separate path is faster
            # to differentiate. On a CPU the separate path is faster for inference too: it keeps the
            # channels-last activations, the Winograd convolutions and the compiled kernels, none of
            # which a grouped conv takes (eg3d-small's G forward: 0.270 s against 0.498 s).
            fused_modconv = (not self.training) and ws.device.type != "cpu" and \
                (dtype == torch.float32 or ws.shape[0] == 1)
        in_res = self.resolution // self.up
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]).to(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            misc.assert_shape(x, [None, self.in_channels, in_res, in_res])
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        # A wide skip image (tri-plane features) takes the fp32 activation layout: channels-last
        # on a CPU, where oneDNN's depthwise upsampling of it runs several times faster than on
        # NCHW, and ToRGB needs no layout copy. An RGB skip image stays NCHW; of ToRGB's input
        # and output, convert the one with fewer channels.
        skip_format = misc.activation_memory_format(ws.device, torch.float32) \
            if self.img_channels >= _WIDE_SKIP_CHANNELS else torch.contiguous_format
        keep_input = skip_format == memory_format or self.torgb.out_channels < self.torgb.in_channels
        if img is not None:
            misc.assert_shape(img, [None, self.img_channels, in_res, in_res])
        y = self.torgb(x if keep_input else x.contiguous(memory_format=skip_format), next(w_iter),
                       fused_modconv=fused_modconv, skip=img,
                       skip_filter=self.resample_filter if img is not None and self.up == 2 else None)
        return x, y.to(dtype=torch.float32, memory_format=skip_format)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, up={self.up}, architecture=skip, use_fp16={self.use_fp16}"


def synthesis_channels(resolutions: Sequence[int], channel_base: int, channel_max: int) -> Dict[int, int]:
    """Feature channels per resolution: channel_base / res, capped at channel_max (at least 1)."""
    return {res: max(1, min(channel_base // res, channel_max)) for res in resolutions}


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, img_channels, R, R] (here R = tri-plane resolution, 96 = 3 x 32 channels).

    Ordinary blocks double the resolution from 4x4; with ``extra_blocks`` each is followed by
    a block of the same structure that keeps the resolution (the paper's deeper backbone).
    The highest ``num_fp16_res`` resolutions run in fp16 on CUDA (on a CPU in fp32, or in bf16
    under ``torch_utils.precision.cpu_bf16``), with the activations clamped to +-``conv_clamp``.
    """

    def __init__(self, w_dim: int, img_resolution: int = 256, img_channels: int = 96, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, conv_clamp: Optional[float] = 256,
                 extra_blocks: bool = True, **block_kwargs) -> None:
        super().__init__()
        log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.extra_blocks, self.num_fp16_res = extra_blocks, num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = synthesis_channels(self.block_resolutions, channel_base, channel_max)
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.block_names: List[str] = []
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = channels[res // 2] if res > 4 else 0
            common = dict(w_dim=w_dim, resolution=res, img_channels=img_channels, conv_clamp=conv_clamp,
                          use_fp16=(res >= fp16_resolution), **block_kwargs)
            self._add_block(f"b{res}", SynthesisBlock(in_ch, channels[res], up=2, **common))
            if extra_blocks:
                self._add_block(f"b{res}_extra", SynthesisBlock(channels[res], channels[res], up=1, **common))
        self.num_ws += 1  # the last block's ToRGB (earlier ones share a w with the next block's first conv)

    def _add_block(self, name: str, block: SynthesisBlock) -> None:
        setattr(self, name, block)
        self.block_names.append(name)
        self.num_ws += block.num_conv

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        misc.assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for name in self.block_names:
            block = getattr(self, name)
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, extra_blocks={self.extra_blocks}, "
                f"num_fp16_res={self.num_fp16_res}")
