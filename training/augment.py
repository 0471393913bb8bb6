"""Adaptive discriminator augmentation (ADA): random geometric and colour transforms of D's inputs, and the p controller.

Written from the description in Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data" (sections 2-3 and appendix B); no code was copied.

How it is used by the training loop
-----------------------------------
Every image that the discriminator sees, real or generated, goes through the same
`AugmentPipe` first. Each transform is applied to each image independently with
probability `p * multiplier`. Because the pipe is differentiable with respect to
the images, the generator is trained through augmented fakes, and an R1 penalty
taken on the un-augmented reals can differentiate through the pipe twice.

The overall probability `p` is a buffer of the pipe (so it is saved with its
`state_dict`) that `AdaptiveP` adjusts from the overfitting heuristic
r_t = E[sign(D(real))]:

    ada = AdaptiveP(target=0.6, speed_kimg=500, interval=4)
    for each discriminator step:
        real_logits = D(augment_pipe(real_images), c)
        ada.accumulate(real_logits)                # cheap, stays on the device
        ada.tick(augment_pipe, batch_size)         # every `interval` calls: p += ...

`tick` is `pop_mean` followed by `update`; a loop that wants to all-reduce the
statistics across GPUs passes `all_reduce` to `tick`/`pop_mean`, or calls
`update(pipe, r_t, batch_size)` itself with an r_t it computed.

Design choices
--------------
- Geometric transforms (x-flip, 90-degree rotations, integer translation, isotropic
  scaling, arbitrary rotation, anisotropic scaling, fractional translation) are
  composed into ONE 3x3 homogeneous matrix per image, in pixel units with the origin
  at the image centre, so the image is resampled once. Resampling is bilinear with
  reflection padding (`grid_sample_gradfix.grid_sample(..., padding_mode='reflection')`,
  F.grid_sample's values, twice differentiable on every torch); the paper's
  wavelet-filtered 2x upsampling before the warp is NOT implemented. Bilinear warps
  soften images that are rotated or scaled by non-trivial amounts; flips, 90-degree
  rotations and integer translations sample exactly at pixel centres and are exact
  (for power-of-two sizes the sample positions are exact in floating point).
  The matrices map OUTPUT pixel positions to INPUT positions (what grid_sample needs);
  they are composed from the inverses of the forward transforms, so no matrix is
  ever inverted numerically.
- Colour transforms (brightness, contrast, luma flip, hue rotation, saturation) are
  composed into ONE 4x4 affine colour matrix per image acting on RGB values in
  [-1, 1]. "Luma" is the paper's axis v = (1, 1, 1) / sqrt(3) (the grey axis), and
  contrast scales values about 0, the middle of the range, as in the paper.
- Images with C = 3k channels (e.g. the 6-channel dual-discriminator input of an
  image and its raw neural render stacked on the channel axis) get the geometric warp
  on all channels and the colour matrix on every consecutive RGB triplet, with the
  SAME random parameters for all triplets of one image, so the image and its raw
  render stay aligned. Single-channel images get the grey-level part of the colour
  matrix. Other channel counts are rejected when colour transforms are enabled.
- Random numbers come only from torch's global generator on the images' device, in a
  fixed order that does not depend on p, so the output is a deterministic function of
  (images, p, RNG state) and the number of random draws does not depend on p.
- `p == 0` returns the input unchanged (exactly, and without resampling).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from torch_utils.ops import grid_sample_gradfix

__all__ = ["AugmentPipe", "AdaptiveP", "AUGMENT_PRESETS", "build_augment_pipe"]

_GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
_COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")

AUGMENT_PRESETS: Dict[str, Dict[str, float]] = {
    "bgc": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1,
                brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "bg": dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1),
    "c": dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
    "noaug": {},
}


# ----------------------------------------------------------------------------
# Batched homogeneous matrices. Every function takes per-image parameters of shape [N].

def _eye(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(size, dtype=like.dtype, device=like.device).expand(n, size, size).clone()


def translate2d(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """[N,3,3] matrices that move points by (tx, ty)."""
    m = _eye(tx.shape[0], 3, tx)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def scale2d(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """[N,3,3] matrices that scale x by sx and y by sy about the origin."""
    m = _eye(sx.shape[0], 3, sx)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def rotate2d_cos_sin(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[N,3,3] rotations about the origin given cos/sin (exact cos/sin keep 90-degree turns exact)."""
    m = _eye(cos.shape[0], 3, cos)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    """[N,3,3] rotations by angle theta (radians) about the origin."""
    return rotate2d_cos_sin(torch.cos(theta), torch.sin(theta))


