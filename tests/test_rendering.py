"""Analytic tests of the volume renderer: bounds, sampling, ray marching and VolumeRenderer."""

import math

import pytest
import torch

from training.volumetric_rendering import (
    VolumeRenderer,
    cameras_from_angles,
    composite,
    depth_to_points,
    generate_rays,
    ray_box_intersection,
    sample_pdf,
    sample_sphere_cameras,
    stratified_depths,
)

RADIUS, DIST, FOV, RES = 0.5, 2.0, 40.0, 33


def solid_sphere(points, dirs, radius=RADIUS, sigma=1e4):
    """A solid sphere of very high density at the origin; features = (position, inside)."""
    inside = (points.norm(dim=-1, keepdim=True) < radius).float()
    return inside * sigma, torch.cat([points, inside], dim=-1)


def constant_medium(sigma):
    def field(points, dirs):
        return torch.full_like(points[..., :1], sigma), torch.ones_like(points[..., :2])
    return field


def empty(points, dirs):
    return torch.zeros_like(points[..., :1]), torch.randn_like(points)


def _renderer(**kw):
    opts = dict(num_coarse=32, num_fine=64, density_activation="none", box_size=2.0)
    opts.update(kw)
    return VolumeRenderer(**opts)


@pytest.fixture(scope="module")
def sphere_render():
    cams = cameras_from_angles([0.0, 130.0], [0.0, 35.0], radius=DIST, fov_deg=FOV)
    out = _renderer().render(solid_sphere, cams, RES, training=False, return_samples=True)
    return cams, out


def test_sphere_centre_depth(sphere_render):
    _, out = sphere_render
    c = RES // 2
    assert torch.allclose(out["depth"][:, 0, c, c], torch.full((2,), DIST - RADIUS), rtol=0.01)


def test_sphere_centre_depth_with_jitter():
    cams = cameras_from_angles([20.0], [-60.0], radius=DIST, fov_deg=FOV)
    out = _renderer().render(solid_sphere, cams, 5, training=True, generator=torch.Generator().manual_seed(0))
    assert abs(out["depth"][0, 0, 2, 2].item() - (DIST - RADIUS)) < 0.01 * (DIST - RADIUS)


def test_sphere_opacity_inside_and_outside_silhouette(sphere_render):
    cams, out = sphere_render
    origins, dirs = generate_rays(cams, RES)
    # Distance of each ray's line to the sphere centre (the origin): |o x d|.
    miss = torch.cross(origins, dirs, dim=-1).norm(dim=-1).reshape(2, RES, RES)
    op = out["opacity"][:, 0]
    assert (op[miss < RADIUS - 0.02] > 0.99).all()
    assert (op[miss > RADIUS + 0.02] < 0.01).all()


def test_sphere_silhouette_radius_matches_pinhole(sphere_render):
    cams, out = sphere_render
    f_px = cams.intrinsics[0, 0, 0].item() * RES
    r_px = f_px * RADIUS / math.sqrt(DIST**2 - RADIUS**2)
    mask = out["opacity"][:, 0] > 0.5
    r_area = torch.sqrt(mask.sum((1, 2)).float() / math.pi)
    assert torch.all((r_area - r_px).abs() < 1.0), (r_area, r_px)
    r_row = mask[:, RES // 2].sum(-1).float() / 2  # half-width of the centre row
    assert torch.all((r_row - r_px).abs() < 1.0), (r_row, r_px)


def test_fine_samples_concentrate_at_surface(sphere_render):
    _, out = sphere_render
    c = RES // 2
    fine = out["fine_depths"][:, c * RES + c]  # [2, num_fine]
    band = 0.05
    frac = ((fine - (DIST - RADIUS)).abs() < band).float().mean(-1)
    uniform = 2 * band / 2.0  # the box segment of the centre ray is 2 long (DIST-1 .. DIST+1)
    assert torch.all(frac > 5 * uniform), frac
    assert out["depths"].shape[-1] == 32 + 64
    assert torch.all(out["depths"][..., 1:] >= out["depths"][..., :-1]), "merged samples not sorted"


def test_chunked_equals_unchunked():
    cams = sample_sphere_cameras(3, radius=DIST, fov_deg=FOV, generator=torch.Generator().manual_seed(1))
    kw = dict(density_noise=0.5, white_back=True, num_coarse=12, num_fine=12)
    a = _renderer(**kw).render(solid_sphere, cams, 9, training=True, generator=torch.Generator().manual_seed(4))
    b = _renderer(chunk=10, **kw).render(solid_sphere, cams, 9, training=True,
                                         generator=torch.Generator().manual_seed(4))
    for key in ("features", "depth", "opacity"):
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_white_background_on_empty_scene():
    cams = sample_sphere_cameras(2, generator=torch.Generator().manual_seed(0))
    out = _renderer(white_back=True).render(empty, cams, 6, training=True)
    assert torch.allclose(out["features"], torch.ones(2, 3, 6, 6))
    assert torch.all(out["opacity"] == 0)
    black = _renderer(white_back=False).render(empty, cams, 6, training=False)
    assert torch.all(black["features"] == 0)


def _naive_box_segment(o, d, half):
    """Per-axis interval intersection in plain Python floats (independent of the slab code)."""
    lo, hi = 0.0, math.inf
    for a in range(3):
        if abs(d[a]) < 1e-12:
            if abs(o[a]) > half:
                return None
            continue
        t0, t1 = (-half - o[a]) / d[a], (half - o[a]) / d[a]
        lo, hi = max(lo, min(t0, t1)), min(hi, max(t0, t1))
    return (lo, hi) if hi > lo else None


def test_ray_box_intersection_against_naive():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(300, 3, generator=g) * 2
    d = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=-1)
    d[:10, 0] = 0.0  # axis-parallel components
    d = torch.nn.functional.normalize(d, dim=-1)
    near, far, hit = ray_box_intersection(o, d, 1.6)
    for k in range(300):
        seg = _naive_box_segment(o[k].tolist(), d[k].tolist(), 0.8)
        assert bool(hit[k]) == (seg is not None), k
        if seg is None:
            assert near[k] == far[k]
        else:
            assert abs(near[k].item() - seg[0]) < 1e-4 and abs(far[k].item() - seg[1]) < 1e-4


