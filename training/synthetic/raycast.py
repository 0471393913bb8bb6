"""Renders synthetic instances by batched sphere tracing of their SDFs: image, depth, mask, nuisances.

Rendering model (documented choices):
- Rays come from ``generate_rays`` (project camera convention); every pixel of every image
  of a batch is traced at once, with a fixed step budget and compaction of finished rays.
- A ray hits when the SDF drops below ``HIT_EPS``; rays still unconverged after the step
  budget (grazing rays at silhouettes) count as misses. No anti-aliasing: one ray through
  each pixel centre, so image, depth and mask agree pixel for pixel (silhouettes are
  aliased, as are the GAN renderer's point-sampled low-resolution images).
- Shading: albedo * (ambient + diffuse * max(0, n . l)) with a fixed world light from
  upper front-right (``DEFAULT_LIGHT``) unless the "lighting" nuisance varies it; normals
  are tetrahedral finite differences of the SDF.
- Ground truth: ``depth`` is the z-depth along the camera's forward axis (not the ray
  length) of the first surface hit on the main (class) object, ``inf`` where the pixel
  shows background or the distractor; ``mask`` is True exactly where depth is finite.
- Nuisances ("in the wild"), all off by default (white background): random backgrounds
  (solid colour, linear gradient, low-frequency noise), a small distractor object off to
  the side between the camera and the main object, random light direction and strength.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from training.synthetic.shapes import MAX_RADIUS, TEXTURES, InstanceParams, batch_params, sdf_batched, sd_round_box, \
    texture_mask
from training.volumetric_rendering.cameras import Cameras, generate_rays

__all__ = ["Nuisance", "SceneExtras", "parse_nuisance", "sample_extras", "render_batch", "render_instance",
           "DEFAULT_LIGHT", "BACKGROUNDS"]

BACKGROUNDS = ("solid", "gradient", "noise")
DEFAULT_LIGHT = (0.4, 0.8, 0.45)  # direction toward the light (normalised when used)
DEFAULT_AMBIENT, DEFAULT_DIFFUSE = 0.35, 0.65
HIT_EPS = 1e-3
MAX_STEPS = 96
_FAR = 1e3  # position of "no distractor"
_BOUND = MAX_RADIUS + 0.02  # tracing bound around the main object


@dataclass
class Nuisance:
    """Which in-the-wild variations to draw per image (all off: white background, fixed light)."""

    backgrounds: Tuple[str, ...] = ()  # kinds drawn uniformly; empty = white
    distractor: float = 0.0  # probability of a distractor object per image
    lighting: bool = False


def parse_nuisance(nuisance: Union[None, dict, Nuisance]) -> Nuisance:
    """Nuisance from a dict {"background": bool|str|list, "distractor": bool|prob, "lighting": bool}."""
    if nuisance is None or isinstance(nuisance, Nuisance):
        return nuisance or Nuisance()
    if not isinstance(nuisance, dict):
        raise TypeError(f"nuisance must be a dict or None, got {type(nuisance).__name__}")
    unknown = set(nuisance) - {"background", "distractor", "lighting"}
    if unknown:
        raise ValueError(f"nuisance: unknown keys {sorted(unknown)}; known: background, distractor, lighting")
    bg = nuisance.get("background", False)
    kinds = BACKGROUNDS if bg is True else () if bg in (False, None, "white") else (bg,) if isinstance(bg, str) \
        else tuple(bg)
    bad = [k for k in kinds if k not in BACKGROUNDS]
    if bad:
        raise ValueError(f"nuisance['background']: unknown kinds {bad}; known: {BACKGROUNDS}")
    prob = float(nuisance.get("distractor", 0.0))
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"nuisance['distractor'] must be a bool or a probability in [0,1], got {prob}")
    return Nuisance(tuple(kinds), prob, bool(nuisance.get("lighting", False)))


@dataclass
class SceneExtras:
    """Per-image things besides the object: background image, light, optional distractor."""

    background: np.ndarray  # [H,W,3] float32 in [0,1]
    background_info: Dict[str, object] = field(default_factory=lambda: {"kind": "white"})
    light_dir: Tuple[float, float, float] = DEFAULT_LIGHT
    ambient: float = DEFAULT_AMBIENT
    diffuse: float = DEFAULT_DIFFUSE
    distractor: Optional[Dict[str, List[float]]] = None  # center [3], half [3], round [1], color [3]

    def to_dict(self) -> dict:
        return {"background": self.background_info, "light_dir": list(self.light_dir), "ambient": self.ambient,
                "diffuse": self.diffuse, "distractor": self.distractor}


def _rand_color(rng: np.random.Generator) -> List[float]:
    return [float(c) for c in colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.7), rng.uniform(0.3, 1.0))]


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, dict]:
    """Background image [h,w,3] of the given kind and a JSON description of it."""
    c0, c1 = np.array(_rand_color(rng), np.float32), np.array(_rand_color(rng), np.float32)
    if kind == "solid":
        return np.broadcast_to(c0, (h, w, 3)).astype(np.float32), {"kind": kind, "color": c0.tolist()}
    if kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        v, u = np.meshgrid((np.arange(h) + 0.5) / h - 0.5, (np.arange(w) + 0.5) / w - 0.5, indexing="ij")
        s = np.clip((u * math.cos(ang) + v * math.sin(ang)) / math.sqrt(0.5) + 0.5, 0, 1)[..., None]
        img = (1 - s) * c0 + s * c1
        return img.astype(np.float32), {"kind": kind, "colors": [c0.tolist(), c1.tolist()], "angle": ang}
    # noise: two octaves of bilinearly upsampled uniform noise blending the two colours
    cells = int(rng.integers(3, 8))
    s = np.zeros((h, w), np.float32)
    for octave, amp in ((cells, 0.7), (cells * 3, 0.3)):
        grid = torch.from_numpy(rng.uniform(size=(1, 1, octave, octave)).astype(np.float32))
        s += amp * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    img = (1 - s[..., None]) * c0 + s[..., None] * c1
    return img.astype(np.float32), {"kind": kind, "colors": [c0.tolist(), c1.tolist()], "cells": cells}


def _distractor(cam2world: np.ndarray, intrinsics: np.ndarray, rng: np.random.Generator) -> dict:
    """A small rounded box off to the side: toward the image border, between camera and object."""
    half = rng.uniform(0.05, 0.1) * rng.uniform(0.7, 1.3, size=3)
    radius = float(np.linalg.norm(half))
    tan_half = 0.5 / float(intrinsics[0, 0])
    ang, off = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 0.95)
    right, down, fwd, eye = cam2world[:3, 0], cam2world[:3, 1], cam2world[:3, 2], cam2world[:3, 3]
    ray = fwd + tan_half * off * (math.cos(ang) * right + math.sin(ang) * down)
    depth = rng.uniform(1.4, 1.9)
    center = eye + depth * ray
    while np.linalg.norm(center) < MAX_RADIUS + radius + 0.03 and depth > 0.3:  # keep clear of the object
        depth -= 0.05
        center = eye + depth * ray
    return {"center": [float(c) for c in center], "half": [float(c) for c in half],
            "round": [float(rng.uniform(0.2, 1.0) * half.min())], "color": _rand_color(rng)}


def sample_extras(nuisance: Union[None, dict, Nuisance], camera: Cameras, resolution: int,
                  rng: np.random.Generator) -> SceneExtras:
    """Draws background, light and distractor for one image seen by ``camera`` (one camera)."""
    nz = parse_nuisance(nuisance)
    if nz.backgrounds:
        bg, info = _background(nz.backgrounds[int(rng.integers(len(nz.backgrounds)))], resolution, resolution, rng)
    else:
        bg, info = np.ones((resolution, resolution, 3), np.float32), {"kind": "white"}
    extras = SceneExtras(bg, info)
    if nz.lighting:
        az, el = rng.uniform(0, 2 * math.pi), math.asin(rng.uniform(-0.2, 1.0))
        extras.light_dir = (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
        extras.ambient, extras.diffuse = float(rng.uniform(0.15, 0.5)), float(rng.uniform(0.5, 0.95))
    if nz.distractor > 0 and rng.uniform() < nz.distractor:
        extras.distractor = _distractor(camera.cam2world[0].numpy(), camera.intrinsics[0].numpy(), rng)
    return extras


# ----------------------------------------------------------------------------------------
# Tracing.


class _Scene:
    """SDF of one family's instances plus optional distractors, with per-ray parameters."""

    def __init__(self, family: str, params: Dict[str, torch.Tensor], dis: Optional[Dict[str, torch.Tensor]]):
        self.family, self.params, self.dis = family, params, dis

    def take(self, idx: torch.Tensor) -> "_Scene":
        pick = lambda d: None if d is None else {k: v[idx] for k, v in d.items()}  # noqa: E731
        return _Scene(self.family, pick(self.params), pick(self.dis))

    def main(self, pts: torch.Tensor) -> torch.Tensor:
        return sdf_batched(self.family, pts, self.params)

    def both(self, pts: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        d_main = self.main(pts)
        if self.dis is None:
            return d_main, None
        q = pts - self.dis["center"]
        h = self.dis["half"]
        d_dis = sd_round_box(q[:, 0], q[:, 1], q[:, 2], h[:, 0], h[:, 1], h[:, 2], self.dis["round"])
        return d_main, d_dis

    def __call__(self, pts: torch.Tensor) -> torch.Tensor:
        d_main, d_dis = self.both(pts)
        return d_main if d_dis is None else torch.minimum(d_main, d_dis)


def _ray_bounds(o: torch.Tensor, d: torch.Tensor, has_dis: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Entry/exit distances of rays through the main object's bounding sphere (distractor rays: from near 0)."""
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - _BOUND ** 2)
    root = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - root).clamp_min(0), -b + root
    t1 = torch.where(disc < 0, torch.full_like(t1, -1.0), t1)  # misses: empty interval
    far = o.norm(dim=-1) + _BOUND
    return torch.where(has_dis, torch.full_like(t0, 0.05), t0), torch.where(has_dis, far, t1)