def translate3d(t: torch.Tensor) -> torch.Tensor:
    """[N,4,4] colour matrices that add t [N] to R, G and B."""
    m = _eye(t.shape[0], 4, t)
    m[:, 0, 3], m[:, 1, 3], m[:, 2, 3] = t, t, t
    return m


def scale3d(s: torch.Tensor) -> torch.Tensor:
    """[N,4,4] colour matrices that multiply R, G and B by s [N]."""
    m = _eye(s.shape[0], 4, s)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = s, s, s
    return m


def _luma_projector(like: torch.Tensor) -> torch.Tensor:
    """v v^T for the grey axis v = (1,1,1,0)/sqrt(3), as a [4,4] matrix."""
    v = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=like.dtype, device=like.device) / math.sqrt(3.0)
    return torch.outer(v, v)


def rotate3d_luma(theta: torch.Tensor) -> torch.Tensor:
    """[N,4,4] rotations of RGB about the grey axis by theta (Rodrigues' formula)."""
    n = theta.shape[0]
    a = 1.0 / math.sqrt(3.0)
    # Cross-product matrix [v]_x of v = (a, a, a).
    cross = torch.tensor([[0.0, -a, a], [a, 0.0, -a], [-a, a, 0.0]], dtype=theta.dtype, device=theta.device)
    vvt = _luma_projector(theta)[:3, :3]
    eye3 = torch.eye(3, dtype=theta.dtype, device=theta.device)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    m = _eye(n, 4, theta)
    m[:, :3, :3] = c * eye3 + s * cross + (1 - c) * vvt
    return m


