"""Tests for dataset_tool.py: bad-input handling and its report, class tables, atomic output, streaming memory."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner, Result
from PIL import Image

import dataset_tool
import training.dataset_writer as dataset_writer
from training.dataset_classes import load_imagenet_table, parse_class_list, ClassListError
from training.dataset_sources import folder_source
from training.dataset_writer import convert_dataset
from training.image_processing import ProcessOptions

RES = 16
CLASSES = [947, 985, 1]  # mushroom, daisy, goldfish
TABLE = load_imagenet_table()


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _expectations():
    """file name -> (expected action or None when clean, expected colour of the output or None)."""
    return {
        "rgb_wide.png": (None, (0, 0, 255)),          # red side bands must be cropped away
        "gray.png": ("converted to RGB", (100, 100, 100)),
        "la.png": ("composited", (255, 255, 255)),     # fully transparent -> background
        "p_trans.png": ("composited", (255, 255, 255)),
        "rgba_half.png": ("composited", None),         # checked against a naive blend below
        "cmyk.jpg": ("converted to RGB", (0, 255, 255)),
        "i16.png": ("scaled to 8-bit", (128, 128, 128)),
        "truncated.jpg": ("skipped", None),
        "empty.png": ("skipped", None),
        "notes.txt": ("skipped", None),
        "small.png": ("upscaled", (10, 200, 30)),
        "huge.png": ("skipped", None),
        "ok0.png": (None, (50, 60, 70)),
        "ok1.png": (None, (80, 90, 100)),
    }


def make_tree(root: Path) -> Path:
    """An ImageNet-style tree with every kind of bad input spread over three class folders."""
    syn = [TABLE[i].synset for i in CLASSES]
    a, b, c = (root / s for s in syn)
    wide = np.zeros((30, 40, 3), np.uint8)
    wide[:, :5] = (255, 0, 0)
    wide[:, 35:] = (255, 0, 0)
    wide[:, 5:35] = (0, 0, 255)
    _save(Image.fromarray(wide), a / "rgb_wide.png", quality=98)
    _save(Image.new("L", (20, 24), 100), a / "gray.png")
    _save(Image.new("LA", (20, 20), (30, 0)), a / "la.png")
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    _save(pal, a / "p_trans.png", transparency=0)
    _save(Image.new("RGBA", (20, 20), (255, 0, 0, 128)), a / "rgba_half.png")
    a.joinpath("cmyk.jpg").write_bytes(_jpeg_bytes(Image.new("CMYK", (20, 20), (255, 0, 0, 0))))
    _save(Image.fromarray(np.full((20, 20), 32896, np.uint16)), a / "i16.png")  # 32896/257 = 128
    full = _jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    b.mkdir(parents=True)
    b.joinpath("truncated.jpg").write_bytes(full[: len(full) // 3])
    b.joinpath("empty.png").write_bytes(b"")
    b.joinpath("notes.txt").write_text("not an image")
    _save(Image.new("RGB", (8, 8), (10, 200, 30)), b / "small.png")
    _save(Image.new("L", (1200, 1000), 0), b / "huge.png")  # 1.2 Mpx > --max-pixels below
    _save(Image.new("RGB", (RES, RES), (50, 60, 70)), c / "ok0.png")
    _save(Image.new("RGB", (RES + 4, RES), (80, 90, 100)), c / "ok1.png")
    return root


def write_class_list(path: Path, lines) -> Path:
    path.write_text("# test classes\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture()
def tree(tmp_path):
    src = make_tree(tmp_path / "train")
    syn = [TABLE[i].synset for i in CLASSES]
    # Mixed forms: index only, synset only, full line with a comment.
    cls = write_class_list(tmp_path / "classes.txt", [f"{CLASSES[0]}", f"{syn[1]}  # daisy",
                                                      f"{CLASSES[2]}\t{syn[2]}\tgoldfish"])
    return src, cls


def run_tool(*args) -> Result:
    return CliRunner().invoke(dataset_tool.cli, [str(a) for a in args], catch_exceptions=False)


def imagenet_args(src, cls, dest, *extra):
    return ["imagenet", "--source", src, "--classes", cls, "--dest", dest, "--resolution", RES,
            "--max-pixels", 1_000_000, *extra]


def read_dataset(dest: Path):
    """(dataset.json, {relative path: HxWx3 array}) from a zip or folder."""
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest) as z:
            meta = json.loads(z.read("dataset.json"))
            imgs = {p: np.asarray(Image.open(io.BytesIO(z.read(p)))) for p, _ in meta["labels"]}
    else:
        meta = json.loads((dest / "dataset.json").read_text())
        imgs = {p: np.asarray(Image.open(dest / p)) for p, _ in meta["labels"]}
    return meta, imgs


def test_bad_inputs_report_labels_and_class_table(tree, tmp_path):
    src, cls = tree
    dest = tmp_path / "out" / "ds.zip"
    res = run_tool(*imagenet_args(src, cls, dest))
    assert res.exit_code == 0, res.output
    meta, imgs = read_dataset(dest)
    report = json.loads((tmp_path / "out" / "ds.zip.report.json").read_text())
    expect = _expectations()
    by_file = {}
    for p in report["problems"]:
        by_file.setdefault(Path(p["file"]).name, []).append(p["action"] + " | " + p["reason"])
    for name, (action, _) in expect.items():
        if action is None:
            assert name not in by_file, (name, by_file.get(name))
        else:
            assert any(action in entry for entry in by_file[name]), (name, by_file.get(name))
    n_skipped = sum(a == "skipped" for a, _ in expect.values())
    assert report["num_images"] == len(expect) - n_skipped == len(meta["labels"])
    assert report["num_skipped"] == n_skipped
    assert "pixels" in by_file["huge.png"][0] and "bomb" in by_file["huge.png"][0]
    assert "not an image" in by_file["notes.txt"][0] and "empty" in by_file["empty.png"][0]
    assert "truncated" in by_file["truncated.jpg"][0]
    # Class table maps data-set index -> ImageNet index, synset and names.
    assert meta["classes"] == [{"index": k, "name": TABLE[i].names, "synset": TABLE[i].synset, "imagenet_index": i}
                               for k, i in enumerate(CLASSES)]
    # Labels: per class, the count of good files the test put in that class's folder.
    good_per_folder = {}
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        if expect[f.name][0] != "skipped":
            good_per_folder[f.parent.name] = good_per_folder.get(f.parent.name, 0) + 1
    counts = np.bincount([c for _, c in meta["labels"]], minlength=3)
    assert counts.tolist() == [good_per_folder[TABLE[i].synset] for i in CLASSES] == report["images_per_class"]
    # Pixels: every output is RES x RES RGB, and plain-colour inputs keep their colour.
    name_of = _output_names(src, meta)
    for path, arr in imgs.items():
        assert arr.shape == (RES, RES, 3) and arr.dtype == np.uint8
        colour = expect[name_of[path]][1]
        if colour is not None:
            assert np.abs(arr.astype(int) - colour).max() <= 6, (name_of[path], arr.reshape(-1, 3)[0])
    half = next(a for p, a in imgs.items() if name_of[p] == "rgba_half.png")
    alpha = 128 / 255.0  # naive "over" blend of (255,0,0) at alpha 128 onto white
    ref = np.array([255, 255 * (1 - alpha), 255 * (1 - alpha)])
    assert np.abs(half.reshape(-1, 3).astype(float) - ref).max() <= 1.5


def _output_names(src: Path, meta) -> dict:
    """Output path -> source file name, by replaying the tool's order (class-major, sorted, good files only)."""
    expect = _expectations()
    good = []
    for i in CLASSES:
        files = sorted(p.name for p in (src / TABLE[i].synset).iterdir())
        good += [f for f in files if expect[f][0] != "skipped"]
    return {p: g for (p, _), g in zip(meta["labels"], good)}