@pytest.mark.parametrize("num_fine,training", [(0, False), (16, True)])
def test_constant_medium_opacity_is_beer_lambert(num_fine, training):
    sigma, half = 0.7, 1.0
    cams = cameras_from_angles([0.0, 45.0, 200.0], [0.0, 35.26, -20.0], radius=4.0, fov_deg=60.0)
    r = _renderer(num_coarse=16, num_fine=num_fine)
    out = r.render(constant_medium(sigma), cams, 9, training=training, generator=torch.Generator().manual_seed(0))
    origins, dirs = generate_rays(cams, 9)
    op = out["opacity"].reshape(3, -1)
    hit = out["hit"].reshape(3, -1)
    n_miss = 0
    for n in range(3):
        for k in range(81):
            seg = _naive_box_segment(origins[n, k].tolist(), dirs[n, k].tolist(), half)
            expected = 0.0 if seg is None else 1 - math.exp(-sigma * (seg[1] - seg[0]))
            n_miss += seg is None
            assert bool(hit[n, k]) == (seg is not None)
            assert abs(op[n, k].item() - expected) < 1e-4, (n, k, op[n, k].item(), expected)
    assert n_miss > 0, "the test should include rays that miss the box"


def test_fixed_bounds_constant_medium():
    sigma, start, end = 0.4, 1.0, 3.5
    cams = sample_sphere_cameras(2, generator=torch.Generator().manual_seed(0))
    out = _renderer(ray_start=start, ray_end=end).render(constant_medium(sigma), cams, 4, training=False)
    assert torch.allclose(out["opacity"], torch.full_like(out["opacity"], 1 - math.exp(-sigma * (end - start))), atol=1e-5)


def test_depth_is_normalised_by_opacity():
    # A thin, semi-transparent slab |z| < 0.02 seen from +Z: opacity ~0.3, depth still at the slab.
    def slab(points, dirs):
        return (points[..., 2:].abs() < 0.02).float() * 9.0, torch.zeros_like(points)
    cams = cameras_from_angles(0.0, 0.0, radius=DIST, fov_deg=10.0)
    out = _renderer(num_coarse=64, num_fine=64).render(slab, cams, 3, training=False)
    assert 0.2 < out["opacity"][0, 0, 1, 1] < 0.5
    assert abs(out["depth"][0, 0, 1, 1].item() - DIST) < 0.03


def test_composite_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    R, S, C = 4, 7, 3
    near, far = torch.full((R, 1), 1.0), torch.full((R, 1), 3.0)
    depths, _ = torch.sort(1.0 + 2.0 * torch.rand(R, S, generator=g), dim=-1)
    dens = torch.randn(R, S, 1, generator=g) * 2
    feats = torch.randn(R, S, C, generator=g)
    out = composite(depths, dens, feats, near, far, density_activation="softplus")
    for r in range(R):
        t = depths[r].tolist()
        edges = [1.0] + [(t[k] + t[k + 1]) / 2 for k in range(S - 1)] + [3.0]
        T, acc, col, dsum = 1.0, 0.0, torch.zeros(C), 0.0
        for k in range(S):
            s = math.log1p(math.exp(dens[r, k, 0].item() - 1.0))
            alpha = 1 - math.exp(-s * (edges[k + 1] - edges[k]))
            w = T * alpha
            T *= 1 - alpha
            acc += w
            col += w * feats[r, k]
            dsum += w * t[k]
        assert abs(out["opacity"][r, 0].item() - acc) < 1e-5
        assert torch.allclose(out["features"][r], col, atol=1e-5)
        assert abs(out["depth"][r, 0].item() - dsum / acc) < 1e-4


