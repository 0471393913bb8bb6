"""Writes the built-in synthetic data set (images, dataset.json, ground truth under meta/) and reads its ground truth."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from training.synthetic.raycast import Nuisance, parse_nuisance, render_batch, sample_extras
from training.synthetic.shapes import FAMILIES, InstanceParams, occupancy, sample_instance, sdf
from training.volumetric_rendering.cameras import Cameras, generate_rays, sample_sphere_cameras

__all__ = ["build_synthetic_dataset", "load_ground_truth", "GroundTruth", "image_name", "CHUNK"]

CHUNK = 32  # images per render batch; fixed (not tied to workers) so output never depends on workers
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: identical bytes on rerun

README = """Ground truth of the built-in synthetic data set (training code never reads meta/).

dataset.json      {"labels": [[image path, class], ...], "classes": [{"index", "name", "synset", "imagenet_index"}]}
img/CCC/imgGGGGGGGG.png   RGB images (class CCC, global index GGGGGGGG = class * images_per_class + k)
meta/build.json   the arguments the archive was built with
meta/cameras.json {image path: {"cam2world": 4x4, "intrinsics": 3x3}}; project camera convention
                  (+Y up; cam2world columns = camera right, down, forward, centre (OpenCV);
                  intrinsics normalised by image size: fx = fy = 1/(2 tan(fov/2)), cx = cy = 0.5)
meta/depth/CCC/imgGGGGGGGG.npy   float32 [H,W] z-depth (along the camera forward axis, world units)
                  of the main object's visible surface; inf where the pixel shows background
                  or the distractor. World point of pixel (i,j): centre + t * ray, t = depth / (ray . forward),
                  ray through (u,v) = ((j+0.5)/W, (i+0.5)/H).
meta/mask/CCC/imgGGGGGGGG.png    1-bit [H,W] mask of the main object (= depth finite)
meta/instances.json {image path: {"class", "class_name", "seed", "params", "scene"}}: "params" is the
                  instance (family, shape sizes, yaw about +Y in radians, colours, texture) from which
                  training.synthetic.shapes.sdf(points, InstanceParams.from_dict(params)) gives the
                  true signed distance; "scene" holds background, light and distractor.
Read it with training.synthetic.build.load_ground_truth(archive).
"""


def image_name(class_index: int, global_index: int, kind: str = "img") -> str:
    """Relative path of an image (kind="img"), its depth ("depth") or mask ("mask")."""
    stem = f"{class_index:03d}/img{global_index:08d}"
    return {"img": f"img/{stem}.png", "depth": f"meta/depth/{stem}.npy", "mask": f"meta/mask/{stem}.png"}[kind]


@dataclass(frozen=True)
class _Config:
    seed: int
    images_per_class: int
    resolution: int
    radius: float
    fov_deg: float
    nuisance: Nuisance


@dataclass
class _Record:
    name: str
    files: List[Tuple[str, bytes, bool]]  # (archive name, bytes, deflate?)
    camera: dict
    instance: dict


def _draw(cfg: _Config, c: int, k: int):
    """Instance, camera and scene extras of image k of class c: a function of (seed, c, k) only."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, c, k]))
    inst = sample_instance(c, rng)
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    cam = sample_sphere_cameras(1, radius=cfg.radius, fov_deg=cfg.fov_deg, generator=gen)
    return inst, cam, sample_extras(cfg.nuisance, cam, cfg.resolution, rng)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _render_chunk(job: Tuple[_Config, int, int, int]) -> List[_Record]:
    """Renders images k0..k1-1 of class c and encodes them (runs in the worker processes)."""
    cfg, c, k0, k1 = job
    drawn = [_draw(cfg, c, k) for k in range(k0, k1)]
    rgb, depth, mask = render_batch([d[0] for d in drawn], Cameras.cat([d[1] for d in drawn]), cfg.resolution,
                                    [d[2] for d in drawn])
    records = []
    for n, (k, (inst, cam, extras)) in enumerate(zip(range(k0, k1), drawn)):
        g = c * cfg.images_per_class + k
        name = image_name(c, g)
        files = [(name, _png(rgb[n]), False), (image_name(c, g, "depth"), _npy(depth[n]), True),
                 (image_name(c, g, "mask"), _png(mask[n]), False)]
        camera = {"cam2world": cam.cam2world[0].tolist(), "intrinsics": cam.intrinsics[0].tolist()}
        instance = {"class": c, "class_name": FAMILIES[c].name, "seed": [cfg.seed, c, k],
                    "params": inst.to_dict(), "scene": extras.to_dict()}
        records.append(_Record(name, files, camera, instance))
    return records


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; intra-op threads would only contend


