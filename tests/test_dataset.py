"""Tests for training/dataset.py: the image data set, the sharded resumable sampler, and class lookup."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.dataset import ImageDataset, InfiniteSampler, class_table_lookup
from training.dataset_classes import imagenet_class_entries, load_imagenet_table

RES, N, K = 8, 12, 3
TABLE = load_imagenet_table()
CLASSES = imagenet_class_entries([TABLE[947], TABLE[986], TABLE[1]])


def image_for(i: int) -> np.ndarray:
    """Image i: red = i (identifies it), green ramps left->right (shows a flip), blue = 7."""
    img = np.zeros((RES, RES, 3), np.uint8)
    img[..., 0] = i
    img[..., 1] = np.arange(RES, dtype=np.uint8)[None, :] * 10
    img[..., 2] = 7
    return img


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def entries(extra_meta: bool = True):
    """(relative path, bytes) for N labelled images, dataset.json, and meta/ ground truth."""
    labels = [[f"{i % K:05d}/img{i:08d}.png", i % K] for i in range(N)]
    files = [(p, png(image_for(i))) for i, (p, _) in enumerate(labels)]
    files.append(("dataset.json", json.dumps({"labels": labels, "classes": CLASSES}).encode()))
    if extra_meta:
        files += [("meta/cameras.json", b'{"secret": 1}'), ("meta/depth/00000.png", png(image_for(99)))]
    return files


def write(dest: Path, files) -> Path:
    if dest.suffix == ".zip":
        with zipfile.ZipFile(dest, "w") as z:
            for name, data in files:
                z.writestr(name, data)
    else:
        for name, data in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(data)
    return dest


@pytest.fixture(params=["zip", "folder"])
def ds_path(request, tmp_path):
    return write(tmp_path / ("ds.zip" if request.param == "zip" else "ds"), entries())


def test_length_labels_images_and_xflip(ds_path):
    ds = ImageDataset(ds_path)
    assert len(ds) == N and ds.resolution == RES and ds.image_shape == [3, RES, RES] and ds.label_dim == K
    for i in range(N):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, RES, RES)
        assert np.array_equal(img.numpy(), image_for(i).transpose(2, 0, 1)) and label == i % K == ds.get_label(i)
    assert ds.labels.tolist() == [i % K for i in range(N)]
    fl = ImageDataset(ds_path, xflip=True)
    assert len(fl) == 2 * N and fl.labels.tolist() == ds.labels.tolist() * 2
    for i in range(N):
        mirrored, label = fl[N + i]
        assert np.array_equal(mirrored.numpy(), image_for(i)[:, ::-1].transpose(2, 0, 1)) and label == i % K
    with pytest.raises(IndexError):
        fl[2 * N]


def test_max_size_subset_deterministic_and_unlabelled(ds_path):
    a = ImageDataset(ds_path, max_size=5, random_seed=3)
    b = ImageDataset(ds_path, max_size=5, random_seed=3)
    c = ImageDataset(ds_path, max_size=5, random_seed=4)
    ids = lambda d: [int(d[i][0][0, 0, 0]) for i in range(len(d))]  # red channel = source index
    assert len(a) == 5 and ids(a) == ids(b) and len(set(ids(a))) == 5 and ids(a) != ids(c)
    u = ImageDataset(ds_path, use_labels=False)
    assert u.label_dim == 0 and u[0][1] == -1 and tuple(u.one_hot([0, 1]).shape) == (2, 0)


def test_one_hot_matches_naive(ds_path):
    ds = ImageDataset(ds_path)
    labels = [2, 0, 1, 1]
    ref = np.zeros((4, K), np.float32)
    for r, c in enumerate(labels):
        ref[r, c] = 1
    assert np.array_equal(ds.one_hot(torch.tensor(labels)).numpy(), ref)
    with pytest.raises(ValueError, match="0..2"):
        ds.one_hot([K])


def test_meta_folder_is_never_exposed(ds_path, tmp_path):
    ds = ImageDataset(ds_path)
    names = [ds.get_fname(i) for i in range(len(ds))] + sorted(ds._all_names())
    assert names and not any(n.startswith("meta") for n in names)
    for hidden in ["meta/cameras.json", "./meta/cameras.json", "00000/../meta/cameras.json"]:
        with pytest.raises(PermissionError, match="meta/"):
            ds._open_file(hidden)
    # Without dataset.json every image file is listed, still none from meta/.
    bare = write(tmp_path / "bare.zip", [e for e in entries() if e[0] != "dataset.json"])
    u = ImageDataset(bare, use_labels=False)
    assert len(u) == N and not any(u.get_fname(i).startswith("meta") for i in range(N))
    # A dataset.json that points into meta/ is refused.
    files = entries()
    labels = [["meta/depth/00000.png", 0]]
    files[N] = ("dataset.json", json.dumps({"labels": labels, "classes": CLASSES}).encode())
    with pytest.raises(ValueError, match="meta/"):
        ImageDataset(write(tmp_path / "evil.zip", files))


@pytest.mark.parametrize("bad,match", [
    (np.zeros((RES, RES + 2, 3), np.uint8), "not square"),
    (np.zeros((RES * 2, RES * 2, 3), np.uint8), "resolution is 8"),
    (np.zeros((RES, RES), np.uint8), "not 3-channel"),
])
def test_image_checks_name_the_file(tmp_path, bad, match):
    files = entries(extra_meta=False)
    files[5] = (files[5][0], png(bad))
    ds = ImageDataset(write(tmp_path / "d.zip", files))
    with pytest.raises(ValueError, match=match) as err:
        ds[5]
    assert files[5][0] in str(err.value)
    ds[4]  # the others still load


def test_pickles_and_dataloader_workers(ds_path):
    ds = ImageDataset(ds_path, xflip=True)
    ds[0]  # opens the zip handle in this process before it is shared
    clone = pickle.loads(pickle.dumps(ds))  # what spawn does
    assert np.array_equal(clone[3][0].numpy(), ds[3][0].numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    imgs, labels = zip(*loader)
    imgs, labels = torch.cat(imgs), torch.cat(labels)
    assert imgs.shape == (2 * N, 3, RES, RES)
    for i in range(2 * N):
        assert torch.equal(imgs[i], ds[i][0]) and labels[i].item() == ds.get_label(i)


def take(sampler: InfiniteSampler, n: int):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("n,replicas", [(12, 3), (10, 3), (7, 2), (5, 8)])
def test_sampler_shards_disjoint_covering_and_deterministic(n, replicas):
    per_rank = -(-n // replicas)
    for epoch in range(3):
        shards = [take(InfiniteSampler(n, rank=r, num_replicas=replicas, seed=1), per_rank * (epoch + 1))[-per_rank:]
                  for r in range(replicas)]
        flat = [i for s in shards for i in s]
        assert set(flat) == set(range(n))  # covering
        # Disjoint up to the wrap-around padding that evens out the ranks.
        assert len(flat) - len(set(flat)) == per_rank * replicas - n
        if n % replicas == 0:
            assert len(set(flat)) == len(flat)
    a = take(InfiniteSampler(n, rank=1 % replicas, num_replicas=replicas, seed=5), 4 * per_rank)
    b = take(InfiniteSampler(n, rank=1 % replicas, num_replicas=replicas, seed=5), 4 * per_rank)
    assert a == b


def test_sampler_epochs_and_seeds_differ():
    e0 = InfiniteSampler(50, seed=0).epoch_indices(0)
    assert sorted(e0.tolist()) == list(range(50))
    assert not np.array_equal(e0, InfiniteSampler(50, seed=0).epoch_indices(1))
    assert not np.array_equal(e0, InfiniteSampler(50, seed=1).epoch_indices(0))
    assert InfiniteSampler(6, shuffle=False).epoch_indices(2).tolist() == list(range(6))


def test_sampler_resume_exact():
    ref = take(InfiniteSampler(10, rank=1, num_replicas=3, seed=7), 40)
    s = InfiniteSampler(10, rank=1, num_replicas=3, seed=7)
    first = take(s, 17)
    state = json.loads(json.dumps(s.state_dict()))  # survives a JSON round trip (checkpoint metadata)
    resumed = InfiniteSampler(10, rank=1, num_replicas=3, seed=7)
    resumed.load_state_dict(state)
    assert first + take(resumed, 23) == ref
    # With DataLoader prefetch the loop passes how many it really consumed.
    again = InfiniteSampler(10, rank=1, num_replicas=3, seed=7)
    again.load_state_dict(s.state_dict(consumed=9))
    assert take(again, 31) == ref[9:]
    with pytest.raises(ValueError, match="num_replicas"):
        InfiniteSampler(10, rank=0, num_replicas=2, seed=7).load_state_dict(state)


def test_class_table_lookup_by_id_name_synset():
    assert class_table_lookup(CLASSES, 947) == 0 and class_table_lookup(CLASSES, "947") == 0
    assert class_table_lookup(CLASSES, "Mushroom") == 0
    assert class_table_lookup(CLASSES, "yellow lady-slipper") == 1  # a secondary lemma
    assert class_table_lookup(CLASSES, "Cypripedium calceolus") == 1
    assert class_table_lookup(CLASSES, "n01443537") == 2 and class_table_lookup(CLASSES, " goldfish ") == 2
    with pytest.raises(ValueError) as err:
        class_table_lookup(CLASSES, "pizza")
    msg = str(err.value)
    assert "pizza" in msg and "947: mushroom (n07734744)" in msg and "1: goldfish (n01443537)" in msg
    with pytest.raises(ValueError, match="986: yellow lady's slipper"):
        class_table_lookup(CLASSES, 0)  # 0 is tench in ImageNet-1k, not in this table
    folder = [{"index": i, "name": n, "synset": None, "imagenet_index": None} for i, n in enumerate(["car", "chair"])]
    assert class_table_lookup(folder, 1) == 1 and class_table_lookup(folder, "CAR") == 0
    with pytest.raises(ValueError, match="1: chair"):
        class_table_lookup(folder, "plane")


def test_dataset_carries_class_table(ds_path):
    ds = ImageDataset(ds_path)
    assert ds.classes == CLASSES and ds.lookup_class(986) == 1
    ds.classes[0]["name"] = "changed"  # a copy: the data set's table is not mutated
    assert ds.classes[0]["name"] == "mushroom"


def test_global_batch_sampler_splits_each_global_batch_across_ranks():
    from training.dataset import GlobalBatchSampler

    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    single = take(GlobalBatchSampler(50, global_batch=8, seed=3), 24)
    ranks = [take(GlobalBatchSampler(50, global_batch=8, rank=r, num_replicas=2, seed=3), 12) for r in range(2)]
    for step in range(3):
        block = single[step * 8:(step + 1) * 8]
        assert ranks[0][step * 4:(step + 1) * 4] == block[:4] and ranks[1][step * 4:(step + 1) * 4] == block[4:]
    resumed = GlobalBatchSampler(50, global_batch=8, seed=3)
    resumed.set_position(2)
    assert take(resumed, 8) == single[16:24]
