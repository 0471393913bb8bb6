"""Tests for the camera convention, camera samplers and ray generation (training/volumetric_rendering/cameras.py)."""

import math

import pytest
import torch
from scipy import stats

from training.volumetric_rendering import (
    Cameras,
    cameras_from_angles,
    generate_rays,
    intrinsics_from_fov,
    look_at,
    project_points,
    sample_sphere_cameras,
    sample_view_sets,
)


def _angles(points: torch.Tensor, radius: float):
    """(azimuth in [0, 2pi) from +Z toward +X, sin(elevation)) of points on a sphere at the origin."""
    az = torch.remainder(torch.atan2(points[:, 0], points[:, 2]), 2 * math.pi)
    return az.double().numpy(), (points[:, 1] / radius).double().numpy()


def _check_frame(c2w: torch.Tensor, target: torch.Tensor):
    R = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5), "rotation not orthonormal"
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-5), "not right-handed"
    to_target = torch.nn.functional.normalize((target - c2w[:, :3, 3]).double(), dim=-1)
    assert torch.allclose(R[:, :, 2], to_target, atol=1e-5), "forward axis does not point at the target"
    assert torch.all(c2w[:, 3] == torch.tensor([0.0, 0.0, 0.0, 1.0])), "bad homogeneous row"


def test_sphere_directions_uniform_in_area():
    g = torch.Generator().manual_seed(1234)
    cams = sample_sphere_cameras(20000, radius=2.7, generator=g)
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((20000,), 2.7), atol=1e-4)
    az, y = _angles(cams.centers, 2.7)
    assert stats.kstest(y, "uniform", args=(-1.0, 2.0)).pvalue > 0.01
    assert stats.kstest(az, "uniform", args=(0.0, 2 * math.pi)).pvalue > 0.01


def test_ks_test_has_power_against_uniform_elevation():
    # The same test rejects the common mistake (elevation angle uniform), so the test above can fail.
    g = torch.Generator().manual_seed(1234)
    el = (torch.rand(20000, generator=g, dtype=torch.float64) - 0.5) * math.pi
    assert stats.kstest(torch.sin(el).numpy(), "uniform", args=(-1.0, 2.0)).pvalue < 0.01


def test_elevation_band_is_respected_and_uniform_in_area():
    lo, hi = 10.0, 40.0
    g = torch.Generator().manual_seed(7)
    cams = sample_sphere_cameras(5000, radius=1.5, elevation_range_deg=(lo, hi), generator=g)
    _, y = _angles(cams.centers, 1.5)
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    assert y.min() >= s_lo - 1e-5 and y.max() <= s_hi + 1e-5
    assert stats.kstest(y, "uniform", args=(s_lo, s_hi - s_lo)).pvalue > 0.01


@pytest.mark.parametrize("views", [2, 3, 5])
def test_view_sets_are_item_major_with_even_azimuth_gaps(views):
    g = torch.Generator().manual_seed(views)
    n = 40
    cams = sample_view_sets(n, views=views, radius=2.0, elevation_range_deg=(-30, 60), generator=g)
    assert len(cams) == n * views
    az, y = _angles(cams.centers, 2.0)
    az = torch.from_numpy(az).reshape(n, views)
    gaps = torch.remainder(az[:, 1:] - az[:, :-1], 2 * math.pi)
    assert torch.allclose(gaps, torch.full_like(gaps, 2 * math.pi / views), atol=1e-4)
    assert y.min() >= math.sin(math.radians(-30)) - 1e-5 and y.max() <= math.sin(math.radians(60)) + 1e-5
    # The start azimuth differs between items (it is random per item).
    assert az[:, 0].std() > 0.5
    c2w, K = cams.view_sets(views)
    assert c2w.shape == (n, views, 4, 4) and K.shape == (n, views, 3, 3)


def test_perturbations_keep_radius_and_move_lookat():
    g = torch.Generator().manual_seed(3)
    base = sample_sphere_cameras(500, radius=2.7, generator=g)
    g = torch.Generator().manual_seed(3)
    pert = sample_sphere_cameras(500, radius=2.7, perturb_pos=0.1, perturb_lookat=0.05, generator=g)
    assert torch.allclose(pert.centers.norm(dim=-1), torch.full((500,), 2.7), atol=1e-4)
    moved = (pert.centers - base.centers).norm(dim=-1)
    assert 0.02 < moved.mean() < 0.3  # ~ sqrt(2) * 0.1 tangential jitter
    # With look-at jitter the forward axis no longer points exactly at the origin.
    to_origin = torch.nn.functional.normalize(-pert.centers, dim=-1)
    miss = torch.acos((pert.forward * to_origin).sum(-1).clamp(-1, 1))
    assert miss.mean() > 1e-3 and miss.max() < 0.2
    _check_frame(base.cam2world, torch.zeros(500, 3))


def test_seeded_sampling_is_deterministic():
    a = sample_view_sets(4, 3, generator=torch.Generator().manual_seed(0))
    b = sample_view_sets(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.cam2world, b.cam2world)


def test_look_at_orthonormal_right_handed_including_poles():
    g = torch.Generator().manual_seed(0)
    eyes = torch.randn(64, 3, generator=g) * 2
    targets = torch.randn(64, 3, generator=g) * 0.3
    poles = torch.tensor([[0.0, 2.5, 0.0], [0.0, -2.5, 0.0], [0.3, 4.0, -0.2], [0.3, -4.0, -0.2]])
    pole_targets = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, -0.2], [0.3, 1.0, -0.2]])
    eyes, targets = torch.cat([eyes, poles]), torch.cat([targets, pole_targets])
    c2w = look_at(eyes, targets)
    assert torch.isfinite(c2w).all()
    _check_frame(c2w, targets)
    # Upright: away from the poles, the camera's "up" (-y) has a positive world-up component.
    not_pole = torch.nn.functional.normalize(targets - eyes, dim=-1)[:, 1].abs() < 0.999
    assert (-c2w[not_pole, 1, 1] > 0).all()