class _Writer:
    """Writes files into a zip or a folder at a temporary path; ``commit`` renames it to the destination."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        self.is_zip = dest.suffix.lower() == ".zip"
        self._remove_tmp()
        if self.is_zip:
            self.zip = zipfile.ZipFile(self.tmp, "w")
        else:
            self.tmp.mkdir(parents=True)

    def write(self, name: str, data: bytes, deflate: bool = True) -> None:
        if self.is_zip:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            self.zip.writestr(info, data)
        else:
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def commit(self) -> None:
        """Publish the finished archive; an existing one is replaced only now (a zip atomically)."""
        if self.is_zip:
            self.zip.close()
        if self.dest.is_dir():  # a folder cannot be replaced atomically: move the old one aside first
            old = self.dest.with_name(f"{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.dest)

    def abort(self) -> None:
        if self.is_zip:
            self.zip.close()
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp)
        elif self.tmp.exists():
            self.tmp.unlink()


def _write_chunk(writer: _Writer, records: List[_Record], cameras: dict, instances: dict) -> None:
    for rec in records:
        for name, data, deflate in rec.files:
            writer.write(name, data, deflate)
        cameras[rec.name], instances[rec.name] = rec.camera, rec.instance


def _json(obj) -> bytes:
    return json.dumps(obj, indent=None, separators=(",", ":")).encode()


def _check_args(num_classes: int, images_per_class: int, resolution: int, workers: int) -> None:
    if not 1 <= num_classes <= len(FAMILIES):
        raise ValueError(f"num_classes must lie in [1, {len(FAMILIES)}], got {num_classes}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be positive, got {images_per_class}")
    if resolution < 4:
        raise ValueError(f"resolution must be at least 4, got {resolution}")
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")


def _chunks(cfg: _Config, num_classes: int, workers: int) -> Iterator[List[_Record]]:
    jobs = [(cfg, c, k0, min(k0 + CHUNK, cfg.images_per_class))
            for c in range(num_classes) for k0 in range(0, cfg.images_per_class, CHUNK)]
    if workers == 1:
        yield from map(_render_chunk, jobs)
        return
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_render_chunk, jobs)  # ordered: the archive's layout never depends on timing


def build_synthetic_dataset(
    dest: Union[str, Path],
    num_classes: int = 10,
    images_per_class: int = 1000,
    resolution: int = 64,
    seed: int = 0,
    radius: float = 2.7,
    fov_deg: float = 30.0,
    nuisance: Optional[dict] = None,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Renders the first ``num_classes`` families and writes the archive (zip if dest ends in .zip, else a folder).

    Image k of class c depends only on (seed, c, k): identical bytes for any ``workers``.
    The archive appears at ``dest`` only when complete (written under a temporary name).
    Returns a summary dict (dest, images, classes, seconds, images_per_second).
    """
    _check_args(num_classes, images_per_class, resolution, workers)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"dest {dest} exists; pass overwrite=True to replace it")
    cfg = _Config(int(seed), int(images_per_class), int(resolution), float(radius), float(fov_deg),
                  parse_nuisance(nuisance))
    classes = [{"index": c, "name": FAMILIES[c].name, "synset": None, "imagenet_index": None}
               for c in range(num_classes)]
    labels = [[image_name(c, c * images_per_class + k), c] for c in range(num_classes) for k in range(images_per_class)]
    build_args = {"num_classes": num_classes, "images_per_class": images_per_class, "resolution": resolution,
                  "seed": seed, "radius": radius, "fov_deg": fov_deg, "nuisance": nuisance or {}}
    total = len(labels)
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = _Writer(dest)
    try:
        writer.write("dataset.json", _json({"labels": labels, "classes": classes}))
        cameras, instances = {}, {}
        with tqdm(total=total, unit="img", disable=not progress, desc=f"synthetic -> {dest.name}") as bar:
            for records in _chunks(cfg, num_classes, workers):
                _write_chunk(writer, records, cameras, instances)
                bar.update(len(records))
        writer.write("meta/cameras.json", _json(cameras))
        writer.write("meta/instances.json", _json(instances))
        writer.write("meta/build.json", _json(build_args))
        writer.write("meta/README.txt", README.encode())
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    seconds = time.perf_counter() - start
    return {"dest": str(dest), "images": total, "classes": [c["name"] for c in classes], "resolution": resolution,
            "seconds": seconds, "images_per_second": total / max(seconds, 1e-9)}


