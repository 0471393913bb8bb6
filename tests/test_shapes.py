"""Tests for training/shapes.py: chunked grid sampling, marching tetrahedra on analytic fields, export, .mrc."""

import struct

import numpy as np
import pytest
import torch

from training import shapes

trimesh = pytest.importorskip("trimesh", reason="mesh export needs trimesh")

RADIUS = 0.3
BOX = 1.0




def sphere_density(points: torch.Tensor) -> torch.Tensor:
    """Density 10 exactly on the sphere of RADIUS, rising inward (50 per world unit)."""
    return 10.0 + 50.0 * (RADIUS - points.norm(dim=-1))


def sphere_color(points: torch.Tensor) -> torch.Tensor:
    """Colour = position scaled to [-1, 1] (red grows with x, green with y, blue with z)."""
    return (points / RADIUS).clamp(-1, 1)


def naive_grid(fn, res: int, box: float) -> np.ndarray:
    """Independent reference: a meshgrid of the axis coordinates, evaluated in one call."""
    axis = torch.linspace(-box / 2, box / 2, res)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    return fn(torch.stack([x, y, z], -1).reshape(-1, 3)).reshape(res, res, res).numpy()


@pytest.mark.parametrize("chunk", [1000, 4096, 7, None])
def test_chunked_grid_equals_unchunked(chunk):
    res = 17
    vol = shapes.sample_density_grid(sphere_density, res, BOX, chunk=chunk)
    assert vol.shape == (res, res, res) and vol.dtype == np.float32
    np.testing.assert_allclose(vol, naive_grid(sphere_density, res, BOX), atol=1e-5)


def test_auto_chunk_bounds_memory():
    per_point = 3000
    chunk = shapes.auto_chunk(per_point, 1 << 30)
    assert chunk * per_point <= 1 << 30 and chunk * per_point > (1 << 30) - per_point
    # Every field call of the grid sampler gets at most `chunk` points.
    seen = []
    shapes.sample_density_grid(lambda p: seen.append(len(p)) or p[:, 0], 20, BOX, bytes_per_point=1e6,
                               memory_budget=int(2e9))
    assert max(seen) <= 2000 and sum(seen) == 20 ** 3


def test_sphere_mesh_watertight_with_right_radius():
    vol = shapes.sample_density_grid(sphere_density, 40, BOX)
    verts, faces = shapes.marching_tetrahedra(vol, 10.0, BOX)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # positive volume: normals point outward
    dist = np.linalg.norm(verts, axis=1)
    assert abs(dist.mean() - RADIUS) < 0.02 * RADIUS
    assert abs(mesh.volume - 4 / 3 * np.pi * RADIUS ** 3) < 0.05 * 4 / 3 * np.pi * RADIUS ** 3


def test_mesh_is_in_world_coordinates():
    """An off-centre ellipsoid: the mesh's bounds are the ellipsoid's, in world units (+Y up)."""
    centre, semi = torch.tensor([0.1, 0.2, -0.15]), torch.tensor([0.15, 0.25, 0.1])
    def fn(p):
        return 10.0 + 20.0 * (1.0 - (((p - centre) / semi) ** 2).sum(-1))
    vol = shapes.sample_density_grid(fn, 48, BOX)
    verts, _ = shapes.marching_tetrahedra(vol, 10.0, BOX)
    np.testing.assert_allclose(verts.min(0), (centre - semi).numpy(), atol=0.01)
    np.testing.assert_allclose(verts.max(0), (centre + semi).numpy(), atol=0.01)


def test_surface_touching_the_box_is_closed():
    vol = shapes.sample_density_grid(lambda p: 10.0 + 50.0 * (0.7 - p.norm(dim=-1)), 20, BOX)
    verts, faces = shapes.marching_tetrahedra(vol, 10.0, BOX)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0
    assert np.abs(verts).max() <= BOX / 2 + BOX / 19 + 1e-6  # the cap lies within one step of the box


@pytest.mark.parametrize("value,word", [(0.5, "empty"), (50.0, "fully dense")])
def test_empty_and_full_fields_give_clear_message(value, word):
    vol = np.full((8, 8, 8), value, dtype=np.float32)
    with pytest.raises(shapes.ShapeFieldError) as err:
        shapes.check_level(vol, 10.0)
    msg = str(err.value)
    assert word in msg and "level 10" in msg and "min" in msg and "max" in msg


