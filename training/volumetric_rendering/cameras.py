"""Cameras: the project's one camera convention, camera samplers on the sphere, and ray generation.

Convention (see docs/cameras.md):
- World frame right-handed, +Y up. Elevation = angle above the XZ plane (toward +Y);
  azimuth = angle in the XZ plane measured from +Z toward +X.
- ``cam2world`` [N,4,4]: columns 0,1,2 are the camera's x (right), y (down), z (forward)
  axes in world coordinates (OpenCV convention); column 3 is the camera centre.
- ``intrinsics`` [N,3,3] normalised by image size: fx = fy = 1 / (2 tan(fov/2)),
  cx = cy = 0.5. Pixel (row i, col j) of an HxW image sits at u=(j+0.5)/W, v=(i+0.5)/H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "Cameras",
    "look_at",
    "intrinsics_from_fov",
    "sample_sphere_cameras",
    "sample_view_sets",
    "cameras_from_angles",
    "generate_rays",
    "world2cam",
    "project_points",
    "directions_from_angles",
    "depth_to_points",
]

Vec3 = Union[Sequence[float], torch.Tensor]

# Below this |forward x up| the two are treated as parallel (camera at a pole).
_POLE_EPS = 1e-4


def _as_vec3(v: Vec3, n: int, device, dtype=torch.float32, name: str = "vector") -> torch.Tensor:
    """Broadcasts a 3-vector (tuple, [3] or [N,3] tensor) to [n,3]."""
    t = torch.as_tensor(v, dtype=dtype, device=device)
    if t.shape[-1:] != (3,) or t.ndim > 2:
        raise ValueError(f"{name} must have shape [3] or [N,3], got {tuple(t.shape)}")
    return t.expand(n, 3) if t.ndim == 1 else t


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def look_at(eye: torch.Tensor, target: torch.Tensor, up: Vec3 = (0.0, 1.0, 0.0)) -> torch.Tensor:
    """cam2world [N,4,4] for cameras at ``eye`` [N,3] looking at ``target`` [N,3].

    The image's "up" (-y camera axis) is the projection of ``up`` onto the image plane.
    When forward is parallel to ``up`` (a camera at a pole) a fallback up is used: the
    limit of approaching that pole from azimuth 0 (the +Z side for up=+Y), so the matrix
    stays orthonormal, right-handed and continuous along the azimuth-0 meridian.
    """
    if eye.ndim != 2 or eye.shape[-1] != 3:
        raise ValueError(f"eye must have shape [N,3], got {tuple(eye.shape)}")
    eye = eye.float()
    target = _as_vec3(target, eye.shape[0], eye.device, name="target")
    up_t = _normalize(_as_vec3(up, eye.shape[0], eye.device, name="up"))

    forward = _normalize(target - eye)
    if (target - eye).norm(dim=-1).min() < 1e-8:
        raise ValueError("look_at: eye and target coincide for at least one camera")
    right = torch.cross(forward, up_t, dim=-1)
    at_pole = right.norm(dim=-1) < _POLE_EPS
    if bool(at_pole.any()):
        # Fallback up: a direction perpendicular to up (cross(up, x) = -Z for up=+Y), signed so
        # that a camera looking down sees it as "up" and one looking up sees its opposite.
        ref = torch.tensor([1.0, 0.0, 0.0], device=eye.device).expand_as(up_t)
        ref = torch.where((up_t[:, :1].abs() > 0.9), torch.tensor([0.0, 0.0, 1.0], device=eye.device), ref)
        perp = _normalize(torch.cross(up_t, ref, dim=-1))
        sign = -torch.sign((forward * up_t).sum(-1, keepdim=True))
        alt_right = torch.cross(forward, perp * sign, dim=-1)
        right = torch.where(at_pole[:, None], alt_right, right)
    right = _normalize(right)
    down = _normalize(torch.cross(forward, right, dim=-1))  # x cross y = z for a right-handed frame

    c2w = torch.zeros(eye.shape[0], 4, 4, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = down
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def intrinsics_from_fov(fov_deg: Union[float, torch.Tensor], n: int, device=None) -> torch.Tensor:
    """Normalised intrinsics [n,3,3] for a full field of view ``fov_deg`` (scalar or [n])."""
    fov = torch.as_tensor(fov_deg, dtype=torch.float32, device=device).reshape(-1)
    if fov.numel() not in (1, n):
        raise ValueError(f"fov_deg must be a scalar or have {n} entries, got {fov.numel()}")
    if bool(((fov <= 0) | (fov >= 180)).any()):
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov.tolist()}")
    f = 1.0 / (2.0 * torch.tan(torch.deg2rad(fov) / 2.0))
    K = torch.zeros(n, 3, 3, device=device)
    K[:, 0, 0] = f.expand(n)
    K[:, 1, 1] = f.expand(n)
    K[:, 0, 2] = 0.5
    K[:, 1, 2] = 0.5
    K[:, 2, 2] = 1.0
    return K


@dataclass
class Cameras:
    """A batch of N pinhole cameras in the project's convention."""

    cam2world: torch.Tensor  # [N,4,4]
    intrinsics: torch.Tensor  # [N,3,3], normalised by image size

    def __post_init__(self) -> None:
        if self.cam2world.ndim != 3 or self.cam2world.shape[1:] != (4, 4):
            raise ValueError(f"cam2world must be [N,4,4], got {tuple(self.cam2world.shape)}")
        if self.intrinsics.ndim != 3 or self.intrinsics.shape[1:] != (3, 3):
            raise ValueError(f"intrinsics must be [N,3,3], got {tuple(self.intrinsics.shape)}")
        if self.cam2world.shape[0] != self.intrinsics.shape[0]:
            raise ValueError(
                f"cam2world has {self.cam2world.shape[0]} cameras but intrinsics has {self.intrinsics.shape[0]}"
            )

    def __len__(self) -> int:
        return self.cam2world.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(self.cam2world[idx], self.intrinsics[idx])

    def to(self, device) -> "Cameras":
        return Cameras(self.cam2world.to(device), self.intrinsics.to(device))

    @property
    def device(self) -> torch.device:
        return self.cam2world.device

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world coordinates [N,3]."""
        return self.cam2world[:, :3, 3]

    @property
    def forward(self) -> torch.Tensor:
        """Viewing directions (camera +z axis) in world coordinates [N,3]."""
        return self.cam2world[:, :3, 2]

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        return Cameras(torch.cat([c.cam2world for c in cams]), torch.cat([c.intrinsics for c in cams]))

    def repeat_interleave(self, k: int) -> "Cameras":
        """Each camera repeated k times in a row ([c0,c0,..,c1,c1,..])."""
        return Cameras(self.cam2world.repeat_interleave(k, 0), self.intrinsics.repeat_interleave(k, 0))

    def view_sets(self, views: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cam2world [N/V,V,4,4], intrinsics [N/V,V,3,3]) of an item-major batch of view sets."""
        if len(self) % views != 0:
            raise ValueError(f"views={views} does not divide the {len(self)} cameras")
        return self.cam2world.reshape(-1, views, 4, 4), self.intrinsics.reshape(-1, views, 3, 3)


