"""Tests for gen_videos.py, training/trajectories.py and the video helpers of training/gen_utils.py."""

import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gen_videos
from test_gen_samples import write_tiny_snapshot
from training import gen_utils, trajectories




def read_video(path):
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader]
    finally:
        reader.close()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_tiny_snapshot(tmp_path_factory.mktemp("run") / "network-snapshot-000000.safetensors")


# -- trajectories --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", trajectories.TRAJECTORIES)
def test_trajectories_loop_and_stay_on_the_sphere(name):
    n = 48
    ang = trajectories.trajectory_angles(name, n)
    assert ang.shape == (n, 2) and np.all(np.abs(ang[:, 1]) < 90)
    cams = trajectories.trajectory_cameras(name, n, radius=2.7, fov_deg=18.0)
    assert torch.allclose(cams.centers.norm(dim=-1), torch.full((n,), 2.7), atol=1e-5)
    steps = (cams.centers[1:] - cams.centers[:-1]).norm(dim=-1)
    wrap = (cams.centers[0] - cams.centers[-1]).norm()
    assert float(wrap) <= 1.5 * float(steps.max())  # closed loop: the last frame leads smoothly into the first


def test_turntable_full_turn_at_elevation_and_sphere_covers_latitudes():
    ang = trajectories.trajectory_angles("turntable", 36, elevation=25.0)
    assert np.allclose(ang[:, 1], 25.0) and np.allclose(np.diff(ang[:, 0]), 10.0)
    cams = trajectories.trajectory_cameras("turntable", 4, elevation=0.0)
    # Azimuth 0 is on +Z, 90 on +X (docs/cameras.md).
    assert torch.allclose(cams.centers[0], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5)
    assert torch.allclose(cams.centers[1], torch.tensor([2.7, 0.0, 0.0]), atol=1e-5)
    sph = trajectories.trajectory_angles("sphere", 200)
    assert sph[:, 1].min() < -75 and sph[:, 1].max() > 75
    with pytest.raises(ValueError, match="--trajectory"):
        trajectories.trajectory_angles("zigzag", 4)


# -- helpers -------------------------------------------------------------------------------------


def test_interpolate_ws_hits_keys_and_loops():
    keys = torch.randn(3, 2, 4)
    path = gen_utils.interpolate_ws(keys, 12)
    assert path.shape == (12, 2, 4)
    for k in range(3):
        assert torch.allclose(path[4 * k], keys[k])
    assert torch.allclose(path[2], 0.5 * (keys[0] + keys[1]), atol=1e-6)  # the cosine ease is 1/2 midway
    assert torch.allclose(gen_utils.interpolate_ws(keys, 12, start=1)[0], keys[1])


def test_parse_grid_and_tile():
    assert gen_utils.parse_grid("2x3") == (2, 3) and gen_utils.parse_grid(None) == (1, 1)
    with pytest.raises(ValueError, match="--grid"):
        gen_utils.parse_grid("2by3")
    cells = [np.full((4, 4, 3), i, np.uint8) for i in range(6)]
    t = gen_utils.tile(cells, 2, 3)
    assert t.shape == (8, 12, 3) and t[5, 9, 0] == 5 and t[0, 4, 0] == 1


def test_write_video_frame_count_and_size(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (24, 31, 3), dtype=np.uint8) for _ in range(7)]
    n = gen_utils.write_video(tmp_path / "v.mp4", iter(frames), fps=10, progress=False)
    back = read_video(tmp_path / "v.mp4")
    assert n == 7 and len(back) == 7
    assert back[0].shape == (24, 32, 3)  # odd width padded to even for yuv420p
    assert not list(tmp_path.glob("*.tmp*"))


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_single_seed_video(snapshot, tmp_path):
    result = CliRunner().invoke(gen_videos.main, ["--network", str(snapshot), "--class", "947", "--seeds", "3",
                                                  "--frames", "5", "--resolution", "24", "--outdir", str(tmp_path),
                                                  "--device", "cpu", "--fps", "10"])
    assert result.exit_code == 0, result.output
    frames = read_video(tmp_path / "seed0003_class947_mushroom_orbit.mp4")
    assert len(frames) == 5 and frames[0].shape == (24, 24, 3)
    assert np.std(frames[0]) > 0


@pytest.mark.parametrize("mode", ["depth", "raw"])
def test_cli_grid_interpolation_modes(snapshot, tmp_path, mode):
    args = ["--network", str(snapshot), "--class", "mushroom,n07742313", "--seeds", "0-2", "--interpolate",
            "--grid", "1x2", "--trajectory", "turntable", "--mode", mode, "--frames", "4", "--outdir", str(tmp_path),
            "--device", "cpu"]
    result = CliRunner().invoke(gen_videos.main, args)
    assert result.exit_code == 0, result.output
    for slug in ("class947_mushroom", "class948_granny_smith"):
        frames = read_video(tmp_path / f"interp_seeds0000-0002_{slug}_turntable_{mode}_grid1x2.mp4")
        assert len(frames) == 4 and frames[0].shape == (8, 16, 3)  # neural_res 8, two cells side by side


def test_cli_default_network_and_errors(snapshot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(gen_videos.main, ["--frames", "2"])
    assert result.exit_code == 2 and "--network" in result.output
    write_tiny_snapshot(tmp_path / "training-runs" / "00000-demo" / "network-snapshot-000001.safetensors")
    result = runner.invoke(gen_videos.main, ["--class", "948", "--seeds", "0-3", "--grid", "2x2", "--frames", "2",
                                             "--trajectory", "sphere", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "network-snapshot-000001" in result.output
    frames = read_video(tmp_path / "out" / "seeds0000-0003_class948_granny_smith_sphere_grid2x2.mp4")
    assert len(frames) == 2 and frames[0].shape == (32, 32, 3)
    result = runner.invoke(gen_videos.main, ["--seeds", "0-2", "--grid", "2x2", "--frames", "2"])
    assert result.exit_code == 2 and "multiple of 4" in result.output


def test_video_depth_range_brackets_the_box(snapshot):
    G, _, _ = gen_utils.load_generator(snapshot, torch.device("cpu"), echo=lambda s: None)
    near, far = gen_utils.video_depth_range(G)
    half_diag = math.sqrt(3) * G.box_size / 2
    assert near == pytest.approx(2.7 - half_diag) and far == pytest.approx(2.7 + half_diag)
