"""2-D convolution fused with FIR-filtered up/down-sampling (StyleGAN2-style), via upfirdn2d and conv2d_gradfix.

Definition (what the result equals, up to floating-point rounding), per spatial axis with
input size L, kernel size k, filter size n (`f` taps), factors `up`, `down` and user padding
(p0, p1):

    u = upfirdn2d(x, f, up=up, padding=[a0 + p0, a1 + p1], gain=up**2, flip_filter=flip_filter)
    c = F.conv2d(u, w if flip_weight else w.flip([2, 3]), groups=groups)     # "valid", no padding
    y = c[:, :, ::down, ::down]

with the filter-alignment pads  a0 = (n + up - down) // 2,  a1 = n - 1 - a0.
When up == down == 1 the filter is not used at all and u is just x zero-padded by (p0, p1).

Where the alignment pads come from: put pixel centres at half-integers (align_corners=False).
After zero insertion, input pixel i sits at index up*i, whose centre in the upsampled grid is
up*i + (up-1)/2. Filter output m (window of n taps starting at m - a0) is centred at
zero-insertion index m - a0 + (n-1)/2, i.e. at upsampled coordinate m - a0 + (n-1)/2 + (up-1)/2.
Output q reads m = down*q and should be centred at down*q + (down-1)/2 (the centre of the
down x down block it summarises). Solving gives a0 = (n + up - down - 1)/2, rounded up:
a0 = (n + up - down) // 2. a0 + a1 = n - 1 keeps the size at L*up, so a k x k kernel with
padding k//2 (odd k) gives an output of L*up/down pixels (rounded up). `padding` is thus the
conv's padding in pixels of the upsampled image; the pixels it adds are the filter's tails
(zeros when up == 1), which is what lets the fused paths below match the definition exactly.

Weights: `w` is [out, in/groups, kh, kw]. flip_weight=True (default) applies `w` as F.conv2d
and nn.Conv2d do (cross-correlation), so a plain conv layer's weights behave the same here;
flip_weight=False applies `w` as a true convolution (kernel flipped).

Fused paths (all equal to the definition because convolution and FIR filtering commute on
zero-extended signals, and only one crop happens):
* up > 1, k > 1: transposed conv with stride `up` (= conv of the zero-inserted x), then
  upfirdn2d filtering with pads shifted by the kernel size, and the `down` subsampling;
* up > 1, k = 1: upfirdn2d first (the 1x1 conv commutes with everything);
* down > 1: filtering with the pads, then a strided conv (1x1 kernels: filter + subsample first).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from torch_utils.ops import conv2d_gradfix
from torch_utils.ops.upfirdn2d import get_filter_size, parse_padding, upfirdn2d

__all__ = ["conv2d_resample", "alignment_padding"]


def alignment_padding(taps: int, up: int, down: int) -> tuple[int, int]:
    """Filter pads (before, after) that keep pixel centres aligned; they sum to taps - 1."""
    before = (taps + up - down) // 2
    return before, taps - 1 - before


def _check(x: torch.Tensor, w: torch.Tensor, up: int, down: int, groups: int) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample: x and w must be 4-D, got x {tuple(x.shape)} and w {tuple(w.shape)}")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups != 0:
        raise ValueError(f"conv2d_resample: w {tuple(w.shape)} does not fit x with {x.shape[1]} channels "
                         f"and groups={groups}")
    for name, factor in (("up", up), ("down", down)):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"conv2d_resample: {name} must be a positive int, got {factor!r}")


def _transpose_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[out, in/g, kh, kw] -> [in, out/g, kh, kw], the layout conv_transpose2d expects."""
    out_ch, in_per_group, kh, kw = w.shape
    w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
    return w.reshape(groups * in_per_group, out_ch // groups, kh, kw)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding: Union[int, Sequence[int]] = 0, groups: int = 1,
                    flip_weight: bool = True, flip_filter: bool = False) -> torch.Tensor:
    """Convolve x [N,C,H,W] with w, upsampling by `up` before and downsampling by `down` after (module docstring)."""
    _check(x, w, up, down, groups)
    px0, px1, py0, py1 = parse_padding(padding)
    kh, kw = int(w.shape[2]), int(w.shape[3])
    w_corr = w if flip_weight else w.flip([2, 3])  # The kernel as F.conv2d (correlation) uses it.

    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and min(px0, py0) >= 0:
            return conv2d_gradfix.conv2d(x, w_corr, padding=(py0, px0), groups=groups)
        return conv2d_gradfix.conv2d(upfirdn2d(x, None, padding=[px0, px1, py0, py1]), w_corr, groups=groups)

    fw, fh = get_filter_size(f)
    ax0, ax1 = alignment_padding(fw, up, down)
    ay0, ay1 = alignment_padding(fh, up, down)
    pads = [ax0 + px0, ax1 + px1, ay0 + py0, ay1 + py1]  # Total upfirdn2d padding of the definition.
    gain = up * up

    if kh == 1 and kw == 1:  # A 1x1 conv commutes with filtering and subsampling.
        x = upfirdn2d(x, f, up=up, down=down, padding=pads, flip_filter=flip_filter, gain=gain)
        return conv2d_gradfix.conv2d(x, w_corr, groups=groups)

    if up == 1:  # down > 1: filter at full resolution, then the conv evaluated only where kept.
        x = upfirdn2d(x, f, padding=pads, flip_filter=flip_filter)
        return conv2d_gradfix.conv2d(x, w_corr, stride=down, groups=groups)

    # up > 1: conv_transpose2d(stride=up) is the true convolution of the zero-inserted x with
    # its (flipped-correlation) kernel; filtering afterwards with pads shifted by the kernel
    # size selects the same window as the definition (derivation in the module docstring).
    w_true = _transpose_weight(w_corr.flip([2, 3]), groups)
    x = conv2d_gradfix.conv_transpose2d(x, w_true, stride=up, groups=groups)
    shifted = [pads[0] - (kw - 1), pads[1] - (kw - up), pads[2] - (kh - 1), pads[3] - (kh - up)]
    return upfirdn2d(x, f, down=down, padding=shifted, flip_filter=flip_filter, gain=gain)
