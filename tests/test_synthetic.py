"""Tests of the built-in synthetic data set: SDFs, renderer ground truth, archive layout, determinism, atomic writes."""

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.synthetic import build as build_mod
from training.synthetic.build import build_synthetic_dataset, load_ground_truth
from training.synthetic.raycast import parse_nuisance, render_instance
from training.synthetic.shapes import FAMILIES, FAMILY_NAMES, MAX_RADIUS, InstanceParams, sample_instance, \
    sample_surface, sdf
from training.volumetric_rendering.cameras import cameras_from_angles

RES = 24


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("syn") / "syn.zip"
    build_synthetic_dataset(dest, num_classes=10, images_per_class=2, resolution=RES, seed=3, progress=False)
    return dest


@pytest.fixture(scope="module")
def wild_archive(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wild") / "wild"  # no .zip suffix: a folder
    nuisance = {"background": True, "distractor": 1.0, "lighting": True}
    build_synthetic_dataset(dest, num_classes=4, images_per_class=3, resolution=RES, seed=5, nuisance=nuisance,
                            progress=False)
    return dest


def _instances(c: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [sample_instance(c, rng) for _ in range(n)]


def _unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Shapes.


@pytest.mark.parametrize("c", range(len(FAMILIES)))
def test_instances_fit_in_sphere_and_far_points_are_outside(c):
    shell = _unit_vectors(2000) * (MAX_RADIUS + 1e-3)
    far = _unit_vectors(200, 1) * 5.0
    for inst in _instances(c, 20):
        assert (sdf(shell, inst) > 0).all(), f"{inst.family} pokes out of radius {MAX_RADIUS}"
        d_far = sdf(far, inst)
        # the object lies inside the unit ball, so the true distance is >= 5 - 0.8; a bound is >= 0
        assert (d_far > 0).all() and (d_far <= 5.0 + 1e-5).all()


CENTRE_INSIDE = {"sphere", "box", "capsule", "cylinder", "cone", "dumbbell", "snowman", "octahedron"}
CENTRE_OUTSIDE = {"torus", "ring_of_spheres"}


@pytest.mark.parametrize("name", sorted(CENTRE_INSIDE | CENTRE_OUTSIDE))
def test_centre_inside_or_in_the_hole(name):
    c = FAMILY_NAMES.index(name)
    for inst in _instances(c, 20):
        d = float(sdf(np.zeros((1, 3)), inst)[0])
        assert (d < 0) == (name in CENTRE_INSIDE), (name, d)


def test_torus_matches_analytic_distance():
    inst = _instances(FAMILY_NAMES.index("torus"), 1)[0]
    big_r, small_r, yaw = inst.shape["R"], inst.shape["r"], inst.yaw
    p = np.random.default_rng(0).uniform(-1, 1, size=(500, 3))
    # independent: rotate into the torus frame (ring in the XY plane, axis Z after undoing the yaw)
    axis = np.array([math.sin(yaw), 0.0, math.cos(yaw)])  # canonical +Z rotated by yaw about +Y
    along = p @ axis
    radial = np.linalg.norm(p - along[:, None] * axis, axis=1)
    expected = np.hypot(radial - big_r, along) - small_r
    np.testing.assert_allclose(sdf(p.astype(np.float64), inst), expected, atol=1e-9)


@pytest.mark.parametrize("c", range(len(FAMILIES)))
def test_sdf_is_1_lipschitz_and_exact_families_match_brute_force(c):
    rng = np.random.default_rng(c)
    inst = _instances(c, 1, seed=c)[0]
    p = rng.uniform(-1, 1, size=(3000, 3))
    q = p + rng.normal(scale=0.05, size=p.shape)
    lip = np.abs(sdf(p, inst) - sdf(q, inst)) / np.linalg.norm(p - q, axis=1)
    assert lip.max() <= 1.0 + 1e-4, f"{inst.family}: Lipschitz constant {lip.max()}"
    # |f| never exceeds the distance to the (dense) set of true surface points: a conservative bound;
    # exact families also reach it up to the sampling gap of the surface points.
    surf = sample_surface(inst, 10000, rng)
    assert len(surf) > 2000
    test_pts = rng.uniform(-0.9, 0.9, size=(200, 3))
    brute = np.linalg.norm(test_pts[:, None] - surf[None], axis=-1).min(1)
    f = np.abs(sdf(test_pts, inst))
    assert (f <= brute + 1e-3).all()
    if inst.family in {"box", "torus", "capsule", "cylinder", "cone", "dumbbell", "ring_of_spheres", "snowman"}:
        np.testing.assert_allclose(f, brute, atol=0.04)  # a 20% scale error gives ~0.2


def test_instance_params_json_roundtrip_and_numpy_torch_agree():
    inst = _instances(FAMILY_NAMES.index("mushroom"), 1)[0]
    again = InstanceParams.from_dict(json.loads(json.dumps(inst.to_dict())))
    p = np.random.default_rng(0).uniform(-1, 1, size=(100, 3)).astype(np.float32)
    np.testing.assert_array_equal(sdf(p, inst), sdf(p, again))
    np.testing.assert_allclose(sdf(torch.from_numpy(p), inst).numpy(), sdf(p, inst), atol=1e-6)
    with pytest.raises(ValueError, match="family"):
        InstanceParams.from_dict({**inst.to_dict(), "family": "teapot"})


def test_parse_nuisance_names_bad_keys():
    assert parse_nuisance(None).backgrounds == ()
    assert parse_nuisance({"background": "noise"}).backgrounds == ("noise",)
    with pytest.raises(ValueError, match="unknown keys"):
        parse_nuisance({"fog": True})
    with pytest.raises(ValueError, match="background"):
        parse_nuisance({"background": ["plaid"]})


# ----------------------------------------------------------------------------------------
# Rendering.


def test_render_instance_front_view_of_a_sphere_is_analytic():
    """Camera on +Z looking at a sphere of radius r: the centre pixel's z-depth is distance - r."""
    inst = _instances(0, 1)[0]
    r = 0.6
    inst.shape.update(rx=r, ry=r, rz=r)
    cam = cameras_from_angles(0.0, 0.0, radius=2.7, fov_deg=30.0)
    rgb, depth, mask = render_instance(inst, cam, 33)
    assert abs(depth[16, 16] - (2.7 - r)) < 2e-3
    # silhouette: the sphere's angular radius asin(r/2.7) against the pixel grid
    f = 1 / (2 * math.tan(math.radians(15)))
    radius_px = f * math.tan(math.asin(r / 2.7)) * 33
    i, j = np.nonzero(mask)
    dist_px = np.hypot(i - 16, j - 16)
    assert dist_px.max() <= radius_px + 0.01 and dist_px.max() >= radius_px - 1.5
    assert (rgb[~mask] == 255).all()
    np.testing.assert_array_equal(mask, np.isfinite(depth))


# ----------------------------------------------------------------------------------------
# Archive.


def _read(archive: Path, name: str) -> bytes:
    if archive.is_file():
        with zipfile.ZipFile(archive) as zf:
            return zf.read(name)
    return (archive / name).read_bytes()


def test_archive_layout(archive):
    meta = json.loads(_read(archive, "dataset.json"))
    assert set(meta) == {"labels", "classes"}
    assert len(meta["labels"]) == 10 * 2
    assert [c["name"] for c in meta["classes"]] == list(FAMILY_NAMES[:10])
    assert all(c["synset"] is None and c["imagenet_index"] is None for c in meta["classes"])
    cams = json.loads(_read(archive, "meta/cameras.json"))
    inst = json.loads(_read(archive, "meta/instances.json"))
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert "meta/README.txt" in names
    for path, c in meta["labels"]:
        img = Image.open(io.BytesIO(_read(archive, path)))
        assert img.size == (RES, RES) and img.mode == "RGB"
        assert path in cams and path in inst and inst[path]["class"] == c
        stem = path[len("img/"):-len(".png")]
        assert f"meta/depth/{stem}.npy" in names and f"meta/mask/{stem}.png" in names
    # ground truth stays under meta/: the loader's view (everything else) is images + dataset.json
    assert {n for n in names if not n.startswith("meta/")} == {p for p, _ in meta["labels"]} | {"dataset.json"}


def _check_ground_truth(archive: Path):
    """Back-projects every foreground pixel with an independent pinhole model; it must lie on the true surface."""
    with load_ground_truth(archive) as gt:
        for path in gt.paths:
            depth, mask, cam = gt.depth(path), gt.mask(path), gt.cameras[path]
            np.testing.assert_array_equal(mask, np.isfinite(depth))
            assert mask.any(), path
            c2w, K = np.array(cam["cam2world"], np.float64), np.array(cam["intrinsics"], np.float64)
            i, j = np.nonzero(mask)
            u, v = (j + 0.5) / depth.shape[1], (i + 0.5) / depth.shape[0]
            ray_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], 1)
            pts_cam = ray_cam * depth[i, j, None]  # z-depth: camera-frame z equals the stored depth
            world = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
            d = gt.true_sdf(gt.instance(path))(world)
            assert np.abs(d).max() < 1e-2, (path, np.abs(d).max())
            np.testing.assert_allclose(gt.backproject(path), world, atol=1e-4)
            assert gt.true_occupancy(gt.instance(path))(world * 0.0).shape == (len(world),)


