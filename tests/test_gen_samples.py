"""Tests for gen_samples.py and training/gen_utils.py: seeds, classes, network picking, views, depth, CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import gen_samples
from training import gen_utils
from training.discriminator import Discriminator
from training.snapshot import save_snapshot
from training.triplane import TriPlaneGenerator

CLASSES = [
    {"index": 0, "name": "mushroom", "synset": "n07734744", "imagenet_index": 947},
    {"index": 1, "name": "Granny Smith", "synset": "n07742313", "imagenet_index": 948},
    {"index": 2, "name": "tabby, tabby cat", "synset": "n02123045", "imagenet_index": 281},
]




def tiny_networks(c_dim: int = len(CLASSES)):
    G = TriPlaneGenerator(
        z_dim=16, c_dim=c_dim, w_dim=32, triplane_res=16, triplane_channels=8, neural_res=8, img_res=16,
        decoder_hidden=16, decoder_out=8, mapping_layers=2,
        backbone_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0),
        rendering_kwargs=dict(num_coarse=8, num_fine=4, box_size=1.0, radius=2.7, fov_deg=18.837),
        sr_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=0))
    D = Discriminator(c_dim=c_dim, img_resolution=16, channel_base=128, channel_max=16, mapping_layers=2,
                      mbstd_group_size=2, num_fp16_res=0)
    return G.eval(), D


def write_tiny_snapshot(path: Path, classes=CLASSES, seed: int = 0) -> Path:
    """A random tiny snapshot with a class table (what train.py writes, at toy size)."""
    torch.manual_seed(seed)
    G, D = tiny_networks(len(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_snapshot(path, {"G": G, "D": D, "G_ema": G}, classes=classes, extra={"cur_nimg": 0})
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    return write_tiny_snapshot(tmp_path_factory.mktemp("run") / "network-snapshot-000000.safetensors")


@pytest.fixture(scope="module")
def tiny_G(snapshot):
    G, meta, _ = gen_utils.load_generator(snapshot, torch.device("cpu"), echo=lambda s: None)
    return G, meta


# -- parsing -------------------------------------------------------------------------------------


def test_parse_range():
    assert gen_utils.parse_range("0-3,9,2") == [0, 1, 2, 3, 9]
    assert gen_utils.parse_range("7") == [7]
    for bad in ("3-1", "a", "1-", ""):
        with pytest.raises(ValueError, match="--seeds"):
            gen_utils.parse_range(bad)


def test_parse_angles_and_defaults():
    assert gen_utils.parse_angles("0:10, 90:-5,180") == [(0.0, 10.0), (90.0, -5.0), (180.0, gen_utils.DEFAULT_PITCH)]
    with pytest.raises(ValueError, match="--angles"):
        gen_utils.parse_angles("0:100")
    assert [a for a, _ in gen_utils.default_angles(3)] == [0.0, 120.0, 240.0]


# -- classes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["947", "mushroom", "n07734744", "MUSHROOM"])
def test_class_by_id_name_synset(query):
    assert [c["index"] for c in gen_utils.resolve_classes(CLASSES, query)] == [0]


def test_class_lists_all_and_default():
    assert [c["index"] for c in gen_utils.resolve_classes(CLASSES, "tabby cat, 947,granny smith")] == [2, 0, 1]
    assert [c["index"] for c in gen_utils.resolve_classes(CLASSES, "all")] == [0, 1, 2]
    assert len(gen_utils.resolve_classes(CLASSES, None)) == 3  # few classes: all of them
    many = [{"index": i, "name": f"c{i}", "synset": None, "imagenet_index": None} for i in range(20)]
    assert [c["index"] for c in gen_utils.resolve_classes(many, None)] == [0]


def test_unknown_class_lists_valid_classes():
    with pytest.raises(ValueError) as err:
        gen_utils.resolve_classes(CLASSES, "mushroom,zebra")
    msg = str(err.value)
    assert "zebra" in msg
    for text in ("947: mushroom (n07734744)", "948: Granny Smith", "281: tabby"):
        assert text in msg


def test_output_names():
    assert gen_utils.output_stem(7, CLASSES[0]) == "seed0007_class947_mushroom"
    assert gen_utils.class_slug(CLASSES[1]) == "class948_granny_smith"
    folder = {"index": 3, "name": "My Chair!", "synset": None, "imagenet_index": None}
    assert gen_utils.class_slug(folder) == "class3_my_chair"


# -- network picking -----------------------------------------------------------------------------


def test_default_network_is_newest_under_training_runs(tmp_path, monkeypatch):
    old = write_tiny_snapshot(tmp_path / "training-runs" / "00000-a" / "network-snapshot-000004.safetensors")
    new = write_tiny_snapshot(tmp_path / "training-runs" / "00001-b" / "network-snapshot-000002.safetensors")
    import os
    os.utime(old, (1, 1))  # make the other run's snapshot clearly the newest
    monkeypatch.chdir(tmp_path)
    said = []
    _, _, path = gen_utils.load_generator(None, torch.device("cpu"), echo=said.append)
    assert path.resolve() == new.resolve()
    assert str(new.name) in said[0] and "--network" in said[0]
    _, _, path = gen_utils.load_generator(str(old.parent), torch.device("cpu"), echo=said.append)
    assert path.resolve() == old.resolve()


def test_no_network_gives_clear_cli_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(gen_samples.main, ["--class", "947"])
    assert result.exit_code == 2
    assert "training-runs" in result.output and "--network" in result.output


def test_device_choice():
    assert gen_utils.choose_device("cpu").type == "cpu"
    assert gen_utils.choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device"):
            gen_utils.choose_device("cuda")


# -- rendering -----------------------------------------------------------------------------------


def test_render_views_count_size_depth_bounds(tiny_G):
    G, meta = tiny_G
    entry = gen_utils.resolve_classes(gen_utils.model_classes(meta, G.c_dim), "947")[0]
    ws = gen_utils.compute_ws(G, [0, 1], entry, truncation_psi=1.0)
    cams = gen_utils.view_cameras(G, gen_utils.default_angles(3))
    out = gen_utils.render_views(G, ws, cams)
    assert out["image"].shape == (6, 3, G.img_res, G.img_res)
    assert out["image_raw"].shape == (6, 3, G.neural_res, G.neural_res)
    assert out["depth"].shape == (6, 1, G.neural_res, G.neural_res)
    assert float(out["image"].std()) > 1e-4  # not a constant picture
    assert not torch.equal(out["image"][0], out["image"][3])  # seeds differ
    # Depth lies inside each ray's [near, far] and those bounds are the box crossing (camera at 2.7).
    d, near, far = out["depth"], out["near"], out["far"]
    assert bool(((d >= near - 1e-4) & (d <= far + 1e-4)).all())
    half_diag = 0.5 * G.box_size * 3 ** 0.5
    assert float(near.min()) >= 2.7 - half_diag - 1e-4 and float(far.max()) <= 2.7 + half_diag + 1e-4


def test_same_seed_same_images_and_truncation_pulls_to_mean(tiny_G):
    G, meta = tiny_G
    entry = gen_utils.model_classes(meta, G.c_dim)[1]
    w1 = gen_utils.compute_ws(G, [5], entry, truncation_psi=1.0)
    w0 = gen_utils.compute_ws(G, [5], entry, truncation_psi=0.0)
    wh = gen_utils.compute_ws(G, [5], entry, truncation_psi=0.5)
    assert torch.allclose(wh, 0.5 * (w0 + w1), atol=1e-5)
    assert torch.equal(w1, gen_utils.compute_ws(G, [5], entry, truncation_psi=1.0))


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_end_to_end(snapshot, tmp_path):
    outdir = tmp_path / "out"
    args = ["--network", str(snapshot), "--class", "mushroom,948", "--seeds", "0-1", "--views", "2",
            "--shapes", "--shape-res", "24", "--shape-level", "auto", "--save-mrc", "--outdir", str(outdir),
            "--device", "cpu", "--trunc", "1"]
    result = CliRunner().invoke(gen_samples.main, args)
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        for slug in ("class947_mushroom", "class948_granny_smith"):
            stem = outdir / f"seed{seed:04d}_{slug}"
            views = np.asarray(Image.open(f"{stem}_views.png"))
            assert views.shape == (16 + 4, 2 * (16 + 2) + 2, 3)  # 2 views of 16 px with 2 px borders
            assert views[2:-2, 2:-2].std() > 0
            assert np.asarray(Image.open(f"{stem}_raw.png")).shape[:2] == (8 + 4, 2 * (8 + 2) + 2)
            assert Path(f"{stem}_depth.png").is_file() and Path(f"{stem}.mrc").is_file()
            assert Path(f"{stem}.ply").is_file(), result.output


def test_cli_angles_and_bad_class(snapshot, tmp_path):
    runner = CliRunner()
    result = runner.invoke(gen_samples.main, ["--network", str(snapshot), "--class", "zebra",
                                              "--outdir", str(tmp_path)])
    assert result.exit_code == 2 and "947: mushroom" in result.output
    result = runner.invoke(gen_samples.main, ["--network", str(snapshot), "--class", "281", "--seeds", "3",
                                              "--angles", "0:0,90:20,180:-20,270:45", "--outdir", str(tmp_path),
                                              "--device", "cpu"])
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(tmp_path / "seed0003_class281_tabby_views.png"))
    assert img.shape[1] == 4 * (16 + 2) + 2


def test_cli_empty_field_message(snapshot, tmp_path):
    result = CliRunner().invoke(gen_samples.main, ["--network", str(snapshot), "--class", "947", "--seeds", "0",
                                                   "--shapes", "--shape-res", "8", "--shape-level", "1e6",
                                                   "--outdir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "empty at level 1e+06" in result.output and "min" in result.output
    assert not list(tmp_path.glob("*.ply"))
