"""Shared helpers of the generation CLIs: seed ranges, class queries, picking the network, device, rendering views."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from training.dataset_classes import class_table_lookup
from training.snapshot import find_snapshot, load_network
from training.volumetric_rendering import Cameras, cameras_from_angles, generate_rays, ray_bounds

__all__ = ["DEFAULT_PITCH", "MAX_CLASSES_BY_DEFAULT", "parse_range", "parse_angles", "default_angles",
           "model_classes", "resolve_classes", "class_id", "class_slug", "output_stem", "choose_device",
           "load_generator", "z_from_seed", "class_vector", "compute_ws", "view_cameras", "render_views",
           "video_depth_range", "save_view_strips", "VIDEO_MODES", "parse_grid", "interpolate_ws", "frame_cells",
           "tile", "write_video"]

# Pitch (elevation, degrees) of the default sample views: a little above the object's equator.
DEFAULT_PITCH = 10.0
# Without --class, every class is generated when the model has at most this many, else the first.
MAX_CLASSES_BY_DEFAULT = 10


# -- parsing ------------------------------------------------------------------------------------


def parse_range(spec: Union[str, int, Sequence[int]], name: str = "--seeds") -> List[int]:
    """'0-7,9' -> [0..7, 9] (inclusive ranges, order kept, duplicates dropped)."""
    if isinstance(spec, int):
        return [spec]
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    out: List[int] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
        if not m:
            raise ValueError(f"{name}: cannot parse '{part}' in '{spec}' (expected e.g. 0-7,9)")
        lo, hi = (int(m.group(1)), int(m.group(2))) if m.group(3) is None else (int(m.group(3)),) * 2
        if hi < lo:
            raise ValueError(f"{name}: range '{part}' runs backwards")
        out += [s for s in range(lo, hi + 1) if s not in out]
    if not out:
        raise ValueError(f"{name}: no values in '{spec}'")
    return out


def parse_angles(spec: str) -> List[Tuple[float, float]]:
    """'yaw:pitch,yaw:pitch' (degrees; yaw = azimuth from +Z toward +X, pitch = elevation) -> pairs."""
    out = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        bits = part.split(":")
        try:
            yaw = float(bits[0])
            pitch = float(bits[1]) if len(bits) > 1 else DEFAULT_PITCH
        except ValueError:
            raise ValueError(f"--angles: cannot parse '{part}' "
                             "(expected yaw:pitch in degrees, e.g. 0:10,120:10)") from None
        if len(bits) > 2 or not -90.0 <= pitch <= 90.0:
            raise ValueError(f"--angles: '{part}' must be yaw:pitch with pitch in [-90, 90]")
        out.append((yaw, pitch))
    if not out:
        raise ValueError(f"--angles: no angles in '{spec}'")
    return out


def default_angles(views: int = 3, pitch: float = DEFAULT_PITCH) -> List[Tuple[float, float]]:
    """``views`` yaws spread evenly around the object (0, 360/V, ...) at one small pitch."""
    if views < 1:
        raise ValueError(f"--views must be >= 1, got {views}")
    return [(360.0 * k / views, pitch) for k in range(views)]


# -- classes ------------------------------------------------------------------------------------


def model_classes(metadata: Dict[str, Any], c_dim: int) -> List[Dict[str, Any]]:
    """The checkpoint's class table; a model without one gets entries named class0, class1, ..."""
    classes = list(metadata.get("classes") or [])
    if c_dim > 0 and len(classes) != c_dim:
        if classes:
            raise ValueError(f"the checkpoint's class table has {len(classes)} classes but the model has c_dim={c_dim}")
        classes = [{"index": i, "name": f"class{i}", "synset": None, "imagenet_index": None} for i in range(c_dim)]
    if c_dim == 0:
        classes = [{"index": 0, "name": "unconditional", "synset": None, "imagenet_index": None, "unconditional": True}]
    return classes


def resolve_classes(classes: Sequence[Dict[str, Any]], spec: Optional[str]) -> List[Dict[str, Any]]:
    """Class-table entries for ``spec``: ImageNet-1k indices, names or synsets, comma-separated, or 'all'.

    ``spec=None`` gives every class when there are at most MAX_CLASSES_BY_DEFAULT, else the first.
    An unknown class raises ValueError listing the model's classes (id: name (synset)).
    """
    classes = list(classes)
    if spec is None:
        return classes if len(classes) <= MAX_CLASSES_BY_DEFAULT else classes[:1]
    if spec.strip().lower() == "all":
        return classes
    if len(classes) == 1 and classes[0].get("unconditional"):
        return classes  # an unconditional model ignores --class
    by_index = {int(c["index"]): c for c in classes}
    out: List[Dict[str, Any]] = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        entry = by_index[class_table_lookup(classes, token)]
        if entry not in out:
            out.append(entry)
    if not out:
        raise ValueError(f"--class: no classes in '{spec}'")
    return out