def test_skip_small_and_background_flags(tree, tmp_path):
    src, cls = tree
    dest = tmp_path / "skip.zip"
    res = run_tool(*imagenet_args(src, cls, dest, "--skip-small", "--background", "0,0,0"))
    assert res.exit_code == 0, res.output
    meta, imgs = read_dataset(dest)
    report = json.loads(Path(str(dest) + ".report.json").read_text())
    small = [p for p in report["problems"] if p["file"].endswith("small.png")]
    assert [p["action"] for p in small] == ["skipped"]
    # Every image narrower than RES (gray/la/... are 20 px, ok0 is exactly RES) is fine; only small.png goes.
    assert report["num_images"] == len(_expectations()) - 5
    la = [p for p in report["problems"] if p["file"].endswith("la.png")]
    assert "(0, 0, 0)" in la[0]["action"]


def test_zip_and_folder_outputs_agree_and_workers_deterministic(tree, tmp_path):
    src, cls = tree
    z, d, w = tmp_path / "a.zip", tmp_path / "a_folder", tmp_path / "w.zip"
    assert run_tool(*imagenet_args(src, cls, z)).exit_code == 0
    assert run_tool(*imagenet_args(src, cls, d)).exit_code == 0
    assert run_tool(*imagenet_args(src, cls, w, "--workers", 2)).exit_code == 0
    mz, iz = read_dataset(z)
    md, id_ = read_dataset(d)
    mw, iw = read_dataset(w)
    assert d.is_dir() and zipfile.is_zipfile(z)
    assert mz == md == mw
    for p in iz:
        assert np.array_equal(iz[p], id_[p]) and np.array_equal(iz[p], iw[p])
    # The training loader reads both outputs the same way, with the class table.
    from training.dataset import ImageDataset
    for path in (z, d):
        ds = ImageDataset(path)
        assert len(ds) == len(mz["labels"]) and ds.resolution == RES and ds.label_dim == len(CLASSES)
        assert ds.lookup_class("daisy") == 1 and ds.lookup_class(TABLE[1].synset) == 2
        assert np.array_equal(ds[0][0].numpy().transpose(1, 2, 0), iz[mz["labels"][0][0]])


