"""Volume rendering: cameras and rays, ray bounds, coarse/fine sampling, ray marching."""

from .cameras import (
    Cameras,
    cameras_from_angles,
    depth_to_points,
    directions_from_angles,
    generate_rays,
    intrinsics_from_fov,
    look_at,
    project_points,
    sample_sphere_cameras,
    sample_view_sets,
    world2cam,
)
from .bounds import ray_bounds, ray_box_intersection
from .ray_marcher import DENSITY_ACTIVATIONS, activate_density, composite
from .renderer import Field, VolumeRenderer
from .sampling import importance_depths, interval_edges, pdf_from_weights, sample_pdf, stratified_depths

__all__ = [
    "Cameras", "cameras_from_angles", "depth_to_points", "directions_from_angles", "generate_rays",
    "intrinsics_from_fov", "look_at", "project_points", "sample_sphere_cameras", "sample_view_sets", "world2cam",
    "ray_bounds", "ray_box_intersection", "DENSITY_ACTIVATIONS", "activate_density", "composite",
    "Field", "VolumeRenderer", "importance_depths", "interval_edges", "pdf_from_weights", "sample_pdf",
    "stratified_depths",
]