def _select(mask: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """m where mask [N] is True, exactly the identity elsewhere."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    return torch.where(mask[:, None, None], m, eye)


# ----------------------------------------------------------------------------
# Applying the matrices to images.

def warp_images(images: torch.Tensor, out_to_in: torch.Tensor) -> torch.Tensor:
    """Resample images [N,C,H,W] with per-image [N,3,3] matrices mapping output to input pixel positions.

    Positions are in pixels with the origin at the image centre (pixel (i, j) has its
    centre at x = j + 0.5 - W/2, y = i + 0.5 - H/2; x right, y down). Bilinear
    interpolation, reflection about the image border for positions outside.
    """
    n, _, h, w = images.shape
    if out_to_in.shape != (n, 3, 3):
        raise ValueError(f"warp_images: out_to_in must have shape [{n},3,3], got {tuple(out_to_in.shape)}")
    dtype = out_to_in.dtype
    xs = torch.arange(w, dtype=dtype, device=images.device) + (0.5 - w / 2)
    ys = torch.arange(h, dtype=dtype, device=images.device) + (0.5 - h / 2)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1)               # [H,W,3]
    src = torch.einsum("nij,hwj->nhwi", out_to_in[:, :2, :], coords)          # [N,H,W,2]
    # align_corners=False: normalised -1..1 spans the outer edges, i.e. pixel x / (W/2).
    half = torch.tensor([w / 2, h / 2], dtype=dtype, device=images.device)
    grid = (src / half).to(images.dtype)
    # Through grid_sample_gradfix: R1 differentiates D's gradient back through this warp, and
    # torch 2.11 has no derivative for grid_sample's backward (2.13 has).
    return grid_sample_gradfix.grid_sample(images, grid, padding_mode="reflection")


def apply_colour(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Apply per-image [N,4,4] affine colour matrices to every RGB triplet of images [N,3k,H,W] (or [N,1,H,W])."""
    n, c, h, w = images.shape
    m = colour.to(images.dtype)
    if c % 3 == 0:
        x = images.reshape(n, c // 3, 3, h * w)
        # The same matrix for every triplet of an image (broadcast over the triplet axis).
        out = torch.matmul(m[:, None, :3, :3], x) + m[:, None, :3, 3:]
        return out.reshape(n, c, h, w)
    if c == 1:
        # A grey pixel g is the RGB point (g, g, g); keep the mean of the transformed RGB.
        gain = m[:, :3, :3].sum(dim=2).mean(dim=1)
        offset = m[:, :3, 3].mean(dim=1)
        return images * gain[:, None, None, None] + offset[:, None, None, None]
    raise ValueError(f"AugmentPipe: colour transforms need images with 1 or 3k channels, got {c} channels")


# ----------------------------------------------------------------------------

class AugmentPipe(torch.nn.Module):
    """Random per-image geometric and colour augmentation of images in [-1, 1]; see the module docstring."""

    def __init__(self, xflip: float = 0, rotate90: float = 0, xint: float = 0, scale: float = 0,
                 rotate: float = 0, aniso: float = 0, xfrac: float = 0, brightness: float = 0,
                 contrast: float = 0, lumaflip: float = 0, hue: float = 0, saturation: float = 0,
                 xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1.0,
                 aniso_std: float = 0.2, xfrac_std: float = 0.125, brightness_std: float = 0.2,
                 contrast_std: float = 0.5, hue_max: float = 1.0, saturation_std: float = 1.0) -> None:
        super().__init__()
        # Kept for checkpoints: the JSON of constructor arguments rebuilds the pipe.
        self.init_kwargs = dict(locals())
        for key in ("self", "__class__"):
            self.init_kwargs.pop(key, None)
        for name, value in self.init_kwargs.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentPipe: {name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        # Overall augmentation probability, adjusted by AdaptiveP; saved in state_dict.
        self.register_buffer("p", torch.zeros([]))

    def extra_repr(self) -> str:
        on = [f"{k}={getattr(self, k):g}" for k in _GEOMETRIC + _COLOUR if getattr(self, k) > 0]
        return f"p={float(self.p):.4f}, " + (", ".join(on) if on else "no transforms")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment images [N,C,H,W]; differentiable with respect to images."""
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"AugmentPipe: images must be a float tensor [N,C,H,W], got "
                             f"{images.dtype} of shape {tuple(images.shape)}")
        # One host sync per call; it makes p = 0 an exact identity with no resampling.
        if not float(self.p) > 0:
            return images
        n, c, h, w = images.shape
        # Parameters in float64 when the images are, else float32 (even for half images).
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        p = self.p.to(device=images.device, dtype=dtype)
        if any(getattr(self, k) > 0 for k in _GEOMETRIC):
            images = warp_images(images, self._geometric_matrices(n, w, h, p))
        if any(getattr(self, k) > 0 for k in _COLOUR):
            if c != 1 and c % 3 != 0:
                raise ValueError(f"AugmentPipe: colour transforms need images with 1 or 3k channels, "
                                 f"got {c} channels")
            images = apply_colour(images, self._colour_matrices(n, p))
        return images

    # Each transform draws its own "is it applied" uniform number per image, then its parameters.
    def _applied(self, n: int, prob: torch.Tensor) -> torch.Tensor:
        return torch.rand(n, dtype=prob.dtype, device=prob.device) < prob

    def _geometric_matrices(self, n: int, w: int, h: int, p: torch.Tensor) -> torch.Tensor:
        """[N,3,3] output->input pixel maps: the product of the inverses of the forward transforms.

        The forward transform is xfrac . rot . aniso . rot . scale . xint . rot90 . xflip
        (x-flip applied first); its inverse is the product of the inverses in reverse order,
        built here by right-multiplying each step's inverse.
        """
        opts = dict(dtype=p.dtype, device=p.device)
        g = _eye(n, 3, p)
        if self.xflip > 0:
            flip = torch.randint(2, (n,), device=p.device).to(p.dtype)
            g = g @ _select(self._applied(n, p * self.xflip), scale2d(1 - 2 * flip, torch.ones(n, **opts)))
        if self.rotate90 > 0:
            quarter = torch.randint(4, (n,), device=p.device)
            # Exact cos/sin of -k*90 degrees (inverse rotation), so these turns resample exactly.
            cos = torch.tensor([1.0, 0.0, -1.0, 0.0], **opts)[quarter]
            sin = torch.tensor([0.0, -1.0, 0.0, 1.0], **opts)[quarter]
            g = g @ _select(self._applied(n, p * self.rotate90), rotate2d_cos_sin(cos, sin))
        if self.xint > 0:
            t = (torch.rand(n, 2, **opts) * 2 - 1) * self.xint_max
            tx, ty = torch.round(t[:, 0] * w), torch.round(t[:, 1] * h)  # whole pixels
            g = g @ _select(self._applied(n, p * self.xint), translate2d(-tx, -ty))
        if self.scale > 0:
            s = torch.exp2(torch.randn(n, **opts) * self.scale_std)
            g = g @ _select(self._applied(n, p * self.scale), scale2d(1 / s, 1 / s))
        # Rotation is split into two independent draws (before and after anisotropic
        # scaling, so that the stretch has a random direction); each uses a probability
        # chosen so that at least one of them happens with probability p * rotate.
        p_rot = 1 - torch.sqrt((1 - p * self.rotate).clamp(0, 1))
        if self.rotate > 0:
            theta = (torch.rand(n, **opts) * 2 - 1) * math.pi * self.rotate_max
            g = g @ _select(self._applied(n, p_rot), rotate2d(-theta))
        if self.aniso > 0:
            s = torch.exp2(torch.randn(n, **opts) * self.aniso_std)
            g = g @ _select(self._applied(n, p * self.aniso), scale2d(1 / s, s))
        if self.rotate > 0:
            theta = (torch.rand(n, **opts) * 2 - 1) * math.pi * self.rotate_max
            g = g @ _select(self._applied(n, p_rot), rotate2d(-theta))
        if self.xfrac > 0:
            t = torch.randn(n, 2, **opts) * self.xfrac_std
            g = g @ _select(self._applied(n, p * self.xfrac), translate2d(-t[:, 0] * w, -t[:, 1] * h))
        return g

    def _colour_matrices(self, n: int, p: torch.Tensor) -> torch.Tensor:
        """[N,4,4] forward colour matrices, each step left-multiplied onto the previous ones."""
        opts = dict(dtype=p.dtype, device=p.device)
        m = _eye(n, 4, p)
        if self.brightness > 0:
            b = torch.randn(n, **opts) * self.brightness_std
            m = _select(self._applied(n, p * self.brightness), translate3d(b)) @ m
        if self.contrast > 0:
            c = torch.exp2(torch.randn(n, **opts) * self.contrast_std)
            m = _select(self._applied(n, p * self.contrast), scale3d(c)) @ m
        vvt = _luma_projector(p)
        if self.lumaflip > 0:
            # Householder reflection: negates the grey component, keeps the chroma.
            flip = torch.randint(2, (n,), device=p.device).to(p.dtype)
            refl = _eye(n, 4, p) - 2 * flip[:, None, None] * vvt
            m = _select(self._applied(n, p * self.lumaflip), refl) @ m
        if self.hue > 0:
            theta = (torch.rand(n, **opts) * 2 - 1) * math.pi * self.hue_max
            m = _select(self._applied(n, p * self.hue), rotate3d_luma(theta)) @ m
        if self.saturation > 0:
            s = torch.exp2(torch.randn(n, **opts) * self.saturation_std)
            sat = _eye(n, 4, p)
            sat[:, :3, :3] = vvt[:3, :3] + (torch.eye(3, **opts) - vvt[:3, :3]) * s[:, None, None]
            m = _select(self._applied(n, p * self.saturation), sat) @ m
        return m


def build_augment_pipe(preset: str) -> AugmentPipe:
    """An AugmentPipe with the transforms of a named preset (see AUGMENT_PRESETS), starting at p = 0."""
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid presets: "
                         f"{', '.join(sorted(AUGMENT_PRESETS))}")
    return AugmentPipe(**AUGMENT_PRESETS[preset])


# ----------------------------------------------------------------------------

class AdaptiveP:
    """Adjusts an AugmentPipe's p from r_t = E[sign(D(real))] so that r_t stays near `target`.

    Every `interval` discriminator steps, p moves by
        sign(r_t - target) * batch_size * interval / (speed_kimg * 1000),
    i.e. p can go from 0 to 1 in `speed_kimg` thousand real images, and is clamped
    to [0, 1). State is plain numbers (JSON-friendly); p itself lives in the pipe.
    """

    P_MAX = 1.0 - 1e-6  # p stays below 1: at p = 1 every transform is always applied.

    def __init__(self, target: float = 0.6, speed_kimg: float = 500, interval: int = 4) -> None:
        if not -1 <= target <= 1:
            raise ValueError(f"AdaptiveP: target must lie in [-1, 1], got {target}")
        if not speed_kimg > 0:
            raise ValueError(f"AdaptiveP: speed_kimg must be > 0, got {speed_kimg}")
        if int(interval) != interval or interval < 1:
            raise ValueError(f"AdaptiveP: interval must be an integer >= 1, got {interval}")
        self.target, self.speed_kimg, self.interval = float(target), float(speed_kimg), int(interval)
        self._sign_sum: Optional[torch.Tensor] = None  # on the logits' device: no sync per step
        self._count = 0
        self._steps = 0          # D steps since the last update
        self.last_rt: Optional[float] = None

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of one D step's logits on real images to the running r_t statistics."""
        signs = torch.sign(real_logits.detach()).to(torch.float64).sum()
        self._sign_sum = signs if self._sign_sum is None else self._sign_sum + signs.to(self._sign_sum.device)
        self._count += real_logits.numel()

    def pop_mean(self, all_reduce: Optional[Callable[[torch.Tensor], None]] = None) -> Optional[float]:
        """r_t over everything accumulated since the last pop (None if nothing), and reset.

        all_reduce: optional in-place sum over processes (e.g. torch.distributed.all_reduce),
        applied to the tensor (sign sum, count) so that all ranks get the same r_t.
        """
        total = torch.zeros(2, dtype=torch.float64)
        if self._sign_sum is not None:
            total = torch.stack([self._sign_sum, torch.tensor(float(self._count), dtype=torch.float64,
                                                              device=self._sign_sum.device)])
        if all_reduce is not None:
            all_reduce(total)
        self._sign_sum, self._count = None, 0
        sign_sum, count = total.tolist()
        return None if count == 0 else sign_sum / count

    def update(self, pipe: AugmentPipe, real_logits_sign_mean: float, batch_size: int) -> float:
        """Move pipe.p one step from an r_t value; returns the new p."""
        if batch_size < 1:
            raise ValueError(f"AdaptiveP.update: batch_size must be >= 1, got {batch_size}")
        rt = float(real_logits_sign_mean)
        step = batch_size * self.interval / (self.speed_kimg * 1000)
        direction = (rt > self.target) - (rt < self.target)  # sign(r_t - target)
        new_p = min(max(float(pipe.p) + direction * step, 0.0), self.P_MAX)
        pipe.p.fill_(new_p)
        self.last_rt = rt
        return new_p

    def tick(self, pipe: AugmentPipe, batch_size: int,
             all_reduce: Optional[Callable[[torch.Tensor], None]] = None) -> Optional[float]:
        """Call once per D step after `accumulate`; every `interval` calls it updates p and returns r_t."""
        self._steps += 1
        if self._steps < self.interval:
            return None
        self._steps = 0
        rt = self.pop_mean(all_reduce)
        if rt is None:
            return None
        self.update(pipe, rt, batch_size)
        return rt

    def state_dict(self) -> Dict[str, object]:
        """Everything needed to resume exactly (p itself is in the pipe's state_dict)."""
        return dict(target=self.target, speed_kimg=self.speed_kimg, interval=self.interval,
                    sign_sum=0.0 if self._sign_sum is None else float(self._sign_sum),
                    count=self._count, steps=self._steps, last_rt=self.last_rt)

    def load_state_dict(self, state: Dict[str, object]) -> None:
        missing = {"target", "speed_kimg", "interval", "sign_sum", "count", "steps", "last_rt"} - set(state)
        if missing:
            raise KeyError(f"AdaptiveP.load_state_dict: missing keys {sorted(missing)}")
        self.target, self.speed_kimg = float(state["target"]), float(state["speed_kimg"])
        self.interval = int(state["interval"])
        self._count, self._steps = int(state["count"]), int(state["steps"])
        self._sign_sum = (torch.tensor(float(state["sign_sum"]), dtype=torch.float64)
                          if self._count > 0 else None)
        self.last_rt = None if state["last_rt"] is None else float(state["last_rt"])