def test_existing_dest_refused_then_replaced_with_force(tree, tmp_path):
    src, cls = tree
    dest = tmp_path / "ds.zip"
    dest.write_bytes(b"precious")
    res = CliRunner().invoke(dataset_tool.cli, [str(a) for a in imagenet_args(src, cls, dest)])
    assert res.exit_code != 0 and "--force" in res.output
    assert dest.read_bytes() == b"precious"
    res = run_tool(*imagenet_args(src, cls, dest, "--force"))
    assert res.exit_code == 0, res.output
    assert zipfile.is_zipfile(dest)
    folder = tmp_path / "dsdir"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    res = run_tool(*imagenet_args(src, cls, folder, "--force"))
    assert res.exit_code == 0 and not (folder / "old.txt").exists() and (folder / "dataset.json").is_file()


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_run_leaves_no_dest(tree, tmp_path, monkeypatch, existing):
    src, cls = tree
    dest = tmp_path / "ds.zip"
    if existing:
        dest.write_bytes(b"old data set")
    real = dataset_writer.load_and_encode
    calls = {"n": 0}

    def flaky(path, opts):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # what Ctrl-C mid-run looks like
        return real(path, opts)

    monkeypatch.setattr(dataset_writer, "load_and_encode", flaky)
    res = CliRunner().invoke(dataset_tool.cli, [str(a) for a in imagenet_args(src, cls, dest, "--force")])
    assert res.exit_code != 0 and calls["n"] == 4  # click turns Ctrl-C into "Aborted!"
    if existing:
        assert dest.read_bytes() == b"old data set"
    else:
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train", "classes.txt"] + (["ds.zip"] if existing else []))


def test_unknown_synset_or_missing_folder_fails_before_any_output(tree, tmp_path):
    src, cls = tree
    bad = write_class_list(tmp_path / "bad.txt", ["947", "985", "n99999999  bogus"])
    dest = tmp_path / "never.zip"
    res = CliRunner().invoke(dataset_tool.cli, [str(a) for a in imagenet_args(src, bad, dest)])
    assert res.exit_code != 0
    assert f"{bad}:4" in res.output and "n99999999" in res.output  # line 1 is the header comment
    res = CliRunner().invoke(dataset_tool.cli, [str(a) for a in imagenet_args(src, write_class_list(
        tmp_path / "bad2.txt", ["947", "1000"]), dest)])
    assert res.exit_code != 0 and "bad2.txt:3" in res.output and "out of range" in res.output
    absent = write_class_list(tmp_path / "absent.txt", ["947", "986"])  # 986 has no folder in the tree
    res = CliRunner().invoke(dataset_tool.cli, [str(a) for a in imagenet_args(src, absent, dest)])
    assert res.exit_code != 0 and TABLE[986].synset in res.output and "absent.txt:3" in res.output
    assert not dest.exists() and not list(tmp_path.glob(".never*"))