def test_composite_gradients():
    g = torch.Generator().manual_seed(1)
    depths, _ = torch.sort(1.0 + torch.rand(2, 5, generator=g, dtype=torch.float64), dim=-1)
    near, far = torch.ones(2, 1, dtype=torch.float64), torch.full((2, 1), 2.0, dtype=torch.float64)
    dens = torch.randn(2, 5, 1, generator=g, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(d, f):
        o = composite(depths, d, f, near, far, white_back=True)
        return o["features"], o["depth"], o["opacity"]

    assert torch.autograd.gradcheck(fn, (dens, feats))


def test_sample_pdf_follows_piecewise_constant_pdf():
    edges = torch.tensor([[0.0, 1.0, 1.5, 4.0, 5.0]])
    probs = torch.tensor([[0.1, 0.6, 0.0, 0.3]])
    num = 1000
    t = sample_pdf(edges, probs, num)
    assert torch.all(t[..., 1:] >= t[..., :-1])
    counts = torch.histogram(t[0], bins=edges[0]).hist / num
    assert torch.allclose(counts, probs[0], atol=2.0 / num)
    # Within a bin the samples are uniform: their mean is the bin centre.
    in_bin = t[0][(t[0] > 1.0) & (t[0] < 1.5)]
    assert abs(in_bin.mean().item() - 1.25) < 0.01


def test_stratified_depths_cover_bins():
    near, far = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    mid = stratified_depths(near, far, 4)
    assert torch.allclose(mid, torch.tensor([[1.25, 1.75, 2.25, 2.75]]))
    jit = stratified_depths(near, far, 4, torch.rand(1, 4))
    k = torch.floor((jit - 1.0) / 0.5)
    assert torch.equal(k, torch.arange(4.0)[None])


def test_sample_mult_and_batched_field():
    # Item n of the field is a sphere of radius 0.3 + 0.2 n: the renderer keeps items in rows.
    def per_item(points, dirs):
        radii = 0.3 + 0.2 * torch.arange(points.shape[0], dtype=points.dtype)[:, None, None]
        inside = (points.norm(dim=-1, keepdim=True) < radii).float()
        return inside * 1e4, inside

    cams = cameras_from_angles([0.0, 90.0], [0.0, 0.0], radius=DIST, fov_deg=FOV)
    r = _renderer(num_coarse=8, num_fine=8, sample_mult=2.0)
    out = r.render(per_item, cams, 3, training=False, return_samples=True)
    assert out["depths"].shape[-1] == 32
    assert torch.allclose(out["depth"][:, 0, 1, 1], torch.tensor([DIST - 0.3, DIST - 0.5]), rtol=0.01)
    assert r.render(per_item, cams, 3, training=True, return_samples=True)["depths"].shape[-1] == 16


def test_bad_field_and_options_raise_clear_errors():
    cams = sample_sphere_cameras(1)
    with pytest.raises(ValueError, match="field must return"):
        _renderer().render(lambda p, d: (p, p), cams, 2)
    with pytest.raises(ValueError, match="density_activation"):
        VolumeRenderer(density_activation="sigmoid")
    with pytest.raises(ValueError, match="ray_start"):
        VolumeRenderer(ray_start=2.0, ray_end=1.0)


def test_depth_map_unprojects_onto_the_sphere(sphere_render):
    cams, out = sphere_render
    pts = depth_to_points(cams, out["depth"])
    on = out["opacity"].reshape(2, -1) > 0.99
    assert torch.allclose(pts[on].norm(dim=-1), torch.full((int(on.sum()),), RADIUS), atol=0.01)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_render_matches_cpu():
    g = torch.Generator().manual_seed(0)
    cams = sample_sphere_cameras(2, radius=DIST, fov_deg=FOV, perturb_lookat=0.05, generator=g)
    def blob(points, dirs):  # smooth, so float differences cannot flip a pixel at a hard edge
        return 20.0 * torch.exp(-4.0 * points.pow(2).sum(-1, keepdim=True)), torch.tanh(points)

    r = _renderer(density_noise=0.3, white_back=True)
    cpu = r.render(blob, cams, 17, training=True, generator=torch.Generator().manual_seed(1))
    gpu = r.render(blob, cams.to("cuda"), 17, training=True, generator=torch.Generator().manual_seed(1))
    for key in ("features", "depth", "opacity"):
        assert torch.allclose(cpu[key], gpu[key].cpu(), atol=1e-3), key