def test_auto_level_is_mid_range():
    vol = np.linspace(0, 8, 27, dtype=np.float32).reshape(3, 3, 3)
    assert shapes.resolve_level("auto", vol) == pytest.approx(4.0)
    assert shapes.resolve_level("2.5", vol) == 2.5
    with pytest.raises(ValueError, match="auto"):
        shapes.resolve_level("high", vol)


def test_vertex_colors_follow_color_fn():
    verts = np.array([[RADIUS, 0, 0], [0, -RADIUS, 0], [0, 0, 0]], dtype=np.float32)
    rgba = shapes.vertex_colors(sphere_color, verts, chunk=2)
    np.testing.assert_array_equal(rgba, [[255, 128, 128, 255], [128, 0, 128, 255], [128, 128, 128, 255]])


@pytest.mark.parametrize("fmt", shapes.MESH_FORMATS)
def test_every_format_round_trips(tmp_path, fmt):
    vol = shapes.sample_density_grid(sphere_density, 16, BOX)
    verts, faces = shapes.marching_tetrahedra(vol, 10.0, BOX)
    colors = shapes.vertex_colors(sphere_color, verts)
    path = shapes.save_mesh(tmp_path / f"sphere.{fmt}", verts, faces, colors)
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.faces) == len(faces)
    np.testing.assert_allclose(loaded.bounds, np.stack([verts.min(0), verts.max(0)]), atol=1e-5)
    if fmt in ("ply", "glb"):  # these keep the vertex colours (in the same vertex order)
        assert len(loaded.vertices) == len(verts)
        np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], colors[:, :3])


def test_bad_format_is_named(tmp_path):
    with pytest.raises(ValueError, match="xyz"):
        shapes.save_mesh(tmp_path / "a.xyz", np.zeros((3, 3)), np.array([[0, 1, 2]]))


def test_mrc_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(5, 6, 7)).astype(np.float32)
    path = shapes.write_mrc(tmp_path / "v.mrc", vol, voxel_size=0.25, origin=(-0.5, -0.5, -0.5), label="test")
    raw = path.read_bytes()
    # Header read independently with numpy: dims, mode, tags, then the data with x fastest.
    head = np.frombuffer(raw[:1024], dtype="<i4")
    assert tuple(head[:3]) == (5, 6, 7) and head[3] == 2 and tuple(head[16:19]) == (1, 2, 3)
    assert raw[208:212] == b"MAP " and head[27] == 20140
    assert len(raw) == 1024 + vol.size * 4
    cell = np.frombuffer(raw[40:52], dtype="<f4")
    np.testing.assert_allclose(cell, [1.25, 1.5, 1.75])
    assert struct.unpack_from("<3f", raw, 196) == (-0.5, -0.5, -0.5)
    data = np.frombuffer(raw[1024:], dtype="<f4").reshape(7, 6, 5)  # [z, y, x]
    np.testing.assert_array_equal(data.transpose(2, 1, 0), vol)
    back, header = shapes.read_mrc(path)
    np.testing.assert_array_equal(back, vol)
    assert header["shape"] == (5, 6, 7)


def test_generator_shape_export(tmp_path):
    """The generator path: density of a tiny random model on a grid, mesh at the auto level, .mrc."""
    from test_gen_samples import tiny_networks

    torch.manual_seed(0)
    G, _ = tiny_networks()
    ws = G.mapping(torch.randn(1, G.z_dim), torch.eye(G.c_dim)[:1])
    planes = G.planes(ws, noise_mode="const")
    info = shapes.export_generator_shape(G, planes, tmp_path / "obj", resolution=12, level="auto", save_mrc=True)
    assert info["message"] is None and info["faces"] > 0
    mesh = trimesh.load(info["mesh"], process=False)
    assert mesh.is_watertight
    assert np.abs(mesh.vertices).max() <= G.box_size / 2 + G.box_size / 11 + 1e-6
    vol, _ = shapes.read_mrc(info["mrc"])
    assert vol.shape == (12, 12, 12) and float(vol.min()) >= 0  # activated densities
    # The volume is the generator's activated density at the grid points.
    density_fn, _ = shapes.generator_fields(G, planes)
    np.testing.assert_allclose(vol, naive_grid(lambda p: density_fn(p).detach(), 12, G.box_size), atol=1e-5)
    # A level above the field's maximum: no mesh, a message instead.
    info = shapes.export_generator_shape(G, planes, tmp_path / "none", resolution=8, level=1e9)
    assert info["mesh"] is None and "empty" in info["message"]