def test_ground_truth_depth_lies_on_true_surface(archive):
    _check_ground_truth(archive)


def test_ground_truth_with_nuisances(wild_archive):
    _check_ground_truth(wild_archive)
    with load_ground_truth(wild_archive) as gt:
        corners = np.stack([gt.image(p)[0, 0] for p in gt.paths])
        assert (corners != 255).any(axis=1).mean() > 0.5  # backgrounds are not plain white
        scenes = [gt.instances[p]["scene"] for p in gt.paths]
        assert all(s["distractor"] is not None for s in scenes)
        assert len({tuple(s["light_dir"]) for s in scenes}) == len(scenes)


def test_images_vary_and_classes_differ_in_colour(archive):
    with load_ground_truth(archive) as gt:
        means = {}
        for path in gt.paths:
            img = gt.image(path).astype(np.float64)
            assert img.std() > 5, f"{path} is nearly constant"
            means.setdefault(gt.labels[path], []).append(img[gt.mask(path)].mean(0))
    cls = np.stack([np.mean(v, 0) for _, v in sorted(means.items())])
    gaps = np.linalg.norm(cls[:, None] - cls[None], axis=-1) + np.eye(len(cls)) * 1e9
    assert gaps.min() > 10, gaps.min()


def _build(dest, **kw):
    args = dict(num_classes=2, images_per_class=3, resolution=16, seed=0, progress=False)
    args.update(kw)
    return build_synthetic_dataset(dest, **args)