def sphere_trace(scene: _Scene, o: torch.Tensor, d: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor,
                 max_steps: int = MAX_STEPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t [R], hit [R]) for rays o + t d [R,3]; finished rays are dropped from the batch as they finish."""
    n = o.shape[0]
    t_out = torch.full((n,), math.inf, dtype=o.dtype)
    hit_out = torch.zeros(n, dtype=torch.bool)
    ids = torch.nonzero(t_far > t_near).squeeze(1)
    o, d, t, t_far, sc = o[ids], d[ids], t_near[ids].clone(), t_far[ids], scene.take(ids)
    for step in range(max_steps):
        if ids.numel() == 0:
            break
        dist = sc(o + t[:, None] * d)
        hit = dist < HIT_EPS
        t = t + torch.where(hit, torch.zeros_like(dist), dist)
        done = hit | (t > t_far)
        if step % 4 == 3 or step == max_steps - 1:  # compact every few steps: gathers cost as much as a step
            fin = hit & (t <= t_far)
            t_out[ids[fin]] = t[fin]
            hit_out[ids[fin]] = True
            keep = ~done
            ids, o, d, t, t_far, sc = ids[keep], o[keep], d[keep], t[keep], t_far[keep], sc.take(keep)
    return t_out, hit_out


def _normals(scene: _Scene, pts: torch.Tensor, h: float = 5e-4) -> torch.Tensor:
    """Unit normals [M,3] by tetrahedral finite differences of the scene SDF (4 evaluations)."""
    ks = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=pts.dtype)
    n = sum(k * scene(pts + h * k)[:, None] for k in ks)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _per_ray(values: Sequence, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64), dtype=dtype)


def _distractor_tensors(extras: Sequence[SceneExtras]) -> Optional[Dict[str, torch.Tensor]]:
    if all(e.distractor is None for e in extras):
        return None
    none = {"center": [_FAR] * 3, "half": [0.01] * 3, "round": [0.0], "color": [0.0] * 3}
    ds = [e.distractor or none for e in extras]
    out = {k: _per_ray([x[k] for x in ds]) for k in ("center", "half", "color")}
    out["round"] = _per_ray([x["round"][0] for x in ds])
    return out


def _render_group(instances: Sequence[InstanceParams], cameras: Cameras, res: int,
                  extras: Sequence[SceneExtras]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders same-family instances, one camera each: rgb float [B,H,W,3], depth [B,H,W], mask [B,H,W]."""
    b, hw = len(instances), res * res
    origins, dirs = generate_rays(cameras, res)
    o, d = origins.reshape(-1, 3).float(), dirs.reshape(-1, 3).float()
    img = torch.arange(b).repeat_interleave(hw)
    params = {k: v[img] for k, v in batch_params(instances).items()}
    dis = _distractor_tensors(extras)
    scene = _Scene(instances[0].family, params, None if dis is None else {k: v[img] for k, v in dis.items()})
    has_dis = torch.tensor([e.distractor is not None for e in extras])[img]
    t, hit = sphere_trace(scene, o, d, *_ray_bounds(o, d, has_dis))

    ids = torch.nonzero(hit).squeeze(1)
    sc = scene.take(ids)
    pts = o[ids] + t[ids, None] * d[ids]
    d_main, d_dis = sc.both(pts)
    on_main = torch.ones_like(d_main, dtype=torch.bool) if d_dis is None else d_main <= d_dis
    albedo = _albedo(instances, img[ids], pts, sc, on_main, None if dis is None else dis["color"])
    light = torch.nn.functional.normalize(_per_ray([e.light_dir for e in extras]), dim=-1)[img[ids]]
    amb, dif = _per_ray([e.ambient for e in extras])[img[ids]], _per_ray([e.diffuse for e in extras])[img[ids]]
    lambert = (_normals(sc, pts) * light).sum(-1).clamp_min(0)
    color = (albedo * (amb + dif * lambert)[:, None]).clamp(0, 1)

    rgb = torch.from_numpy(np.stack([e.background for e in extras]).reshape(-1, 3).copy())
    rgb[ids] = color
    fwd = cameras.cam2world[:, :3, 2][img]
    depth = torch.full((b * hw,), math.inf)
    main_ids = ids[on_main]
    depth[main_ids] = t[main_ids] * (d[main_ids] * fwd[main_ids]).sum(-1)
    return rgb.reshape(b, res, res, 3).numpy(), depth.reshape(b, res, res).numpy(), \
        np.isfinite(depth.reshape(b, res, res).numpy())


