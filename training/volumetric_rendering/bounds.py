"""Ray bounds: fixed near/far or the intersection of each ray with the scene's bounding box."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

__all__ = ["ray_box_intersection", "ray_bounds"]


def ray_box_intersection(
    origins: torch.Tensor, dirs: torch.Tensor, box_size: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab-method intersection of rays [...,3] with the box [-box_size/2, box_size/2]^3.

    Returns (near [...,1], far [...,1], hit [...] bool). Near is clamped to 0, so a camera
    inside the box starts at its centre. A ray that misses the box (or whose box segment lies
    behind the camera) gets near = far = its closest approach to the box centre (clamped to
    >= 0): a zero-length segment that contributes nothing, at a finite, meaningful depth.
    """
    if box_size <= 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    half = 0.5 * float(box_size)
    # Exact zeros would give 0 * inf = nan in the slab test; a tiny signed value is equivalent.
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12) * torch.where(dirs < 0, -1.0, 1.0), dirs)
    inv = 1.0 / safe
    t0 = (-half - origins) * inv
    t1 = (half - origins) * inv
    t_enter = torch.minimum(t0, t1).amax(dim=-1, keepdim=True).clamp_min(0.0)
    t_exit = torch.maximum(t0, t1).amin(dim=-1, keepdim=True)
    hit = (t_exit > t_enter).squeeze(-1)
    closest = (-(origins * dirs).sum(-1, keepdim=True) / (dirs * dirs).sum(-1, keepdim=True)).clamp_min(0.0)
    near = torch.where(hit[..., None], t_enter, closest)
    far = torch.where(hit[..., None], t_exit, closest)
    return near, far, hit


def ray_bounds(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    ray_start: Union[float, str],
    ray_end: Optional[float],
    box_size: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(near [...,1], far [...,1], hit [...]) from fixed bounds or ``ray_start='auto'`` (box intersection)."""
    if ray_start == "auto":
        return ray_box_intersection(origins, dirs, box_size)
    if isinstance(ray_start, str) or ray_end is None:
        raise ValueError(f"ray_start must be 'auto' or a number with ray_end set, got ray_start={ray_start!r}, ray_end={ray_end!r}")
    if not 0.0 <= float(ray_start) < float(ray_end):
        raise ValueError(f"need 0 <= ray_start < ray_end, got ray_start={ray_start}, ray_end={ray_end}")
    shape = origins.shape[:-1] + (1,)
    near = torch.full(shape, float(ray_start), device=origins.device, dtype=origins.dtype)
    far = torch.full(shape, float(ray_end), device=origins.device, dtype=origins.dtype)
    return near, far, torch.ones(origins.shape[:-1], dtype=torch.bool, device=origins.device)