def test_deterministic_for_a_seed_and_independent_of_workers(tmp_path):
    _build(tmp_path / "a.zip")
    _build(tmp_path / "b.zip")
    _build(tmp_path / "w.zip", workers=2)
    _build(tmp_path / "s.zip", seed=1)
    a = (tmp_path / "a.zip").read_bytes()
    assert a == (tmp_path / "b.zip").read_bytes()
    assert a == (tmp_path / "w.zip").read_bytes()
    other = tmp_path / "s.zip"
    assert _read(tmp_path / "a.zip", "dataset.json") == _read(other, "dataset.json")  # same layout
    path = json.loads(_read(other, "dataset.json"))["labels"][0][0]
    assert _read(tmp_path / "a.zip", path) != _read(other, path)


def test_existing_dest_is_not_overwritten_by_default(tmp_path):
    dest = tmp_path / "d.zip"
    dest.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="d.zip"):
        _build(dest)
    assert dest.read_bytes() == b"keep"
    _build(dest, overwrite=True)
    assert zipfile.is_zipfile(dest)


@pytest.mark.parametrize("name", ["x.zip", "x_dir"])
def test_interrupted_write_leaves_no_archive(tmp_path, monkeypatch, name):
    calls = []

    def failing(writer, records, cameras, instances):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return write_chunk(writer, records, cameras, instances)

    write_chunk = build_mod._write_chunk
    monkeypatch.setattr(build_mod, "_write_chunk", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        _build(tmp_path / name, images_per_class=40)  # two chunks per class
    assert list(tmp_path.iterdir()) == []  # neither the archive nor its temporary file remains


def test_stored_depth_agrees_with_a_re_render_of_the_stored_camera_and_shape(archive):
    with load_ground_truth(archive) as gt:
        for path in gt.paths[::3]:
            _, depth, mask = render_instance(gt.instance(path), gt.camera(path), gt.depth(path).shape[0])
            stored = gt.depth(path)
            np.testing.assert_array_equal(mask, gt.mask(path))
            np.testing.assert_allclose(depth[mask], stored[mask], rtol=1e-4)


def test_true_sdf_changes_sign_along_a_ray_through_the_object(archive):
    """Along the ray through the first foreground pixel: positive before the stored depth, negative just after."""
    from training.volumetric_rendering import generate_rays

    with load_ground_truth(archive) as gt:
        for path in gt.paths[:4]:
            mask, depth = gt.mask(path), gt.depth(path)
            row, col = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
            origins, dirs = generate_rays(gt.camera(path), depth.shape[0])
            o, d = origins[0, row * depth.shape[1] + col].numpy(), dirs[0, row * depth.shape[1] + col].numpy()
            forward = gt.camera(path).cam2world[0, :3, 2].numpy()
            t = depth[row, col] / float(d @ forward)  # z-depth -> distance along the unit ray
            sdf = gt.true_sdf(gt.instance(path))
            before = sdf(np.stack([o + d * t * s for s in (0.2, 0.6, 0.95)]).astype(np.float32))
            after = sdf(np.stack([o + d * (t + 0.02)]).astype(np.float32))
            assert (np.asarray(before) > 0).all() and (np.asarray(after) < 0).all(), path