# ----------------------------------------------------------------------------------------
# Reading the ground truth back.


class GroundTruth:
    """Per-image camera, depth, mask and instance of a synthetic archive (zip or folder)."""

    def __init__(self, archive: Union[str, Path]):
        self.archive = Path(archive)
        if not self.archive.exists():
            raise FileNotFoundError(f"archive {self.archive} does not exist")
        self._zip = zipfile.ZipFile(self.archive) if self.archive.is_file() else None
        try:
            meta = json.loads(self.read("dataset.json"))
            self.cameras = json.loads(self.read("meta/cameras.json"))
            self.instances = json.loads(self.read("meta/instances.json"))
        except KeyError as exc:
            raise ValueError(f"{self.archive} is not a synthetic archive with ground truth: {exc}") from None
        self.labels: Dict[str, int] = {p: c for p, c in meta["labels"]}
        self.classes: List[dict] = meta["classes"]
        self.paths: List[str] = [p for p, _ in meta["labels"]]

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        path = self.archive / name
        if not path.exists():
            raise KeyError(name)
        return path.read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "GroundTruth":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stem(self, path: str, kind: str) -> str:
        c = self.labels[path]
        return image_name(c, int(Path(path).stem[3:]), kind)

    def image(self, path: str) -> np.ndarray:
        return np.array(Image.open(io.BytesIO(self.read(path))).convert("RGB"))

    def camera(self, path: str) -> Cameras:
        cam = self.cameras[path]
        return Cameras(torch.tensor([cam["cam2world"]]), torch.tensor([cam["intrinsics"]]))

    def depth(self, path: str) -> np.ndarray:
        """float32 [H,W] z-depth of the main object; inf on background and distractor pixels."""
        return np.load(io.BytesIO(self.read(self._stem(path, "depth"))), allow_pickle=False)

    def mask(self, path: str) -> np.ndarray:
        return np.array(Image.open(io.BytesIO(self.read(self._stem(path, "mask"))))).astype(bool)

    def instance(self, path: str) -> InstanceParams:
        return InstanceParams.from_dict(self.instances[path]["params"])

    def backproject(self, path: str) -> np.ndarray:
        """World points [K,3] of the main object's visible surface, from the stored depth and camera."""
        depth = self.depth(path)
        cam = self.camera(path)
        origins, dirs = generate_rays(cam, depth.shape)
        fwd = cam.cam2world[0, :3, 2]
        t = torch.from_numpy(depth.reshape(-1)) / (dirs[0] @ fwd)
        keep = torch.isfinite(t)
        return (origins[0][keep] + t[keep, None] * dirs[0][keep]).numpy()

    @staticmethod
    def true_sdf(params: InstanceParams) -> Callable:
        """points [M,3] (numpy or torch) -> signed distance [M] of the instance's true shape."""
        return lambda points: sdf(points, params)

    @staticmethod
    def true_occupancy(params: InstanceParams) -> Callable:
        return lambda points: occupancy(points, params)


def load_ground_truth(archive: Union[str, Path]) -> GroundTruth:
    """Opens the ground truth (meta/) of a synthetic archive written by ``build_synthetic_dataset``."""
    return GroundTruth(archive)