def class_id(entry: Dict[str, Any]) -> int:
    """The id shown to users: the ImageNet-1k index when the table has one, else the data-set index."""
    return int(entry["imagenet_index"]) if entry.get("imagenet_index") is not None else int(entry["index"])


def class_slug(entry: Dict[str, Any]) -> str:
    """'class947_mushroom': id and first name, lower case, anything but [a-z0-9] turned into '_'."""
    name = str(entry.get("name") or "").split(",")[0].strip().lower()
    name = re.sub(r"[^a-z0-9]+", "_", name).strip("_")
    return f"class{class_id(entry)}" + (f"_{name}" if name else "")


def output_stem(seed: int, entry: Dict[str, Any]) -> str:
    """File stem of one sample: 'seed0007_class947_mushroom'."""
    return f"seed{seed:04d}_{class_slug(entry)}"


# -- network and device -------------------------------------------------------------------------


def choose_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' (an error when there is no GPU)."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available to this torch build (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu or cuda[:N], got '{name}'") from None


def load_generator(network: Optional[Union[str, Path]], device: torch.device,
                   search_root: Union[str, Path] = "training-runs",
                   echo: Callable[[str], Any] = print) -> Tuple[torch.nn.Module, Dict[str, Any], Path]:
    """(G_ema, metadata, path) from a snapshot file, a run directory (its newest snapshot) or None
    (the newest snapshot under ``search_root``); says which file it loads through ``echo``."""
    path = find_snapshot(network, search_root=search_root)
    how = "" if network is not None and Path(network).is_file() else " (newest snapshot" + (
        f" in '{network}')" if network is not None else f" under '{search_root}/'; pass --network to choose)")
    echo(f"Loading network '{path}'{how}")
    G, metadata = load_network(path, key="G_ema", device=device)
    return G, metadata, path


# -- latents and rendering ----------------------------------------------------------------------


def z_from_seed(seed: int, z_dim: int) -> torch.Tensor:
    """The latent [1, z_dim] of a seed (numpy RandomState, as in StyleGAN: same z on every device)."""
    return torch.from_numpy(np.random.RandomState(seed).randn(1, z_dim)).float()


def class_vector(G, entry: Dict[str, Any], batch: int = 1, device=None) -> Optional[torch.Tensor]:
    """One-hot class labels [batch, c_dim] for the class-table entry (None for an unconditional G)."""
    if G.c_dim == 0:
        return None
    c = F.one_hot(torch.tensor([int(entry["index"])] * batch), G.c_dim).float()
    return c.to(device)


def compute_ws(G, seeds: Sequence[int], entry: Dict[str, Any], truncation_psi: float = 1.0,
               truncation_cutoff: Optional[int] = None, device=None) -> torch.Tensor:
    """ws [len(seeds), num_ws, w_dim], truncated toward the class's mean w with ``truncation_psi``."""
    device = device if device is not None else next(G.parameters()).device
    z = torch.cat([z_from_seed(s, G.z_dim) for s in seeds]).to(device)
    with torch.no_grad():
        return G.mapping(z, class_vector(G, entry, len(seeds), device), truncation_psi=truncation_psi,
                         truncation_cutoff=truncation_cutoff)


def view_cameras(G, angles: Sequence[Tuple[float, float]], device=None) -> Cameras:
    """Cameras at (yaw, pitch) degrees on G's camera sphere (its radius, field of view, look-at point)."""
    kw = G.camera_kwargs
    yaw, pitch = zip(*angles)
    return cameras_from_angles(list(yaw), list(pitch), radius=kw["radius"], fov_deg=kw["fov_deg"],
                               look_at_point=kw["look_at_point"], device=device)


def render_views(G, ws: torch.Tensor, cameras: Cameras, sample_mult: Optional[float] = None,
                 noise_mode: str = "const") -> Dict[str, torch.Tensor]:
    """Render each item of ``ws`` [B,...] from every camera (item-major B*V images), without gradients.

    Returns image [B*V,3,img_res^2], image_raw [B*V,3,nr^2] (both about [-1,1]), depth and opacity
    [B*V,1,nr^2] (depth: world units along the ray, see docs/cameras.md), the rays' near/far
    bounds [B*V,1,nr^2] (the depth lies between them), and planes [B,3,C,R,R].
    """
    batch = ws.shape[0]
    cams = Cameras(cameras.cam2world.repeat(batch, 1, 1), cameras.intrinsics.repeat(batch, 1, 1)).to(ws.device)
    with torch.no_grad():
        out = G.synthesis(ws, cameras=cams, noise_mode=noise_mode, sample_mult=sample_mult)
    depth = out["image_depth"]
    res = tuple(depth.shape[-2:])
    origins, dirs = generate_rays(cams, res)
    r = G.renderer
    near, far, _ = ray_bounds(origins, dirs, r.ray_start, r.ray_end, r.box_size)
    shape = (len(cams), 1) + res
    return dict(image=out["image"], image_raw=out["image_raw"], depth=depth, opacity=out["opacity"],
                near=near.reshape(shape), far=far.reshape(shape), planes=out["planes"])