def _albedo(instances, img_idx, pts, sc: _Scene, on_main, dis_color) -> torch.Tensor:
    """Surface colour [M,3]: class colours with the instance's texture, or the distractor's colour."""
    tex = {
        "kind": _per_ray([TEXTURES.index(i.texture) for i in instances], torch.int64)[img_idx],
        "freq": _per_ray([i.texture_freq for i in instances])[img_idx],
        "phase": _per_ray([i.texture_phase for i in instances])[img_idx],
        "split": _per_ray([i.texture_split for i in instances])[img_idx],
    }
    c1, c2 = _per_ray([i.color for i in instances])[img_idx], _per_ray([i.color2 for i in instances])[img_idx]
    albedo = torch.where(texture_mask(pts, sc.params, tex)[:, None], c2, c1)
    if dis_color is not None:
        albedo = torch.where(on_main[:, None], albedo, dis_color[img_idx])
    return albedo


def render_batch(instances: Sequence[InstanceParams], cameras: Cameras, resolution: int,
                 extras: Optional[Sequence[SceneExtras]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders instance k through camera k: rgb uint8 [B,H,W,3], depth float32 [B,H,W] (inf = no object), mask bool.

    Instances may mix families; each family is traced as one batch.
    """
    b = len(instances)
    if len(cameras) != b:
        raise ValueError(f"render_batch: {b} instances but {len(cameras)} cameras")
    if extras is None:
        extras = [SceneExtras(np.ones((resolution, resolution, 3), np.float32)) for _ in range(b)]
    if len(extras) != b:
        raise ValueError(f"render_batch: {b} instances but {len(extras)} extras")
    rgb = np.zeros((b, resolution, resolution, 3), np.float32)
    depth = np.zeros((b, resolution, resolution), np.float32)
    mask = np.zeros((b, resolution, resolution), bool)
    cameras = cameras.to("cpu")
    for fam in dict.fromkeys(i.family for i in instances):
        sel = [k for k, i in enumerate(instances) if i.family == fam]
        idx = torch.tensor(sel)
        out = _render_group([instances[k] for k in sel], Cameras(cameras.cam2world[idx], cameras.intrinsics[idx]),
                            resolution, [extras[k] for k in sel])
        rgb[sel], depth[sel], mask[sel] = out
    return np.round(rgb * 255).astype(np.uint8), depth, mask


def render_instance(params: InstanceParams, camera: Cameras, resolution: int,
                    nuisance: Union[None, dict, Nuisance] = None, rng: Optional[np.random.Generator] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of ``params`` through ``camera`` (one camera): rgb uint8 [H,W,3], depth [H,W] (inf bg), mask."""
    if len(camera) != 1:
        raise ValueError(f"render_instance: camera must hold exactly one camera, got {len(camera)}")
    extras = sample_extras(nuisance, camera, resolution, rng if rng is not None else np.random.default_rng(0))
    rgb, depth, mask = render_batch([params], camera, resolution, [extras])
    return rgb[0], depth[0], mask[0]