def directions_from_angles(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """Unit vectors [...,3] from azimuth (from +Z toward +X) and elevation (toward +Y), radians."""
    c = torch.cos(elevation)
    return torch.stack([c * torch.sin(azimuth), torch.sin(elevation), c * torch.cos(azimuth)], dim=-1)


def _rand(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """U[0,1) drawn on the generator's device (so a seeded CPU generator works for any device)."""
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def _randn(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev).to(device)


def _check_band(elevation_range_deg: Tuple[float, float]) -> Tuple[float, float]:
    lo, hi = (float(x) for x in elevation_range_deg)
    if not (-90.0 <= lo <= hi <= 90.0):
        raise ValueError(f"elevation_range_deg must satisfy -90 <= lo <= hi <= 90, got {elevation_range_deg}")
    return math.sin(math.radians(lo)), math.sin(math.radians(hi))


def _uniform_area_elevation(shape, band: Tuple[float, float], generator, device) -> torch.Tensor:
    """Elevations whose sine is uniform in [sin lo, sin hi]: uniform in area on the sphere band."""
    y = band[0] + (band[1] - band[0]) * _rand(shape, generator, device)
    return torch.asin(y.clamp(-1.0, 1.0))


def _place_cameras(
    azimuth: torch.Tensor,
    elevation: torch.Tensor,
    radius: float,
    fov_deg: float,
    perturb_pos: float,
    perturb_lookat: float,
    look_at_point: Vec3,
    generator,
    device,
) -> Cameras:
    """Cameras on the sphere of ``radius`` around ``look_at_point``, with Gaussian jitter.

    The position jitter (std ``perturb_pos`` world units) is applied to the point on the
    sphere, which is then re-projected onto the sphere: the camera distance stays exactly
    ``radius`` (object scale unchanged) and the jitter acts as a small angular shift. The
    look-at jitter (std ``perturb_lookat``) moves the target. Both noises are always drawn,
    so the base cameras of a seeded generator do not depend on the perturbation sizes.
    """
    n = azimuth.numel()
    center = _as_vec3(look_at_point, n, device, name="look_at_point")
    dirs = directions_from_angles(azimuth, elevation).reshape(n, 3)
    pos_noise = _randn((n, 3), generator, device) * perturb_pos
    look_noise = _randn((n, 3), generator, device) * perturb_lookat
    dirs = _normalize(dirs * radius + pos_noise)
    eye = center + dirs * radius
    c2w = look_at(eye, center + look_noise)
    return Cameras(c2w, intrinsics_from_fov(fov_deg, n, device))


def sample_sphere_cameras(
    n: int,
    radius: float = 2.7,
    fov_deg: float = 18.0,
    perturb_pos: float = 0.0,
    perturb_lookat: float = 0.0,
    look_at_point: Vec3 = (0.0, 0.0, 0.0),
    elevation_range_deg: Tuple[float, float] = (-90.0, 90.0),
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Cameras:
    """n cameras uniform in area on the sphere (band) of ``radius`` around ``look_at_point``."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    band = _check_band(elevation_range_deg)
    elevation = _uniform_area_elevation((n,), band, generator, device)
    azimuth = 2.0 * math.pi * _rand((n,), generator, device)
    return _place_cameras(azimuth, elevation, radius, fov_deg, perturb_pos, perturb_lookat, look_at_point,
                          generator, device)


def sample_view_sets(
    n: int,
    views: int = 3,
    radius: float = 2.7,
    fov_deg: float = 18.0,
    perturb_pos: float = 0.0,
    perturb_lookat: float = 0.0,
    look_at_point: Vec3 = (0.0, 0.0, 0.0),
    elevation_range_deg: Tuple[float, float] = (-90.0, 90.0),
    generator: Optional[torch.Generator] = None,
    device=None,
) -> Cameras:
    """n*views cameras, item-major: per item, azimuths 2pi/views apart from a random start.

    Elevations are drawn per view, uniform in area within the band, so views of one item
    are far apart in azimuth but otherwise independent.
    """
    if n < 1 or views < 1:
        raise ValueError(f"n and views must be positive, got n={n}, views={views}")
    band = _check_band(elevation_range_deg)
    elevation = _uniform_area_elevation((n, views), band, generator, device)
    start = 2.0 * math.pi * _rand((n, 1), generator, device)
    offsets = torch.arange(views, device=device, dtype=torch.float32) * (2.0 * math.pi / views)
    azimuth = torch.remainder(start + offsets, 2.0 * math.pi)
    return _place_cameras(azimuth.reshape(-1), elevation.reshape(-1), radius, fov_deg, perturb_pos,
                          perturb_lookat, look_at_point, generator, device)


def cameras_from_angles(
    yaw_deg: Union[float, Sequence[float], torch.Tensor],
    pitch_deg: Union[float, Sequence[float], torch.Tensor],
    radius: float = 2.7,
    fov_deg: float = 18.0,
    look_at_point: Vec3 = (0.0, 0.0, 0.0),
    device=None,
) -> Cameras:
    """Cameras at explicit angles: yaw = azimuth, pitch = elevation (degrees; broadcast together)."""
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float32, device=device).reshape(-1)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float32, device=device).reshape(-1)
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    n = yaw.numel()
    center = _as_vec3(look_at_point, n, device, name="look_at_point")
    eye = center + radius * directions_from_angles(torch.deg2rad(yaw), torch.deg2rad(pitch))
    return Cameras(look_at(eye, center), intrinsics_from_fov(fov_deg, n, device))


def _resolution(resolution: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(resolution, int):
        resolution = (resolution, resolution)
    h, w = (int(r) for r in resolution)
    if h < 1 or w < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return h, w


def generate_rays(
    cameras: Cameras, resolution: Union[int, Tuple[int, int]]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(origins [N,H*W,3], unit directions [N,H*W,3]) for every pixel, row-major (index i*W + j)."""
    h, w = _resolution(resolution)
    dev, dt = cameras.device, cameras.cam2world.dtype
    v, u = torch.meshgrid(
        (torch.arange(h, device=dev, dtype=dt) + 0.5) / h,
        (torch.arange(w, device=dev, dtype=dt) + 0.5) / w,
        indexing="ij",
    )
    K = cameras.intrinsics
    fx, fy, cx, cy = (K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None])
    x = (u.reshape(1, -1) - cx) / fx
    y = (v.reshape(1, -1) - cy) / fy
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [N,HW,3]
    dirs = _normalize(dirs_cam @ cameras.cam2world[:, :3, :3].transpose(1, 2))
    origins = cameras.centers[:, None, :].expand_as(dirs)
    return origins, dirs


def depth_to_points(cameras: Cameras, depth: torch.Tensor) -> torch.Tensor:
    """World points [N,H*W,3] of a rendered depth map [N,1,H,W].

    The renderer's depth is the distance along the unit ray from the camera centre (not the
    camera-space z; z = depth * (ray . forward)), so a point is origin + depth * direction.
    """
    if depth.ndim != 4 or depth.shape[1] != 1 or depth.shape[0] != len(cameras):
        raise ValueError(f"depth must be [N,1,H,W] with N={len(cameras)}, got {tuple(depth.shape)}")
    origins, dirs = generate_rays(cameras, tuple(depth.shape[-2:]))
    return origins + depth.reshape(depth.shape[0], -1, 1) * dirs


def world2cam(cam2world: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid cam2world [N,4,4] (R^T, -R^T t), exact for orthonormal R."""
    R = cam2world[:, :3, :3]
    t = cam2world[:, :3, 3:]
    out = torch.zeros_like(cam2world)
    out[:, :3, :3] = R.transpose(1, 2)
    out[:, :3, 3:] = -R.transpose(1, 2) @ t
    out[:, 3, 3] = 1.0
    return out


def project_points(
    cameras: Cameras, points: torch.Tensor, resolution: Union[int, Tuple[int, int]]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (col j, row i as floats, pixel centres at integers) [N,M,2] and camera depth z [N,M]."""
    h, w = _resolution(resolution)
    w2c = world2cam(cameras.cam2world)
    pc = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    z = pc[..., 2]
    K = cameras.intrinsics
    u = K[:, None, 0, 0] * pc[..., 0] / z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * pc[..., 1] / z + K[:, None, 1, 2]
    return torch.stack([u * w - 0.5, v * h - 0.5], dim=-1), z