def test_class_list_file_parses_and_holds_paper_classes():
    classes = parse_class_list(Path(dataset_tool.DEFAULT_CLASS_LIST))
    idx = [c.index for c in classes]
    assert len(idx) == len(set(idx)) == 100
    assert {947, 985, 986, 933, 963, 701, 732, 907, 914, 872} <= set(idx)
    # Every line's index, synset and name agree with the ImageNet-1k table.
    for line in Path(dataset_tool.DEFAULT_CLASS_LIST).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            i, syn, name = line.split("\t")
            assert TABLE[int(i)].synset == syn and TABLE[int(i)].name == name
    # Few dog breeds (ImageNet 151..268): no near-duplicate breeds.
    assert sum(151 <= i <= 268 for i in idx) <= 1


def test_class_list_rejects_mismatch_and_duplicates(tmp_path):
    with pytest.raises(ClassListError, match=r"m\.txt:1.*different classes"):
        parse_class_list(_plain(tmp_path / "m.txt", "947 n11939491"))
    with pytest.raises(ClassListError, match=r"d\.txt:2.*already listed on line 1"):
        parse_class_list(_plain(tmp_path / "d.txt", "947\nn07734744"))


def _plain(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_folder_source_classes_sorted(tmp_path):
    for name in ["plane", "chair", "car"]:
        _save(Image.new("RGB", (RES, RES), (1, 2, 3)), tmp_path / "src" / name / "sub" / "r0.png")
    dest = tmp_path / "shapes"
    res = run_tool("folder", "--source", tmp_path / "src", "--dest", dest, "--resolution", RES)
    assert res.exit_code == 0, res.output
    meta, _ = read_dataset(dest)
    assert [c["name"] for c in meta["classes"]] == ["car", "chair", "plane"]
    assert all(c["imagenet_index"] is None and c["synset"] is None for c in meta["classes"])
    assert sorted(c for _, c in meta["labels"]) == [0, 1, 2]


def test_max_images_round_robin_and_max_per_class(tmp_path):
    for k, name in enumerate(["a", "b", "c"]):
        for j in range(5):
            _save(Image.new("RGB", (RES, RES), (k, j, 0)), tmp_path / "src" / name / f"{j}.png")
    items, _ = folder_source(tmp_path / "src", max_per_class=4, max_images=7)
    labels = [it.label for it in items]
    assert labels == sorted(labels) and np.bincount(labels).tolist() == [3, 2, 2]
    assert [Path(it.path).name for it in items if it.label == 0] == ["0.png", "1.png", "2.png"]
    items, _ = folder_source(tmp_path / "src", max_per_class=2)
    assert np.bincount([it.label for it in items]).tolist() == [2, 2, 2]


def _peak_rss_growth(fn) -> int:
    """Run fn while sampling this process's RSS; return peak minus the RSS before."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        stop.set()
        t.join()
    return max(peak[0], proc.memory_info().rss) - base


def test_memory_stays_flat_in_number_of_images(tmp_path):
    n, res = 3000, 64
    src = tmp_path / "src" / "only"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(src / f"{i:05d}.png")
    items, classes = folder_source(tmp_path / "src")
    opts = ProcessOptions(resolution=res)
    convert_dataset(items[:200], classes, tmp_path / "warm.zip", opts, progress=False)  # warm up allocators
    growth = _peak_rss_growth(lambda: convert_dataset(items, classes, tmp_path / "big.zip", opts, progress=False))
    with zipfile.ZipFile(tmp_path / "big.zip") as z:
        assert len(z.namelist()) == n + 1
    leak_if_buffered = n * res * res * 3  # what holding every decoded image would cost (~37 MB)
    assert growth < leak_if_buffered / 3, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_synthetic_subcommand(tmp_path):
    pytest.importorskip("training.synthetic.build", reason="synthetic generator not present yet")
    from training.dataset import ImageDataset
    dest = tmp_path / "syn.zip"
    res = run_tool("synthetic", "--dest", dest, "--num-classes", 2, "--images-per-class", 2, "--resolution", 16,
                   "--backgrounds", "--no-distractors", "--lighting")
    assert res.exit_code == 0, res.output
    ds = ImageDataset(dest)
    assert len(ds) == 4 and ds.label_dim == 2 and ds.resolution == 16
    assert not any(ds.get_fname(i).startswith("meta/") for i in range(len(ds)))
    assert not list(tmp_path.glob(".syn*"))
    res = CliRunner().invoke(dataset_tool.cli, ["synthetic", "--dest", str(dest), "--num-classes", "2"])
    assert res.exit_code != 0 and "--force" in res.output
