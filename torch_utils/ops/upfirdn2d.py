"""Upsample, pad, FIR-filter and downsample 2-D images (upfirdn2d), with a reference and a CUDA path.

The op, per spatial axis, on an NCHW tensor `x`:

1. upsample by `up`: insert `up - 1` zeros after every pixel (the size becomes `in * up`);
2. pad by `padding` (`[x0, x1, y0, y1]`); negative padding crops;
3. filter with the FIR filter `f` as a true convolution (the filter is flipped), or as a
   correlation when `flip_filter=True`; only the "valid" part is kept;
4. downsample by `down`: keep every `down`-th pixel, starting with the first.

Output size per axis: `(in * up + pad0 + pad1 - taps + down) // down`.

Filters: a 2-D tensor `[fh, fw]`, or a 1-D tensor `[taps]` meaning the separable filter
`f[:, None] * f[None, :]` (applied along x, then along y); `None` means the identity `[[1]]`.
The filter is multiplied by `gain ** (f.ndim / 2)`, so the total gain is `gain` in both cases
(a separable filter is applied twice, each time with `sqrt(gain)`).

`impl`: None picks the CUDA plugin when `x` is on a GPU and the plugin builds, the CPU fast
path for CPU tensors (short filters as one 2-D depthwise or transposed-depthwise conv, longer
separable ones as shifted-slice sums, one axis at a time; same results within float
rounding), else the reference path; 'ref' forces the reference; 'cuda' asks for the plugin
(error for CPU tensors).
The CUDA and CPU fast paths treat the filter as a constant (no gradient w.r.t. `f`); with a
filter that requires grad, `impl=None` uses the reference path.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.custom_ops import CudaPlugin

__all__ = [
    "upfirdn2d",
    "setup_filter",
    "filter2d",
    "upsample2d",
    "downsample2d",
    "get_filter_size",
    "parse_scaling",
    "parse_padding",
    "MAX_CUDA_FILTER_TAPS",
]

Scaling = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]

# Largest fh * fw the CUDA kernel takes (the filter is staged in 16 KiB of shared memory,
# e.g. 64x64 taps). Keep in sync with kMaxFilterTaps in upfirdn2d.h.
MAX_CUDA_FILTER_TAPS = 4096

# Separable filters up to this many taps run as one 2-D depthwise conv on a CPU (4: the
# networks' [1, 3, 3, 1]); longer ones (e.g. ADA's 12-tap wavelets) keep the separable passes.
_CPU_DEPTHWISE_MAX_TAPS = 4

_plugin = CudaPlugin("upfirdn2d_plugin", sources=["upfirdn2d.cpp", "upfirdn2d.cu"], headers=["upfirdn2d.h"])

# ----------------------------------------------------------------------------------------
# Argument helpers (public: conv2d_resample and the networks reuse them).


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def parse_scaling(s: Scaling, name: str = "scaling") -> tuple[int, int]:
    """Up/down factor as `(sx, sy)`: an int applies to both axes; each must be >= 1."""
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        sx = sy = int(s)
    elif isinstance(s, (list, tuple)) and len(s) == 2:
        sx, sy = (_as_int(v, name) for v in s)
    else:
        raise TypeError(f"{name} must be an int or a pair (x, y) of ints, got {s!r}")
    if sx < 1 or sy < 1:
        raise ValueError(f"{name} must be positive, got {s!r}")
    return sx, sy


def parse_padding(p: Padding, name: str = "padding") -> tuple[int, int, int, int]:
    """Padding as `(x0, x1, y0, y1)` from an int, a pair `(px, py)` or four ints."""
    if isinstance(p, (int, np.integer)) and not isinstance(p, bool):
        return (int(p),) * 4
    if isinstance(p, (list, tuple)) and len(p) == 2:
        px, py = (_as_int(v, name) for v in p)
        return px, px, py, py
    if isinstance(p, (list, tuple)) and len(p) == 4:
        x0, x1, y0, y1 = (_as_int(v, name) for v in p)
        return x0, x1, y0, y1
    raise TypeError(f"{name} must be an int, (px, py) or [x0, x1, y0, y1], got {p!r}")


def get_filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    """Filter footprint `(fw, fh)`; a 1-D (separable) filter of n taps is n x n; None is 1 x 1."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        got = f"ndim={f.ndim}" if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"f must be a 1-D (separable) or 2-D filter tensor, got {got}")
    fw = int(f.shape[-1])
    fh = int(f.shape[0])
    return fw, fh