def test_look_at_pole_fallback_is_continuous_with_azimuth_zero():
    # A camera just off the north pole on the +Z side and one exactly at the pole agree.
    near = cameras_from_angles(0.0, 89.999, radius=2.0).cam2world
    at = look_at(torch.tensor([[0.0, 2.0, 0.0]]), torch.zeros(1, 3))
    assert torch.allclose(near[:, :3, :3], at[:, :3, :3], atol=1e-3)
    near_s = cameras_from_angles(0.0, -89.999, radius=2.0).cam2world
    at_s = look_at(torch.tensor([[0.0, -2.0, 0.0]]), torch.zeros(1, 3))
    assert torch.allclose(near_s[:, :3, :3], at_s[:, :3, :3], atol=1e-3)


def test_cameras_from_angles_positions():
    cams = cameras_from_angles([0.0, 90.0, 0.0], [0.0, 0.0, 30.0], radius=3.0)
    expected = torch.tensor([[0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, 1.5, 3.0 * math.cos(math.radians(30))]])
    assert torch.allclose(cams.centers, expected, atol=1e-5)
    _check_frame(cams.cam2world, torch.zeros(3, 3))


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(torch.tensor([18.0, 60.0]), 2)
    f = 1 / (2 * torch.tan(torch.deg2rad(torch.tensor([18.0, 60.0])) / 2))
    assert torch.allclose(K[:, 0, 0], f) and torch.allclose(K[:, 1, 1], f)
    assert torch.all(K[:, :2, 2] == 0.5) and torch.all(K[:, 2, 2] == 1)
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics_from_fov(180.0, 1)


def _naive_project(c2w, K, point, h, w):
    """Independent reference: full matrix inverse and pixel-unit intrinsics."""
    w2c = torch.linalg.inv(c2w.double())
    pc = w2c @ torch.cat([point.double(), torch.ones(1, dtype=torch.float64)])
    Kp = K.double().clone()
    Kp[0] *= w
    Kp[1] *= h
    uvw = Kp @ pc[:3]
    return uvw[0] / uvw[2] - 0.5, uvw[1] / uvw[2] - 0.5  # pixel centres at integers


def test_projection_matches_ray_through_pixel():
    g = torch.Generator().manual_seed(5)
    cams = sample_sphere_cameras(6, radius=2.7, fov_deg=30.0, perturb_lookat=0.1, generator=g)
    h, w = 12, 16
    origins, dirs = generate_rays(cams, (h, w))
    for n in range(len(cams)):
        i, j = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
        point = origins[n, i * w + j] + 2.3 * dirs[n, i * w + j]
        col, row = _naive_project(cams.cam2world[n], cams.intrinsics[n], point, h, w)
        assert abs(col - j) < 1e-3 and abs(row - i) < 1e-3
        pix, z = project_points(cams[n], point[None, None], (h, w))
        assert torch.allclose(pix[0, 0], torch.tensor([float(j), float(i)]), atol=1e-3)
        assert z[0, 0] > 0


def test_image_orientation_row0_is_top():
    cam = cameras_from_angles(0.0, 0.0, radius=3.0, fov_deg=40.0)  # at +Z, looking at -Z
    pix, _ = project_points(cam, torch.tensor([[[0.0, 0.5, 0.0], [0.5, 0.0, 0.0]]]), 33)
    assert pix[0, 0, 1] < 16 - 1  # world +Y appears above the centre row
    assert pix[0, 1, 0] > 16 + 1  # world +X appears right of the centre (right = +X from +Z)


@pytest.mark.parametrize("res", [(7, 7), (9, 5)])
def test_centre_ray_is_forward_axis(res):
    cams = sample_sphere_cameras(5, perturb_lookat=0.2, generator=torch.Generator().manual_seed(2))
    origins, dirs = generate_rays(cams, res)
    h, w = res
    assert dirs.shape == (5, h * w, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(5, h * w), atol=1e-5)
    assert torch.allclose(dirs[:, (h // 2) * w + w // 2], cams.forward, atol=1e-6)
    assert torch.allclose(origins, cams.centers[:, None].expand_as(origins))


def test_edge_pixels_span_the_field_of_view():
    fov, w = 50.0, 64
    cam = cameras_from_angles(0.0, 0.0, radius=2.0, fov_deg=fov)
    _, dirs = generate_rays(cam, (1, w))
    angle = torch.acos((dirs[0, 0] * dirs[0, -1]).sum())
    half = (0.5 - 0.5 / w) * 2 * math.tan(math.radians(fov / 2))  # tangent at the outer pixel centres
    assert abs(angle.item() - 2 * math.atan(half)) < 1e-5


def test_cameras_container():
    cams = sample_sphere_cameras(5, generator=torch.Generator().manual_seed(0))
    assert len(cams) == 5 and len(cams[1:3]) == 2 and len(cams[-1]) == 1
    assert torch.equal(cams[-1].cam2world, cams.cam2world[4:])
    both = Cameras.cat([cams[:2], cams[2:]])
    assert torch.equal(both.cam2world, cams.cam2world)
    assert torch.equal(cams.repeat_interleave(2).cam2world[2], cams.cam2world[1])
    assert cams.to("cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras(cams.cam2world, cams.intrinsics[:3])
    with pytest.raises(ValueError, match="elevation_range_deg"):
        sample_sphere_cameras(2, elevation_range_deg=(50, 10))
