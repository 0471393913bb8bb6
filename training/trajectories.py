"""Camera paths for videos: orbit, turntable and sphere spiral, as angles or as Cameras on G's camera sphere.

Angles follow docs/cameras.md: yaw = azimuth (degrees, from +Z toward +X), pitch = elevation
(degrees above the XZ plane, +Y up). Every path is a closed loop: frame ``frames`` would equal
frame 0, so a video of it repeats seamlessly.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from training.volumetric_rendering import Cameras, cameras_from_angles

__all__ = ["TRAJECTORIES", "trajectory_angles", "trajectory_cameras"]

TRAJECTORIES = ("orbit", "turntable", "sphere")


def _phase(frames: int) -> np.ndarray:
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    return np.arange(frames, dtype=np.float64) / frames


def orbit(frames: int, elevation: float = 10.0, yaw_amplitude: float = 35.0,
          pitch_amplitude: float = 10.0) -> np.ndarray:
    """EG3D-like: the camera circles the frontal view (yaw +-yaw_amplitude, pitch elevation +-pitch_amplitude)."""
    t = 2.0 * np.pi * _phase(frames)
    return np.stack([yaw_amplitude * np.sin(t), elevation + pitch_amplitude * np.cos(t)], axis=1)


def turntable(frames: int, elevation: float = 15.0) -> np.ndarray:
    """A full 360-degree turn at a fixed elevation."""
    return np.stack([360.0 * _phase(frames), np.full(frames, float(elevation))], axis=1)


def sphere(frames: int, turns: float = 3.0, max_elevation: float = 80.0) -> np.ndarray:
    """A spiral over the whole sphere: up from the south to the north and back down, ``turns`` turns
    in azimuth each way. The height sin(elevation) moves as a cosine so the camera lingers nowhere
    and sees every latitude; the poles themselves are avoided (|elevation| <= max_elevation)."""
    t = _phase(frames)
    height = -np.cos(2.0 * np.pi * t) * np.sin(np.radians(max_elevation))
    return np.stack([360.0 * 2.0 * turns * t, np.degrees(np.arcsin(height))], axis=1)


def trajectory_angles(name: str, frames: int, elevation: Optional[float] = None) -> np.ndarray:
    """(yaw, pitch) degrees [frames, 2] of a named path; ``elevation`` sets orbit's centre and turntable's height."""
    if name == "orbit":
        return orbit(frames) if elevation is None else orbit(frames, elevation=elevation)
    if name == "turntable":
        return turntable(frames) if elevation is None else turntable(frames, elevation=elevation)
    if name == "sphere":
        return sphere(frames)
    raise ValueError(f"--trajectory must be one of {TRAJECTORIES}, got '{name}'")


def trajectory_cameras(name: str, frames: int, radius: float = 2.7, fov_deg: float = 18.0,
                       look_at_point: Sequence[float] = (0.0, 0.0, 0.0), elevation: Optional[float] = None,
                       device=None) -> Cameras:
    """One camera per frame along the path, on the sphere of ``radius`` around ``look_at_point``."""
    angles = trajectory_angles(name, frames, elevation)
    return cameras_from_angles(angles[:, 0].tolist(), angles[:, 1].tolist(), radius=radius, fov_deg=fov_deg,
                               look_at_point=look_at_point, device=device)