def setup_filter(
    f: Union[None, float, Sequence, np.ndarray, torch.Tensor],
    device: torch.device = torch.device("cpu"),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: Optional[bool] = None,
) -> torch.Tensor:
    """Build a float32 filter tensor for `upfirdn2d` from a list, array or tensor.

    Rule for the shape: a 1-D input stays 1-D (separable) when `separable` is None or True,
    and becomes its outer product `f[:, None] * f[None, :]` when `separable=False`; a 2-D
    input stays 2-D (`separable=True` is an error for it). A scalar or None is the 1-tap
    filter [1]. With `normalize`, the (final) filter sums to 1; then it is multiplied by
    `gain ** (ndim / 2)` so that the total gain is `gain`, and flipped if `flip_filter`.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32).detach().clone()
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2):
        raise ValueError(f"setup_filter: f must be 1-D or 2-D, got ndim={f.ndim}")
    if f.numel() == 0:
        raise ValueError("setup_filter: f is empty")
    if f.ndim == 2 and separable:
        raise ValueError("setup_filter: separable=True needs a 1-D f, got a 2-D filter")
    if f.ndim == 1 and separable is False:
        f = f[:, None] * f[None, :]
    if normalize:
        total = f.sum()
        if total.abs() < 1e-12:
            raise ValueError("setup_filter: cannot normalize f, its taps sum to 0")
        f = f / total
    f = f * (gain ** (f.ndim / 2))
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f.to(device)


# ----------------------------------------------------------------------------------------
# Geometry: the scalar parameters of one upfirdn2d call, and their validation.


@dataclasses.dataclass(frozen=True)
class _Geometry:
    upx: int
    upy: int
    downx: int
    downy: int
    px0: int
    px1: int
    py0: int
    py1: int
    flip: bool

    def out_size(self, in_h: int, in_w: int, fh: int, fw: int) -> tuple[int, int]:
        out_h = (in_h * self.upy + self.py0 + self.py1 - fh + self.downy) // self.downy
        out_w = (in_w * self.upx + self.px0 + self.px1 - fw + self.downx) // self.downx
        return out_h, out_w

    def adjoint(self, in_h: int, in_w: int, fh: int, fw: int) -> "_Geometry":
        """Geometry of the gradient: upfirdn2d(dy, f) with this geometry equals d(loss)/dx.

        The forward map is D_down . C_f . P_pad . U_up. Its adjoint, per axis, is
        U_up^T . P^T . C_f^T . D_down^T, and each factor is again an upfirdn2d piece:
        D_down^T inserts zeros (up' = down), U_up^T keeps every up-th sample (down' = up),
        C_f^T is the full convolution with the flipped filter (pad taps-1 on both sides,
        flip' = not flip), and P^T crops what P padded (subtract pad0 at the start). The
        end padding is chosen so that the padded length is in*up + taps - 1: the filter
        then yields in*up samples and keeping every up-th gives exactly `in` of them:
            pad0' = taps - 1 - pad0,   pad1' = in*up + pad0 - out*down.
        """
        out_h, out_w = self.out_size(in_h, in_w, fh, fw)
        return _Geometry(
            upx=self.downx,
            upy=self.downy,
            downx=self.upx,
            downy=self.upy,
            px0=fw - 1 - self.px0,
            px1=in_w * self.upx + self.px0 - out_w * self.downx,
            py0=fh - 1 - self.py0,
            py1=in_h * self.upy + self.py0 - out_h * self.downy,
            flip=not self.flip,
        )


def _check_args(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"upfirdn2d: x must be a 4-D NCHW tensor, got {got}")
    fw, fh = get_filter_size(f)
    out_h, out_w = geom.out_size(x.shape[2], x.shape[3], fh, fw)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"upfirdn2d: output size would be {out_h}x{out_w} (must be positive) for input "
            f"{x.shape[2]}x{x.shape[3]}, up=({geom.upx}, {geom.upy}), padding=[{geom.px0}, "
            f"{geom.px1}, {geom.py0}, {geom.py1}], filter {fh}x{fw}, down=({geom.downx}, "
            f"{geom.downy}); use a larger input or more padding"
        )


# ----------------------------------------------------------------------------------------
# Reference path: plain PyTorch, differentiable to any order through autograd.


def _pad_or_crop(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    # Pad the positive parts first, then crop the negative ones by slicing: this keeps the
    # "output index q reads input index q - pad0" meaning even when one side's crop is
    # larger than the image and the other side's padding makes up for it.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    h, w = x.shape[2], x.shape[3]
    return x[:, :, max(-py0, 0) : h - max(-py1, 0), max(-px0, 0) : w - max(-px1, 0)]


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> torch.Tensor:
    """Reference upfirdn2d; `f` (1-D or 2-D) already carries the gain."""
    n, c, h, w = x.shape
    if geom.upx > 1 or geom.upy > 1:
        # Zero insertion: give every pixel a trailing block of up-1 zeros along each axis.
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, geom.upx - 1, 0, 0, 0, geom.upy - 1])
        x = x.reshape(n, c, h * geom.upy, w * geom.upx)
    x = _pad_or_crop(x, geom.px0, geom.px1, geom.py0, geom.py1)
    f = f.to(device=x.device, dtype=x.dtype)
    if not geom.flip:
        f = f.flip(list(range(f.ndim)))  # conv2d correlates; flipping makes it a convolution
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.shape[0]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), groups=c)
    return x[:, :, :: geom.downy, :: geom.downx]


def _ref_kernel(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> torch.Tensor:
    """The reference as a stand-in for the CUDA kernel (2-D filter, no autograd needed)."""
    return _upfirdn2d_ref(x, f, geom)


# ----------------------------------------------------------------------------------------
# CPU fast path. Short filters (the networks' 4-tap blur, made 2-D): one depthwise conv, or a
# transposed depthwise conv for upsampling, which never touches inserted zeros. Measured
# against two separable shifted-sum passes, forward+backward at the networks' sizes (2-core
# CPU): 1.7-1.9x for filtering, 1.6x for 2x upsampling, 2.4x for 2x downsampling. Longer
# separable filters: sums of shifted slices, one axis at a time (the taps of a 2-D conv would
# grow with their square).
# Both are used through `_UpFirDn2d`, so gradients (any order) come from the adjoint
# geometry exactly as on the CUDA path.


def _taps_1d(x: torch.Tensor, h: Sequence[float], dim: int, up: int, down: int, p0: int, p1: int) -> torch.Tensor:
    """One axis of upfirdn2d: y[q] = sum_k h[k] * s[q*down + k], s = x zero-inserted (up), padded (p0, p1).

    ``h`` is the correlation filter. For up > 1 (down == 1) the output splits into `up`
    phases; phase r reads only the taps k with (r + k - p0) % up == 0, each a plain shift
    of x, so the inserted zeros are never touched.
    """
    length = x.shape[dim]
    n = len(h)
    out_len = (length * up + p0 + p1 - n + down) // down
    if up == 1:
        x = _pad_axis(x, dim, max(p0, 0), max(p1, 0))
        start = max(-p0, 0)  # a negative pad crops
        return _shifted_sum(x, h, range(n), [start + k for k in range(n)], dim, out_len, down)
    if down != 1:  # not used by the networks: zero insertion, then the strided sum
        x = _zero_insert(x, dim, up)
        return _taps_1d(x, h, dim, 1, down, p0, p1)
    phase_len = -(-out_len // up)
    # Phase r, output t: taps k with (r + k - p0) % up == 0 read x[t + (r + k - p0) // up].
    shifts = {r: [(k, (r + k - p0) // up) for k in range(n) if (r + k - p0) % up == 0] for r in range(up)}
    lo = min([0] + [s for taps in shifts.values() for _, s in taps])
    hi = max([0] + [s + phase_len - length for taps in shifts.values() for _, s in taps])
    xp = _pad_axis(x, dim, -lo, hi)
    # Phases interleave: output index t*up + r, written in place into one buffer [..., t, r, ...].
    shape = list(x.shape)
    shape[dim] = phase_len
    y = x.new_empty(shape[:x.ndim + dim + 1] + [up] + shape[x.ndim + dim + 1:])
    for r in range(up):
        ks = [k for k, _ in shifts[r]]
        _shifted_sum(xp, h, ks, [s - lo for _, s in shifts[r]], dim, phase_len, 1, out=y.select(dim, r))
    shape[dim] = phase_len * up
    return y.reshape(shape).narrow(dim, 0, out_len)


def _pad_axis(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    if before == 0 and after == 0:
        return x
    pad = [before, after] if dim in (-1, x.ndim - 1) else [0, 0, before, after]
    return F.pad(x, pad)


def _zero_insert(x: torch.Tensor, dim: int, up: int) -> torch.Tensor:
    y = torch.stack([x] + [torch.zeros_like(x)] * (up - 1), dim=dim + 1 if dim >= 0 else dim)
    shape = list(x.shape)
    shape[dim] *= up
    return y.reshape(shape)


def _shifted_sum(x: torch.Tensor, h: Sequence[float], taps, starts, dim: int, length: int,
                 step: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum over taps k of h[k] * x[starts_k : starts_k + step*(length-1) + 1 : step] along dim (into ``out``)."""
    first = True
    for k, start in zip(taps, starts):
        view = x.narrow(dim, start, step * (length - 1) + 1)
        if step > 1:
            view = view[..., ::step] if dim in (-1, x.ndim - 1) else view[..., ::step, :]
        if first and out is None:
            out = view * h[k]
        elif first:
            torch.mul(view, h[k], out=out)
        else:
            out.add_(view, alpha=h[k])
        first = False
    if first:  # every tap fell on inserted zeros
        shape = list(x.shape)
        shape[dim] = length
        out = x.new_zeros(shape) if out is None else out.zero_()
    return out


def _conv_padding(pad0: int, pad1: int, stride: int, size: int, taps: int) -> Optional[Tuple[int, int]]:
    """(symmetric conv padding, leading outputs to skip) equal to padding (pad0, pad1) before a
    conv with `stride` over `size` samples, or None where there is none (a crop, or a
    misaligned extra front pad).

    Two candidates: max(pad0, pad1) on both sides, skipping the outputs that the extra front
    padding adds (needs that extra to be a multiple of the stride); or, when pad1 > pad0,
    pad0 on both sides, enough when the wanted outputs never read past the first pad1 - pad0
    zeros of the end (then the conv makes at least as many outputs, starting at the same place).
    """
    if pad0 < 0 or pad1 < 0:
        return None
    wanted = (size + pad0 + pad1 - taps) // stride + 1
    if pad1 > pad0 and (size + 2 * pad0 - taps) // stride + 1 >= wanted:
        return pad0, 0
    pad = max(pad0, pad1)
    extra_front = pad - pad0
    if extra_front % stride:
        return None
    return pad, extra_front // stride


def _depthwise_kernel(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> torch.Tensor:
    """upfirdn2d with a full 2-D filter as one depthwise (transposed) convolution.

    Without upsampling: pad/crop, then a depthwise conv with stride `down` (only kept outputs
    are computed). With upsampling (and down == 1): conv_transpose2d with stride `up` is the
    full convolution of the zero-inserted x with f, c[t] = sum_j f[j] z[t - j]; output q of
    upfirdn2d reads c[q + taps - 1 - pad0] (zero outside c), a pad/crop of c.
    """
    if x.dtype == torch.bfloat16 and (geom.upx > 1 or geom.upy > 1):
        # oneDNN's depthwise transposed convolution is 10-20x slower in bf16 than in fp32 on a
        # CPU ([4,128,32,32], stride 2: 20.5 against 1.0 ms), so compute it in fp32. That is
        # the backward of every bf16 downsampling (D's blocks) too.
        return _depthwise_kernel(x.float(), f, geom).to(x.dtype)
    c = x.shape[1]
    fh, fw = f.shape
    f = f.to(device=x.device, dtype=x.dtype)
    if geom.upx == geom.upy == 1:
        w = f if geom.flip else f.flip([0, 1])  # conv2d correlates; flipped, it convolves
        w = w[None, None].expand(c, 1, fh, fw)
        stride = (geom.downy, geom.downx)
        pads = (_conv_padding(geom.py0, geom.py1, geom.downy, x.shape[2], fh),
                _conv_padding(geom.px0, geom.px1, geom.downx, x.shape[3], fw))
        if None in pads:
            x = _pad_or_crop(x, geom.px0, geom.px1, geom.py0, geom.py1)
            return F.conv2d(x, w, stride=stride, groups=c)
        # The conv pads internally (no padded copy of x); outputs beyond the wanted ones are dropped.
        (pad_y, skip_y), (pad_x, skip_x) = pads
        out_h, out_w = geom.out_size(x.shape[2], x.shape[3], fh, fw)
        y = F.conv2d(x, w, stride=stride, padding=(pad_y, pad_x), groups=c)
        if y.shape[2:] == (out_h, out_w):
            return y
        return y[:, :, skip_y:skip_y + out_h, skip_x:skip_x + out_w].clone(memory_format=torch.preserve_format)
    if geom.downx != 1 or geom.downy != 1:
        return _upfirdn2d_ref(x, f, geom)  # not used by the networks
    w = f.flip([0, 1]) if geom.flip else f  # conv_transpose2d convolves; flipped, it correlates
    w = w[None, None].expand(c, 1, fh, fw)
    out_h, out_w = geom.out_size(x.shape[2], x.shape[3], fh, fw)
    start_y, start_x = fh - 1 - geom.py0, fw - 1 - geom.px0
    full_h, full_w = (x.shape[2] - 1) * geom.upy + fh, (x.shape[3] - 1) * geom.upx + fw
    end_y, end_x = full_h - start_y - out_h, full_w - start_x - out_w
    if 0 <= start_y - end_y < geom.upy and 0 <= start_x - end_x < geom.upx and end_y >= 0 and end_x >= 0:
        # The crop of the full output is conv_transpose2d's own padding (start rows off both
        # ends, output_padding rows given back at the end): no cropped copy.
        return F.conv_transpose2d(x, w, stride=(geom.upy, geom.upx), padding=(start_y, start_x),
                                  output_padding=(start_y - end_y, start_x - end_x), groups=c)
    full = F.conv_transpose2d(x, w, stride=(geom.upy, geom.upx), groups=c)
    return _pad_or_crop(full, -start_x, out_w - full.shape[3] + start_x, -start_y, out_h - full.shape[2] + start_y)


def _cpu_kernel(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> torch.Tensor:
    """upfirdn2d on a CPU: a full 2-D filter as a depthwise convolution (`_depthwise_kernel`);
    a one-axis filter ([1, taps]: x axis; [taps, 1]: y axis) by shifted slices."""
    fh, fw = f.shape
    if fh != 1 and fw != 1:
        return _depthwise_kernel(x, f, geom)
    h = f.reshape(-1)
    h = (h if geom.flip else h.flip(0)).tolist()  # the correlation taps
    if fh == 1:
        x = _taps_1d(x, h, -1, geom.upx, geom.downx, geom.px0, geom.px1)
        # The y part of this pass (up/down/pad with a 1-tap filter of value 1).
        return _taps_1d(x, [1.0], -2, geom.upy, geom.downy, geom.py0, geom.py1) \
            if (geom.upy, geom.downy, geom.py0, geom.py1) != (1, 1, 0, 0) else x
    x = _taps_1d(x, h, -2, geom.upy, geom.downy, geom.py0, geom.py1)
    return _taps_1d(x, [1.0], -1, geom.upx, geom.downx, geom.px0, geom.px1) \
        if (geom.upx, geom.downx, geom.px0, geom.px1) != (1, 1, 0, 0) else x


# ----------------------------------------------------------------------------------------
# CUDA path: an autograd.Function whose backward is again upfirdn2d (any order by construction).

Kernel = Callable[[torch.Tensor, torch.Tensor, _Geometry], torch.Tensor]


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with a 2-D filter through `kernel`; the filter gets no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, geom: _Geometry, kernel: Kernel) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.geom = geom
        ctx.kernel = kernel
        ctx.in_hw = (x.shape[2], x.shape[3])
        return kernel(x, f, geom)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (f,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            fh, fw = f.shape
            bgeom = ctx.geom.adjoint(ctx.in_hw[0], ctx.in_hw[1], fh, fw)
            dx = _UpFirDn2d.apply(dy, f, bgeom, ctx.kernel)
        return dx, None, None, None


def _upfirdn2d_function(x: torch.Tensor, f: torch.Tensor, geom: _Geometry, kernel: Kernel) -> torch.Tensor:
    """Run upfirdn2d through `_UpFirDn2d`; a 1-D filter becomes an x pass and a y pass."""
    if f.ndim == 2:
        return _UpFirDn2d.apply(x, f, geom, kernel)
    # The x and y parts of a separable op commute, so do all of x first, then all of y.
    gx = dataclasses.replace(geom, upy=1, downy=1, py0=0, py1=0)
    gy = dataclasses.replace(geom, upx=1, downx=1, px0=0, px1=0)
    x = _UpFirDn2d.apply(x, f[None, :], gx, kernel)
    return _UpFirDn2d.apply(x, f[:, None], gy, kernel)


def _cuda_kernel(x: torch.Tensor, f: torch.Tensor, geom: _Geometry) -> torch.Tensor:
    module = _plugin.get()
    if module is None:  # only reachable if the plugin vanished after dispatch
        raise RuntimeError(f"upfirdn2d: the CUDA plugin is unavailable ({_plugin.failed_reason})")
    stream = torch.cuda.current_stream(x.device).cuda_stream
    g = geom
    return module.upfirdn2d(
        x.contiguous(), f.contiguous(), g.upx, g.upy, g.downx, g.downy,
        g.px0, g.px1, g.py0, g.py1, g.flip, stream,
    )


# ----------------------------------------------------------------------------------------
# Public ops.


def _choose_impl(x: torch.Tensor, f: torch.Tensor, impl: Optional[str]) -> str:
    if impl not in (None, "ref", "cuda"):
        raise ValueError(f"impl must be None, 'ref' or 'cuda', got {impl!r}")
    if impl == "ref":
        return "ref"
    if impl == "cuda":
        if not x.is_cuda:
            raise ValueError("upfirdn2d: impl='cuda' needs x on a CUDA device, got a tensor on " + str(x.device))
        if f.requires_grad:
            raise ValueError("upfirdn2d: impl='cuda' treats f as a constant; use impl='ref' to differentiate w.r.t. f")
        if f.numel() > MAX_CUDA_FILTER_TAPS:
            raise ValueError(f"upfirdn2d: impl='cuda' takes at most {MAX_CUDA_FILTER_TAPS} filter taps, got {f.numel()}")
        return "cuda" if _plugin.get() is not None else "ref"  # get() warns once on failure
    usable = x.is_cuda and not f.requires_grad and f.numel() <= MAX_CUDA_FILTER_TAPS
    return "cuda" if usable and _plugin.get() is not None else "ref"


def upfirdn2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample `x` [N, C, H, W].

    `f`: [fh, fw], [taps] (separable) or None (identity); multiplied by `gain ** (f.ndim / 2)`
    so the total gain is `gain`. Output size per axis: (in*up + pad0 + pad1 - taps + down) // down.
    """
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device if isinstance(x, torch.Tensor) else None)
    get_filter_size(f)  # checks f's ndim with a clear message
    upx, upy = parse_scaling(up, "up")
    downx, downy = parse_scaling(down, "down")
    px0, px1, py0, py1 = parse_padding(padding)
    geom = _Geometry(upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter))
    _check_args(x, f, geom)
    f = f * (gain ** (f.ndim / 2))
    if _choose_impl(x, f, impl) == "cuda":
        return _upfirdn2d_function(x, f.to(device=x.device, dtype=torch.float32), geom, _cuda_kernel)
    if impl is None and x.device.type == "cpu" and not f.requires_grad:
        if f.ndim == 1 and f.numel() <= _CPU_DEPTHWISE_MAX_TAPS and not (max(upx, upy) > 1 and max(downx, downy) > 1):
            # Short separable filters (the networks' 4-tap blur) as one 2-D depthwise
            # (transposed) conv: faster on a CPU than two shifted-sum passes, forward and
            # backward (the adjoint is the same kind of op); figures in bench/ops.py.
            f = f[:, None] * f[None, :]
        return _upfirdn2d_function(x, f, geom, _cpu_kernel)
    return _upfirdn2d_ref(x, f, geom)


def filter2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Filter `x` keeping its size; `padding` is extra padding on top of that."""
    fw, fh = get_filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    # Centre the filter: total padding taps-1, the odd one out at the start.
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Upsample `x` by `up` (output in*up per axis) with the interpolation filter `f`.

    The gain is multiplied by upx*upy, so a normalised filter keeps the image's mean.
    """
    upx, upy = parse_scaling(up, "up")
    fw, fh = get_filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    # Total padding taps-1 keeps in*up samples; this split puts output pixel j at input
    # coordinate (j + 0.5) / up - 0.5, i.e. the up-sampled grid stays centred on the input.
    sx0, sy0 = (fw + upx - 1) // 2, (fh + upy - 1) // 2
    pad = [px0 + sx0, px1 + fw - 1 - sx0, py0 + sy0, py1 + fh - 1 - sy0]
    return upfirdn2d(x, f, up=(upx, upy), padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Downsample `x` by `down` (output in // down per axis) after the anti-aliasing filter `f`."""
    downx, downy = parse_scaling(down, "down")
    fw, fh = get_filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    # Total padding taps-down keeps in/down samples; the split centres output pixel j on
    # input coordinate (j + 0.5) * down - 0.5.
    sx0, sy0 = (fw - downx + 1) // 2, (fh - downy + 1) // 2
    pad = [px0 + sx0, px1 + fw - downx - sx0, py0 + sy0, py1 + fh - downy - sy0]
    return upfirdn2d(x, f, down=(downx, downy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)
