"""Shapes from a density field: chunked grid sampling, marching tetrahedra, coloured mesh export, .mrc volumes.

Coordinates: the grid spans the tri-plane's scene box ``[-box_size/2, box_size/2]^3`` in the
world frame of docs/cameras.md (+Y up, world units), with ``resolution`` samples per axis
including both faces of the box. ``volume[i, j, k]`` is the density at
``(x_i, y_j, z_k) = -box_size/2 + (i, j, k) * box_size / (resolution - 1)``. Mesh vertices are
in the same frame and units, so they line up with renders from the same cameras.

Surface extraction is marching *tetrahedra* (no marching-cubes package is needed): every grid
cell is split into the 6 tetrahedra of the Kuhn (Freudenthal) triangulation, which all cells
share, so neighbouring cells agree on their common faces and there are no ambiguous cases.
Each tetrahedron crossed by the level set contributes one triangle (1 or 3 corners inside) or
a quad split in two (2 inside); vertices sit on grid edges by linear interpolation and are
shared between the triangles of one edge. The result is a closed, consistently wound
2-manifold (normals point from high to low density, i.e. outward). Inside means
``density >= level``. The field is treated as empty (0) just beyond the box, so a surface
that touches the box is capped there, at most one grid step outside it.
"""

from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["DEFAULT_LEVEL", "DEFAULT_MEMORY_BUDGET", "MESH_FORMATS", "DensityFn", "ColorFn", "ShapeFieldError",
           "grid_axis", "grid_points", "auto_chunk", "generator_point_bytes", "sample_density_grid",
           "generator_fields", "resolve_level", "check_level", "marching_tetrahedra", "vertex_colors",
           "save_mesh", "write_mrc", "read_mrc", "export_generator_shape"]

# Density (after the renderer's activation) at which the surface is drawn. With world units of
# length, sigma = 10 means an optical depth of 1 over 0.1 units (a tenth of the default box):
# clearly opaque at the scale of the object, as in EG3D's shape extraction.
DEFAULT_LEVEL = 10.0
# Working memory for one chunk of grid points; with the 64 MiB volume of a 256^3 grid and the
# model's weights this stays well inside 4 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30
MESH_FORMATS = ("ply", "obj", "glb", "stl")

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # world points [M,3] -> density [M]
ColorFn = Callable[[torch.Tensor], torch.Tensor]  # world points [M,3] -> RGB [M,3] in about [-1, 1]


class ShapeFieldError(ValueError):
    """The density field has no surface at the requested level (empty or fully dense)."""


# -- grid sampling ------------------------------------------------------------------------------


def grid_axis(resolution: int, box_size: float) -> np.ndarray:
    """World coordinates of the grid samples along one axis (both box faces included)."""
    if resolution < 2:
        raise ValueError(f"shape resolution must be >= 2, got {resolution}")
    if box_size <= 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    return np.linspace(-box_size / 2, box_size / 2, resolution)


