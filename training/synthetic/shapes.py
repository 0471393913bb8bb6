"""Shape families of the built-in synthetic data set: per-class SDFs in a canonical frame and per-instance sampling.

Canonical frame: +Y is up (every family stands on this axis, so class shapes are
learnable from views on the whole sphere); each instance is rotated by a random
``yaw`` about +Y; everything fits inside the sphere of radius ``MAX_RADIUS`` (0.8)
around the origin.

Distances: primitives (sphere, rounded box, torus, capsule, revolved trapezoid for
cylinder/cone) are exact signed distances. Non-uniformly scaled shapes (ellipsoid,
octahedron) and composites built with min/max (union, intersection) are
1-Lipschitz functions with the exact zero set and sign: |f(p)| <= true distance, i.e.
a conservative bound (exact outside for plain unions of exact primitives). That is
what sphere tracing needs, and the zero set (the surface) is exact in all cases.

All SDF code is torch (fast on CPU, runs on GPU too); ``sdf``/``occupancy`` accept
numpy or torch points and return the same kind.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "MAX_RADIUS",
    "TEXTURES",
    "Family",
    "FAMILIES",
    "FAMILY_NAMES",
    "InstanceParams",
    "family_for_class",
    "sample_instance",
    "batch_params",
    "sdf",
    "occupancy",
    "sdf_batched",
    "texture_mask",
    "sample_surface",
]

MAX_RADIUS = 0.8  # every instance lies inside this sphere around the origin
TEXTURES = ("plain", "stripes", "checker", "two_tone")

Tensor = torch.Tensor
P = Dict[str, Tensor]  # per-point (or broadcastable) parameter tensors of one family


# ----------------------------------------------------------------------------------------
# Primitive distances (x, y, z are canonical coordinates, tensors of one shape).


def _len2(a: Tensor, b: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b)


def _len3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.sqrt(a * a + b * b + c * c)


def sd_sphere(x: Tensor, y: Tensor, z: Tensor, r) -> Tensor:
    return _len3(x, y, z) - r


def sd_ellipsoid(x: Tensor, y: Tensor, z: Tensor, rx, ry, rz) -> Tensor:
    """(|p/r| - 1) * min(r): 1-Lipschitz (gradient of |p/r| is at most 1/min r), zero on the surface."""
    rmin = torch.minimum(torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)), torch.as_tensor(rz))
    return (_len3(x / rx, y / ry, z / rz) - 1.0) * rmin


def sd_round_box(x: Tensor, y: Tensor, z: Tensor, bx, by, bz, rad) -> Tensor:
    """Exact distance to a box of half extents b whose edges are rounded with radius rad."""
    qx, qy, qz = x.abs() - bx + rad, y.abs() - by + rad, z.abs() - bz + rad
    outside = _len3(qx.clamp_min(0), qy.clamp_min(0), qz.clamp_min(0))
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    return outside + inside - rad


def sd_torus_z(x: Tensor, y: Tensor, z: Tensor, big_r, small_r) -> Tensor:
    """Exact torus whose ring lies in the XY plane (axis +Z): it stands upright like a wheel."""
    return _len2(_len2(x, y) - big_r, z) - small_r


def sd_capsule(x: Tensor, y: Tensor, z: Tensor, half_len, r, axis: str = "y") -> Tensor:
    """Exact capsule: segment of half length ``half_len`` on the given axis, radius r."""
    if axis == "y":
        return _len3(x, y - y.clamp(-half_len, half_len), z) - r
    return _len3(x - x.clamp(-half_len, half_len), y, z) - r


def _sd_segment2(px: Tensor, py: Tensor, ax, ay, bx, by) -> Tensor:
    """Unsigned 2D distance from (px, py) to the segment a-b (degenerate segments allowed)."""
    bax, bay = bx - ax, by - ay
    pax, pay = px - ax, py - ay
    denom = torch.as_tensor(bax * bax + bay * bay).clamp_min(1e-12)
    h = ((pax * bax + pay * bay) / denom).clamp(0.0, 1.0)
    return _len2(pax - bax * h, pay - bay * h)


def sd_revolved_trapezoid(x: Tensor, y: Tensor, z: Tensor, r_bottom, r_top, half_h) -> Tensor:
    """Exact solid of revolution about +Y: radius r_bottom at y=-h to r_top at y=+h (cylinder, cone, frustum).

    The 3D distance equals the 2D distance in the meridian half-plane (rho >= 0, y) to the
    trapezoid's outline without its axis edge (bottom, side and top segments).
    """
    rho = _len2(x, z)
    zero = torch.zeros_like(rho)
    d = torch.minimum(
        _sd_segment2(rho, y, zero, -half_h, r_bottom, -half_h),
        _sd_segment2(rho, y, r_bottom, -half_h, r_top, half_h),
    )
    d = torch.minimum(d, _sd_segment2(rho, y, r_top, half_h, zero, half_h))
    radius_at_y = r_bottom + (r_top - r_bottom) * (y + half_h) / (2 * half_h)
    inside = (y.abs() < half_h) & (rho < radius_at_y)
    return torch.where(inside, -d, d)


def sd_octahedron(x: Tensor, y: Tensor, z: Tensor, a, b) -> Tensor:
    """|x|/a + |y|/b + |z|/a = 1, divided by its gradient norm: the distance to the face planes (a bound)."""
    g = torch.sqrt(torch.as_tensor(2.0 / (a * a) + 1.0 / (b * b)))
    return (x.abs() / a + y.abs() / b + z.abs() / a - 1.0) / g


# ----------------------------------------------------------------------------------------
# Families: a parameter sampler and a canonical-frame SDF each.


@dataclass(frozen=True)
class Family:
    """One class of the data set: name, palette (HSV), shape sampler and canonical SDF."""

    name: str
    hue: float  # class palette: primary hue; secondary colour is derived per instance
    sat: float
    val: float
    sample: Callable[[np.random.Generator], Dict[str, float]]
    sdf: Callable[[Tensor, Tensor, Tensor, P], Tensor]
    split: Callable[[Dict[str, float]], float] = field(default=lambda s: 0.0)  # two-tone height


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_sphere(rng):
    r = _u(rng, 0.5, 0.72)
    return {"rx": r * _u(rng, 0.9, 1.08), "ry": r * _u(rng, 0.9, 1.1), "rz": r}


def _sample_box(rng):
    bx, by, bz = _u(rng, 0.28, 0.46), _u(rng, 0.25, 0.45), _u(rng, 0.28, 0.46)
    return {"bx": bx, "by": by, "bz": bz, "round": _u(rng, 0.02, 0.08)}


def _sample_torus(rng):
    return {"R": _u(rng, 0.42, 0.56), "r": _u(rng, 0.12, 0.2)}


def _sample_capsule(rng):
    r = _u(rng, 0.2, 0.32)
    return {"h": _u(rng, 0.2, 0.76 - r), "r": r}


def _sample_cylinder(rng):
    r, h = _u(rng, 0.28, 0.5), _u(rng, 0.3, 0.5)
    scale = min(1.0, 0.76 / math.hypot(r, h))
    return {"r": r * scale, "h": h * scale, "round": _u(rng, 0.01, 0.05)}


def _sample_cone(rng):
    r, h = _u(rng, 0.35, 0.55), _u(rng, 0.45, 0.6)
    scale = min(1.0, 0.76 / math.hypot(r, h))
    return {"r": r * scale, "h": h * scale}


def _sample_mushroom(rng):
    return {"cap_r": _u(rng, 0.45, 0.62), "cap_h": _u(rng, 0.22, 0.36), "cap_y": _u(rng, 0.0, 0.12),
            "stem_r": _u(rng, 0.1, 0.17), "stem_bottom": _u(rng, -0.55, -0.45)}


def _sample_table(rng):
    return {"ax": _u(rng, 0.4, 0.5), "az": _u(rng, 0.25, 0.4), "top_y": _u(rng, 0.15, 0.25),
            "top_t": _u(rng, 0.03, 0.06), "leg_t": _u(rng, 0.035, 0.06), "bottom": _u(rng, -0.45, -0.35)}


def _sample_dumbbell(rng):
    rb = _u(rng, 0.18, 0.27)
    return {"d": _u(rng, 0.35, 0.76 - rb), "rb": rb, "rbar": _u(rng, 0.05, 0.09)}


def _sample_ring(rng):
    n = int(rng.integers(5, 9))
    big_r = _u(rng, 0.42, 0.55)
    rs = min(_u(rng, 0.12, 0.2), 0.9 * big_r * math.sin(math.pi / n), 0.76 - big_r)
    return {"n": float(n), "R": big_r, "rs": rs}


def _sample_chair(rng):
    return {"ax": _u(rng, 0.26, 0.34), "az": _u(rng, 0.26, 0.34), "seat_y": _u(rng, -0.12, -0.02),
            "seat_t": _u(rng, 0.03, 0.05), "leg_t": _u(rng, 0.03, 0.05), "bottom": -0.5,
            "back_h": _u(rng, 0.35, 0.45), "back_t": _u(rng, 0.03, 0.05)}


def _sample_snowman(rng):
    r1 = _u(rng, 0.26, 0.32)
    r2 = r1 * _u(rng, 0.65, 0.8)
    r3 = r2 * _u(rng, 0.6, 0.8)
    y1 = -0.76 + r1
    y2 = y1 + 0.8 * (r1 + r2)
    y3 = y2 + 0.8 * (r2 + r3)
    shift = min(0.0, 0.76 - (y3 + r3))  # push down if the head pokes out of the sphere
    return {"r1": r1, "r2": r2, "r3": r3, "y1": y1 + shift, "y2": y2 + shift, "y3": y3 + shift}


def _sample_octahedron(rng):
    return {"a": _u(rng, 0.45, 0.62), "b": _u(rng, 0.55, 0.76)}


def _sdf_sphere(x, y, z, p):
    return sd_ellipsoid(x, y, z, p["rx"], p["ry"], p["rz"])


def _sdf_box(x, y, z, p):
    return sd_round_box(x, y, z, p["bx"], p["by"], p["bz"], p["round"])


def _sdf_torus(x, y, z, p):
    return sd_torus_z(x, y, z, p["R"], p["r"])


def _sdf_capsule(x, y, z, p):
    return sd_capsule(x, y, z, p["h"], p["r"])


def _sdf_cylinder(x, y, z, p):
    rd = p["round"]
    return sd_revolved_trapezoid(x, y, z, p["r"] - rd, p["r"] - rd, p["h"] - rd) - rd


def _sdf_cone(x, y, z, p):
    return sd_revolved_trapezoid(x, y, z, p["r"], torch.zeros_like(p["r"]), p["h"])


def _sdf_mushroom(x, y, z, p):
    cy = p["cap_y"]
    cap = torch.maximum(sd_ellipsoid(x, y - cy, z, p["cap_r"], p["cap_h"], p["cap_r"]), cy - y)
    half = (cy + 0.02 - p["stem_bottom"]) / 2  # stem reaches slightly into the cap (no seam)
    stem = sd_revolved_trapezoid(x, y - (p["stem_bottom"] + half), z, p["stem_r"] * 1.25, p["stem_r"], half)
    return torch.minimum(cap, stem)


def _legs(x, y, z, ax, az, leg_t, top, bottom):
    """Four square legs at the corners of an ax-by-az footprint, via the |x|,|z| mirror fold (exact)."""
    half = (top - bottom) / 2
    return sd_round_box(x.abs() - (ax - leg_t), y - (bottom + half), z.abs() - (az - leg_t),
                        leg_t, half, leg_t, 0.25 * leg_t)


def _sdf_table(x, y, z, p):
    top = sd_round_box(x, y - p["top_y"], z, p["ax"], p["top_t"], p["az"], 0.5 * p["top_t"])
    legs = _legs(x, y, z, p["ax"], p["az"], p["leg_t"], p["top_y"], p["bottom"])
    return torch.minimum(top, legs)


def _sdf_dumbbell(x, y, z, p):
    bells = sd_sphere(x.abs() - p["d"], y, z, p["rb"])
    return torch.minimum(bells, sd_capsule(x, y, z, p["d"], p["rbar"], axis="x"))


def _sdf_ring(x, y, z, p):
    """n spheres on a horizontal circle; polar repetition folds every point into one sector (exact)."""
    sector = 2 * math.pi / p["n"]
    ang = torch.atan2(z, x)
    local = torch.remainder(ang + sector / 2, sector) - sector / 2
    rho = _len2(x, z)
    return sd_sphere(rho * torch.cos(local) - p["R"], y, rho * torch.sin(local), p["rs"])


def _sdf_chair(x, y, z, p):
    seat = sd_round_box(x, y - p["seat_y"], z, p["ax"], p["seat_t"], p["az"], 0.5 * p["seat_t"])
    legs = _legs(x, y, z, p["ax"], p["az"], p["leg_t"], p["seat_y"], p["bottom"])
    bh = p["back_h"] / 2
    back = sd_round_box(x, y - (p["seat_y"] + bh), z + (p["az"] - p["back_t"]), p["ax"], bh, p["back_t"],
                        0.5 * p["back_t"])
    return torch.minimum(torch.minimum(seat, legs), back)


def _sdf_snowman(x, y, z, p):
    s1 = sd_sphere(x, y - p["y1"], z, p["r1"])
    s2 = sd_sphere(x, y - p["y2"], z, p["r2"])
    return torch.minimum(torch.minimum(s1, s2), sd_sphere(x, y - p["y3"], z, p["r3"]))


def _sdf_octahedron(x, y, z, p):
    return sd_octahedron(x, y, z, p["a"], p["b"])


# Order = class index. Hues are spread so classes differ in mean colour.
FAMILIES: Tuple[Family, ...] = (
    Family("sphere", 0.00, 0.75, 0.90, _sample_sphere, _sdf_sphere),
    Family("box", 0.60, 0.70, 0.85, _sample_box, _sdf_box),
    Family("torus", 0.33, 0.70, 0.75, _sample_torus, _sdf_torus),
    Family("capsule", 0.08, 0.80, 0.95, _sample_capsule, _sdf_capsule),
    Family("cylinder", 0.78, 0.55, 0.80, _sample_cylinder, _sdf_cylinder),
    Family("cone", 0.15, 0.80, 0.95, _sample_cone, _sdf_cone),
    Family("mushroom", 0.98, 0.85, 0.70, _sample_mushroom, _sdf_mushroom, split=lambda s: s["cap_y"]),
    Family("table", 0.07, 0.65, 0.55, _sample_table, _sdf_table, split=lambda s: s["top_y"] - s["top_t"]),
    Family("dumbbell", 0.55, 0.20, 0.45, _sample_dumbbell, _sdf_dumbbell),
    Family("ring_of_spheres", 0.90, 0.60, 0.90, _sample_ring, _sdf_ring),
    Family("chair", 0.45, 0.65, 0.65, _sample_chair, _sdf_chair, split=lambda s: s["seat_y"] - s["seat_t"]),
    Family("snowman", 0.62, 0.10, 0.97, _sample_snowman, _sdf_snowman),
    Family("octahedron", 0.70, 0.75, 0.70, _sample_octahedron, _sdf_octahedron),
)
FAMILY_NAMES: Tuple[str, ...] = tuple(f.name for f in FAMILIES)
_BY_NAME = {f.name: f for f in FAMILIES}


def family_for_class(class_index: int) -> Family:
    if not 0 <= class_index < len(FAMILIES):
        raise ValueError(f"class_index must lie in [0, {len(FAMILIES)}), got {class_index}")
    return FAMILIES[class_index]


# ----------------------------------------------------------------------------------------
# Instances.


@dataclass
class InstanceParams:
    """One object: family, shape sizes, yaw about +Y (radians), colours (RGB in [0,1]) and texture."""

    family: str
    class_index: int
    shape: Dict[str, float]
    yaw: float
    color: Tuple[float, float, float]
    color2: Tuple[float, float, float]
    texture: str = "plain"
    texture_freq: float = 4.0  # stripes/checker periods per world unit (times pi in the sine)
    texture_phase: float = 0.0
    texture_split: float = 0.0  # two_tone: canonical height above which color2 is used

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color"], d["color2"] = list(self.color), list(self.color2)
        return d

    @staticmethod
    def from_dict(d: dict) -> "InstanceParams":
        if d.get("family") not in _BY_NAME:
            raise ValueError(f"unknown family {d.get('family')!r}; known: {FAMILY_NAMES}")
        d = dict(d)
        d["color"], d["color2"] = tuple(d["color"]), tuple(d["color2"])
        d["shape"] = {k: float(v) for k, v in d["shape"].items()}
        return InstanceParams(**d)


def _hsv(h: float, s: float, v: float) -> Tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def sample_instance(class_index: int, rng: np.random.Generator) -> InstanceParams:
    """Draws one instance of class ``class_index``: proportions, colours, texture and yaw.

    Colour: hue jitter +-0.03 and saturation/value jitter around the class palette; the
    secondary colour (stripes, checker, two-tone) is a lighter, less saturated tint of a
    hue shifted by 0.08-0.2. Texture: plain 40%, each other kind 20%.
    """
    fam = family_for_class(class_index)
    shape = fam.sample(rng)
    yaw = _u(rng, 0.0, 2 * math.pi)
    h = fam.hue + _u(rng, -0.03, 0.03)
    color = _hsv(h, fam.sat + _u(rng, -0.12, 0.12), fam.val + _u(rng, -0.1, 0.05))
    color2 = _hsv(h + _u(rng, 0.08, 0.2), 0.35 * fam.sat, min(1.0, fam.val + 0.25))
    texture = TEXTURES[int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))]
    freq, phase = _u(rng, 3.0, 7.0), _u(rng, 0.0, 2 * math.pi)
    split = fam.split(shape) + _u(rng, -0.05, 0.05)
    return InstanceParams(fam.name, class_index, shape, yaw, color, color2, texture, freq, phase, split)


def batch_params(instances: Sequence[InstanceParams], device=None, dtype=torch.float32) -> P:
    """Stacks the shape parameters and yaw of same-family instances into tensors [B] each."""
    fams = {inst.family for inst in instances}
    if len(fams) != 1:
        raise ValueError(f"batch_params needs instances of one family, got {sorted(fams)}")
    keys = instances[0].shape.keys()
    out = {k: torch.tensor([inst.shape[k] for inst in instances], device=device, dtype=dtype) for k in keys}
    yaw = torch.tensor([inst.yaw for inst in instances], device=device, dtype=torch.float64)
    out["_cos"], out["_sin"] = torch.cos(yaw).to(dtype), torch.sin(yaw).to(dtype)
    return out


def to_canonical(points: Tensor, p: P) -> Tuple[Tensor, Tensor, Tensor]:
    """World points [M,3] -> canonical x, y, z (undo the yaw about +Y; an isometry)."""
    x, y, z = points.unbind(-1)
    c, s = p["_cos"], p["_sin"]
    return c * x - s * z, y, s * x + c * z


def sdf_batched(family: str, points: Tensor, p: P) -> Tensor:
    """Signed distance of world points [M,3]; ``p`` holds tensors [M] (one instance per point) or [1]."""
    x, y, z = to_canonical(points, p)
    return _BY_NAME[family].sdf(x, y, z, p)


def _as_torch(points) -> Tuple[Tensor, bool]:
    if isinstance(points, np.ndarray):
        dtype = torch.float64 if points.dtype == np.float64 else torch.float32
        return torch.from_numpy(np.ascontiguousarray(points)).to(dtype), True
    if isinstance(points, Tensor):
        return points, False
    raise TypeError(f"points must be a numpy array or torch tensor, got {type(points).__name__}")


def sdf(points: Union[np.ndarray, Tensor], params: InstanceParams) -> Union[np.ndarray, Tensor]:
    """Signed distance [M] (negative inside) of world points [M,3] to one instance; numpy in, numpy out."""
    pts, was_numpy = _as_torch(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [M,3], got {tuple(pts.shape)}")
    d = sdf_batched(params.family, pts, batch_params([params], device=pts.device, dtype=pts.dtype))
    return d.numpy() if was_numpy else d


def occupancy(points: Union[np.ndarray, Tensor], params: InstanceParams) -> Union[np.ndarray, Tensor]:
    """True [M] where world points [M,3] are inside the instance (sdf < 0)."""
    return sdf(points, params) < 0


def texture_mask(points: Tensor, p: P, tex: Dict[str, Tensor]) -> Tensor:
    """True [M] where the secondary colour applies at world surface points [M,3].

    ``tex`` holds per-point tensors: kind (index into TEXTURES), freq, phase, split. The
    pattern lives in the canonical frame, so it turns with the object.
    """
    x, y, z = to_canonical(points, p)
    f, ph = tex["freq"] * math.pi, tex["phase"]
    stripes = torch.sin(f * y + ph) > 0
    checker = (torch.sin(f * x + ph) * torch.sin(f * y) * torch.sin(f * z + ph)) > 0
    two_tone = y > tex["split"]
    kind = tex["kind"]
    return ((kind == 1) & stripes) | ((kind == 2) & checker) | ((kind == 3) & two_tone)


def sample_surface(params: InstanceParams, n: int, rng: np.random.Generator, iters: int = 12) -> np.ndarray:
    """About ``n`` points [K,3] on the true surface (K <= n), for geometry metrics.

    Random points near the surface are projected with p <- p - f(p) grad f(p) / |grad f|^2
    (Newton on the zero set; converges for SDFs and 1-Lipschitz bounds alike) and kept when
    |f| < 1e-4. The density over the surface is only roughly uniform.
    """
    pts = torch.from_numpy(rng.uniform(-MAX_RADIUS, MAX_RADIUS, size=(4 * n, 3)))
    d = sdf(pts, params)
    pts = pts[d.abs() < 0.15][:n]  # start near the surface so projections land on the nearby face
    for _ in range(iters):
        pts = pts.detach().requires_grad_(True)
        d = sdf(pts, params)
        (g,) = torch.autograd.grad(d.sum(), pts)
        pts = pts - (d / g.pow(2).sum(-1).clamp_min(1e-12))[:, None] * g
    pts = pts.detach()
    return pts[sdf(pts, params).abs() < 1e-4].numpy()