def video_depth_range(G) -> Tuple[float, float]:
    """A fixed (near, far) for colouring depth over a whole video: the camera sphere minus/plus the box."""
    half_diag = 0.5 * G.box_size * math.sqrt(3.0)
    radius = float(G.camera_kwargs["radius"])
    return max(radius - half_diag, 0.0), radius + half_diag


def save_view_strips(out: Dict[str, torch.Tensor], stem: Union[str, Path], first: int = 0,
                     views: Optional[int] = None) -> List[Path]:
    """Write `<stem>_views.png` (final images), `_raw.png` (neural renders) and `_depth.png`
    (colour-mapped depth, near = yellow) for the renders ``first .. first+views`` of ``out``."""
    from training.visualize import colorize_depth, save_grid, to_uint8

    n = out["image"].shape[0] if views is None else views
    sl = slice(first, first + n)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    strips = {"views": list(to_uint8(out["image"][sl])), "raw": list(to_uint8(out["image_raw"][sl])),
              "depth": list(colorize_depth(out["depth"][sl], opacity=out["opacity"][sl]))}
    paths = []
    for kind, cells in strips.items():
        path = stem.with_name(f"{stem.name}_{kind}.png")
        save_grid(path, [cells])
        paths.append(path)
    return paths


# -- videos -------------------------------------------------------------------------------------

VIDEO_MODES = ("image", "depth", "raw")


def parse_grid(spec: Optional[str]) -> Tuple[int, int]:
    """'RxC' (rows x columns of seeds tiled in one video); None -> (1, 1)."""
    if spec is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", spec)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"--grid must look like 2x3 (rows x columns), got '{spec}'")
    return int(m.group(1)), int(m.group(2))


def interpolate_ws(keys: torch.Tensor, frames: int, start: int = 0) -> torch.Tensor:
    """ws [frames, num_ws, w_dim] moving through the key ws [K, num_ws, w_dim] in order, from key
    ``start``, and back to it (a loop): equal time per key, eased with a cosine so that the motion
    slows at each key instead of jerking."""
    k = keys.shape[0]
    pos = (torch.arange(frames, dtype=torch.float64) * k / frames + start) % k
    lo = pos.floor().long()
    frac = (1 - torch.cos(torch.pi * (pos - lo))) / 2
    a, b = keys[lo], keys[(lo + 1) % k]
    return a + (b - a) * frac.to(keys.dtype).to(keys.device)[:, None, None]


def frame_cells(out: Dict[str, torch.Tensor], mode: str, depth_range: Tuple[float, float],
                resolution: Optional[int] = None) -> List[np.ndarray]:
    """uint8 [H,W,3] pictures of one frame's renders in ``mode`` (image | raw | depth with a fixed
    colour range over the video), resized to ``resolution`` when given."""
    from PIL import Image

    from training.visualize import colorize_depth, to_uint8

    if mode == "image":
        cells = list(to_uint8(out["image"]))
    elif mode == "raw":
        cells = list(to_uint8(out["image_raw"]))
    elif mode == "depth":
        cells = list(colorize_depth(out["depth"], near=depth_range[0], far=depth_range[1], opacity=out["opacity"]))
    else:
        raise ValueError(f"--mode must be one of {VIDEO_MODES}, got '{mode}'")
    if resolution is not None and cells[0].shape[0] != resolution:
        method = Image.LANCZOS if resolution > cells[0].shape[0] or mode != "depth" else Image.NEAREST
        cells = [np.asarray(Image.fromarray(c).resize((resolution, resolution), method)) for c in cells]
    return cells


def tile(cells: Sequence[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Cells (row-major) tiled edge to edge into one [rows*H, cols*W, 3] picture."""
    if len(cells) != rows * cols:
        raise ValueError(f"tile: {len(cells)} cells for a {rows}x{cols} grid")
    return np.concatenate([np.concatenate(cells[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)


def write_video(path: Union[str, Path], frames, fps: float = 30.0, total: Optional[int] = None,
                progress: bool = True) -> int:
    """Write uint8 [H,W,3] frames (an iterable) as H.264 mp4 (yuv420p); returns the frame count.

    yuv420p needs even sizes, so odd heights/widths are padded by one black row/column. The
    file is written under a temporary name and renamed when complete.
    """
    import imageio.v2 as imageio
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    count = 0
    writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1, quality=8)
    try:
        for frame in tqdm(frames, total=total, desc=path.name, unit="frame", disable=not progress, leave=False):
            h, w = frame.shape[:2]
            writer.append_data(np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0))))
            count += 1
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)  # no half-written video is left behind
        raise
    tmp.replace(path)
    return count