def grid_points(start: int, stop: int, resolution: int, box_size: float, device=None) -> torch.Tensor:
    """World points [stop-start, 3] of the flat grid indices [start, stop) (C order: z fastest)."""
    idx = torch.arange(start, stop, device=device, dtype=torch.int64)
    ijk = torch.stack([idx // (resolution * resolution), (idx // resolution) % resolution, idx % resolution], -1)
    step = box_size / (resolution - 1)
    return ijk.to(torch.float32) * step - box_size / 2


def auto_chunk(bytes_per_point: float, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Grid points per field call so that one call's temporaries fit in ``memory_budget`` bytes."""
    if bytes_per_point <= 0 or memory_budget <= 0:
        raise ValueError(f"need positive bytes_per_point and memory_budget, got {bytes_per_point}, {memory_budget}")
    return max(1024, int(memory_budget // bytes_per_point))


def generator_point_bytes(G) -> int:
    """Estimated peak bytes per point of ``G.sample_density`` (float32, no autograd).

    Counts the live tensors per point: plane coordinates (3 planes x 2), the sampled plane
    features (3 x C, plus a permuted copy), their mean (C), each decoder layer's output and its
    activation (2 x hidden per layer) and the final density + features (2 x (1 + out)). A
    factor 2 covers allocator slack and the copies made by the grid sampler.
    """
    c = G.triplane_channels
    dec = G.decoder
    floats = 3 + 6 + 6 * c + c + 2 * dec.hidden * dec.num_layers + 2 * (1 + dec.out_features)
    return int(2 * 4 * floats)


def sample_density_grid(density_fn: DensityFn, resolution: int, box_size: float, chunk: Optional[int] = None,
                        bytes_per_point: float = 256.0, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                        device=None, progress: bool = False) -> np.ndarray:
    """Density on the ``resolution^3`` grid over the box, as float32 [R,R,R] indexed [x, y, z].

    ``density_fn`` is called on chunks of at most ``chunk`` points (default: from
    ``bytes_per_point`` and ``memory_budget``, see ``auto_chunk``); only one chunk of points is
    alive at a time, and the result is gathered on the CPU.
    """
    grid_axis(resolution, box_size)  # validates
    total = resolution ** 3
    chunk = int(chunk) if chunk is not None else auto_chunk(bytes_per_point, memory_budget)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    out = np.empty(total, dtype=np.float32)
    starts = range(0, total, chunk)
    with torch.no_grad():
        for start in tqdm(starts, desc=f"density {resolution}^3", unit="chunk", disable=not progress, leave=False):
            stop = min(start + chunk, total)
            values = density_fn(grid_points(start, stop, resolution, box_size, device))
            if values.shape != (stop - start,):
                raise ValueError(f"density_fn must return [M] for [M,3] points, got {tuple(values.shape)}")
            out[start:stop] = values.detach().float().cpu().numpy()
    return out.reshape(resolution, resolution, resolution)


def generator_fields(G, planes: torch.Tensor) -> Tuple[DensityFn, ColorFn]:
    """(density_fn, color_fn) of one generated object: ``planes`` [1,3,C,R,R] from ``G.planes``.

    The density is the renderer's activated density (what the ray marcher integrates); the
    colour is the decoder's first 3 feature channels (the raw render's RGB, in [-1, 1]).
    """
    if planes.ndim != 5 or planes.shape[0] != 1:
        raise ValueError(f"planes must be [1,3,C,R,R] (one object), got {tuple(planes.shape)}")

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        sigma, _ = G.sample_density(planes, points.to(planes.device)[None], activate=True)
        return sigma[0, :, 0]

    def color_fn(points: torch.Tensor) -> torch.Tensor:
        _, feats = G.sample_density(planes, points.to(planes.device)[None], activate=False)
        return feats[0, :, :3]

    return density_fn, color_fn


# -- level checks -------------------------------------------------------------------------------


def resolve_level(level: Union[float, str], volume: np.ndarray) -> float:
    """A number, or 'auto': halfway between the field's minimum and maximum."""
    if isinstance(level, str):
        if level.strip().lower() == "auto":
            return float(0.5 * (float(volume.min()) + float(volume.max())))
        try:
            level = float(level)
        except ValueError:
            raise ValueError(f"shape level must be a number or 'auto', got {level!r}") from None
    return float(level)


def check_level(volume: np.ndarray, level: float) -> None:
    """Raise ShapeFieldError when no surface exists at ``level`` (empty or fully dense field)."""
    lo, hi = float(volume.min()), float(volume.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise ShapeFieldError(f"the density field has non-finite values (min {lo}, max {hi}); no mesh written")
    if level <= 0:
        raise ShapeFieldError(f"shape level must be > 0 (densities are non-negative), got {level:g}")
    if hi < level:
        raise ShapeFieldError(f"the density field is empty at level {level:g} (field min {lo:.4g}, max {hi:.4g}); "
                              f"no mesh written. Lower the level (e.g. --shape-level {0.5 * (lo + hi):.4g} or auto).")
    if lo >= level:
        raise ShapeFieldError(f"the density field is fully dense at level {level:g} (field min {lo:.4g}, "
                              f"max {hi:.4g}): the mesh would be the box itself; no mesh written. Raise the level "
                              f"(e.g. --shape-level {0.5 * (lo + hi):.4g} or auto).")


# -- marching tetrahedra ------------------------------------------------------------------------


def _kuhn_tetrahedra() -> np.ndarray:
    """The 6 tetrahedra [6,4,3] (corner offsets) of a unit cell, each positively oriented.

    Tetrahedron for the axis permutation p walks 000 -> e_p0 -> e_p0+e_p1 -> 111; every cell
    uses the same split, so a face diagonal is the same on both sides of the face.
    """
    tets = []
    for perm in itertools.permutations(range(3)):
        v = np.zeros((4, 3), dtype=np.int64)
        for step, axis in enumerate(perm):
            v[step + 1:, axis] = 1
        if np.linalg.det((v[1:] - v[0]).astype(float)) < 0:
            v[[1, 2]] = v[[2, 1]]  # orient positively so one triangle table fits all six
        tets.append(v)
    return np.stack(tets)


def _triangle_table() -> Dict[int, np.ndarray]:
    """Per inside-mask case of a positively oriented tetrahedron: triangles [T,3,2] of (inside, outside)
    corner pairs, wound so that their normals point from the inside corners to the outside ones."""
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)  # positively oriented
    table: Dict[int, np.ndarray] = {}
    for case in range(1, 15):
        ins = [k for k in range(4) if case >> k & 1]
        outs = [k for k in range(4) if not case >> k & 1]
        if len(ins) == 1:
            tris = [[(ins[0], o) for o in outs]]
        elif len(ins) == 3:
            tris = [[(i, outs[0]) for i in ins]]
        else:  # quad through the edges a-c, a-d, b-d, b-c (a cycle), split along (a-c, b-d)
            (a, b), (c, d) = ins, outs
            tris = [[(a, c), (a, d), (b, d)], [(a, c), (b, d), (b, c)]]
        outward = ref[outs].mean(0) - ref[ins].mean(0)
        for tri in tris:  # wind on the reference tetrahedron with edge midpoints (planar, exact)
            p = np.array([(ref[i] + ref[o]) / 2 for i, o in tri])
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), outward) < 0:
                tri[1], tri[2] = tri[2], tri[1]
        table[case] = np.array(tris, dtype=np.int64)
    return table


_TETS = _kuhn_tetrahedra()
_TABLE = _triangle_table()


def _active_cells(inside: np.ndarray) -> np.ndarray:
    """Indices [A,3] of the cells whose 8 corners are not all on one side of the level."""
    n = [s - 1 for s in inside.shape]
    any_in = np.zeros(n, dtype=bool)
    all_in = np.ones(n, dtype=bool)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        corner = inside[dx:dx + n[0], dy:dy + n[1], dz:dz + n[2]]
        any_in |= corner
        all_in &= corner
    return np.argwhere(any_in & ~all_in)


def _tet_triangles(vol: np.ndarray, cells: np.ndarray, offsets: np.ndarray, level: float):
    """Edge keys [T,3] and vertex positions [T,3,3] (grid units) of one tetrahedron type over all cells."""
    shape = np.array(vol.shape, dtype=np.int64)
    corners = cells[:, None, :] + offsets[None]  # [A,4,3]
    flat = (corners[..., 0] * shape[1] + corners[..., 1]) * shape[2] + corners[..., 2]  # [A,4]
    vals = vol.reshape(-1)[flat]
    case = ((vals >= level).astype(np.int64) * np.array([1, 2, 4, 8])).sum(1)
    keys, pos = [], []
    for c, tris in _TABLE.items():
        sel = np.nonzero(case == c)[0]
        if sel.size == 0:
            continue
        for tri in tris:
            i, o = tri[:, 0], tri[:, 1]  # inside / outside corner of each of the 3 edges
            fi, fo = flat[sel][:, i], flat[sel][:, o]
            vi, vo = vals[sel][:, i], vals[sel][:, o]
            t = np.clip((level - vi) / (vo - vi), 0.0, 1.0)[..., None]
            pi, po = corners[sel][:, i].astype(np.float64), corners[sel][:, o].astype(np.float64)
            pos.append(pi + t * (po - pi))
            keys.append(np.minimum(fi, fo) * vol.size + np.maximum(fi, fo))
    return keys, pos


def marching_tetrahedra(volume: np.ndarray, level: float, box_size: float,
                        pad_value: Optional[float] = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Surface ``volume == level`` of a grid over the box -> (vertices [V,3] float32 world units,
    faces [F,3] int64), outward (toward lower values) counter-clockwise winding.

    ``volume`` is [R,R,R] indexed [x, y, z] as ``sample_density_grid`` returns it. With
    ``pad_value`` (below ``level``) the grid is surrounded by one layer of that value so that
    the surface is closed where it reaches the box; None leaves it open there.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 2 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be a cube [R,R,R] with R >= 2, got {vol.shape}")
    step = box_size / (vol.shape[0] - 1)
    offset = 0
    if pad_value is not None:
        if pad_value >= level:
            raise ValueError(f"pad_value ({pad_value}) must lie below the level ({level})")
        vol = np.pad(vol, 1, mode="constant", constant_values=pad_value)
        offset = 1
    cells = _active_cells(vol >= level)
    keys, pos = [], []
    for offsets in _TETS:
        k, p = _tet_triangles(vol, cells, offsets, level)
        keys += k
        pos += p
    if not keys:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    keys_all = np.concatenate(keys).reshape(-1)
    pos_all = np.concatenate(pos).reshape(-1, 3)
    uniq, first, inverse = np.unique(keys_all, return_index=True, return_inverse=True)
    vertices = (pos_all[first] - offset) * step - box_size / 2
    return vertices.astype(np.float32), inverse.reshape(-1, 3).astype(np.int64)


# -- colours and export -------------------------------------------------------------------------


def vertex_colors(color_fn: ColorFn, vertices: np.ndarray, chunk: int = 65536, device=None) -> np.ndarray:
    """RGBA uint8 [V,4] from ``color_fn`` at the vertices ([-1, 1] -> [0, 255], alpha 255)."""
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    with torch.no_grad():
        for s in range(0, len(vertices), chunk):
            pts = torch.as_tensor(vertices[s:s + chunk], dtype=torch.float32, device=device)
            rgb = color_fn(pts).detach().float().cpu().numpy()
            rgba[s:s + chunk, :3] = np.clip(np.round((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return rgba


def save_mesh(path: Union[str, Path], vertices: np.ndarray, faces: np.ndarray,
              colors: Optional[np.ndarray] = None, file_format: Optional[str] = None) -> Path:
    """Write a mesh (with RGBA vertex colours where the format keeps them; STL has none) via trimesh."""
    try:
        import trimesh
    except ImportError as exc:  # an optional dependency: pip install trimesh (or .[mesh])
        raise ImportError("mesh export needs trimesh: pip install 'trimesh>=4.0'") from exc
    path = Path(path)
    fmt = (file_format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {MESH_FORMATS}, got {fmt!r} ({path})")
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    mesh.export(tmp, file_type=fmt)
    tmp.replace(path)  # atomic: a failed export leaves no half-written mesh under the final name
    return path


# -- MRC2014 volumes ----------------------------------------------------------------------------

_MRC_HEADER_BYTES = 1024


def write_mrc(path: Union[str, Path], volume: np.ndarray, voxel_size: float = 1.0,
              origin: Tuple[float, float, float] = (0.0, 0.0, 0.0), label: str = "") -> Path:
    """Write a float32 volume [X,Y,Z] (indexed [x, y, z]) as an MRC2014 file (mode 2, little-endian).

    The file stores x fastest (columns), then y (rows), then z (sections), with MAPC/MAPR/MAPS =
    1/2/3. ``voxel_size`` and ``origin`` (the position of voxel 0) are in the volume's units
    (world units here; MRC viewers label them Angstrom).
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"MRC volume must be 3-D [X,Y,Z], got shape {vol.shape}")
    nx, ny, nz = vol.shape
    header = bytearray(_MRC_HEADER_BYTES)
    struct.pack_into("<3i", header, 0, nx, ny, nz)  # NX NY NZ
    struct.pack_into("<i", header, 12, 2)  # MODE 2: float32
    struct.pack_into("<3i", header, 16, 0, 0, 0)  # NXSTART NYSTART NZSTART
    struct.pack_into("<3i", header, 28, nx, ny, nz)  # MX MY MZ (sampling = one voxel per unit cell step)
    struct.pack_into("<3f", header, 40, nx * voxel_size, ny * voxel_size, nz * voxel_size)  # CELLA
    struct.pack_into("<3f", header, 52, 90.0, 90.0, 90.0)  # CELLB
    struct.pack_into("<3i", header, 64, 1, 2, 3)  # MAPC MAPR MAPS
    struct.pack_into("<3f", header, 76, float(vol.min()), float(vol.max()), float(vol.mean()))  # DMIN DMAX DMEAN
    struct.pack_into("<i", header, 88, 1)  # ISPG 1: a single volume
    struct.pack_into("<i", header, 92, 0)  # NSYMBT: no extended header
    struct.pack_into("<i", header, 108, 20140)  # NVERSION
    struct.pack_into("<3f", header, 196, *[float(o) for o in origin])  # ORIGIN
    header[208:212] = b"MAP "
    header[212:216] = bytes([0x44, 0x44, 0x00, 0x00])  # MACHST: little-endian
    struct.pack_into("<f", header, 216, float(vol.std()))  # RMS
    text = label.encode("ascii", "replace")[:80]
    struct.pack_into("<i", header, 220, 1 if text else 0)  # NLABL
    header[224:224 + len(text)] = text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(bytes(header))
        f.write(np.ascontiguousarray(vol.transpose(2, 1, 0)).astype("<f4").tobytes())  # x fastest
    tmp.replace(path)
    return path


def read_mrc(path: Union[str, Path]) -> Tuple[np.ndarray, Dict[str, object]]:
    """Read a mode-2 MRC file written by ``write_mrc`` -> (volume [X,Y,Z], header fields)."""
    raw = Path(path).read_bytes()
    if len(raw) < _MRC_HEADER_BYTES or raw[208:212] != b"MAP ":
        raise ValueError(f"'{path}' is not an MRC2014 file (no 'MAP ' tag)")
    nx, ny, nz, mode = struct.unpack_from("<4i", raw, 0)
    if mode != 2:
        raise ValueError(f"'{path}': only MRC mode 2 (float32) is supported, got mode {mode}")
    ext = struct.unpack_from("<i", raw, 92)[0]
    data = np.frombuffer(raw, dtype="<f4", offset=_MRC_HEADER_BYTES + ext, count=nx * ny * nz)
    header = {"shape": (nx, ny, nz), "mode": mode, "cell": struct.unpack_from("<3f", raw, 40),
              "axes": struct.unpack_from("<3i", raw, 64), "dmin_dmax_dmean": struct.unpack_from("<3f", raw, 76),
              "nversion": struct.unpack_from("<i", raw, 108)[0], "origin": struct.unpack_from("<3f", raw, 196)}
    return data.reshape(nz, ny, nx).transpose(2, 1, 0).astype(np.float32), header


# -- one generated object, end to end -----------------------------------------------------------


def export_generator_shape(G, planes: torch.Tensor, stem: Union[str, Path], resolution: int = 256,
                           level: Union[float, str] = DEFAULT_LEVEL, mesh_format: Optional[str] = "ply",
                           save_mrc: bool = False, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                           progress: bool = False) -> Dict[str, object]:
    """Density grid -> (optional) .mrc -> mesh file ``<stem>.<mesh_format>`` for one object.

    Returns {'level', 'min', 'max', 'mesh': path or None, 'mrc': path or None, 'vertices', 'faces',
    'message'}. An empty or fully dense field writes no mesh and puts the reason in 'message'.
    """
    density_fn, color_fn = generator_fields(G, planes)
    device = planes.device
    volume = sample_density_grid(density_fn, resolution, G.box_size, bytes_per_point=generator_point_bytes(G),
                                 memory_budget=memory_budget, device=device, progress=progress)
    lvl = resolve_level(level, volume)
    info: Dict[str, object] = dict(level=lvl, min=float(volume.min()), max=float(volume.max()), mesh=None, mrc=None,
                                   vertices=0, faces=0, message=None)
    stem = Path(stem)
    if save_mrc:
        step = G.box_size / (resolution - 1)
        info["mrc"] = write_mrc(stem.with_name(stem.name + ".mrc"), volume, voxel_size=step,
                                origin=(-G.box_size / 2,) * 3, label=f"density of {stem.name}")
    if mesh_format is None:
        return info
    try:
        check_level(volume, lvl)
    except ShapeFieldError as exc:
        info["message"] = str(exc)
        return info
    vertices, faces = marching_tetrahedra(volume, lvl, G.box_size)
    colors = vertex_colors(color_fn, vertices, device=device)
    info["mesh"] = save_mesh(stem.with_name(f"{stem.name}.{mesh_format}"), vertices, faces, colors, mesh_format)
    info["vertices"], info["faces"] = len(vertices), len(faces)
    return info
