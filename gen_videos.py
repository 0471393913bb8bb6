"""Render videos of generated objects along a camera path (orbit, turntable, sphere), optionally interpolating seeds.

Examples:

    python gen_videos.py --class 947 --seeds 0-3                          # newest snapshot under training-runs/
    python gen_videos.py --network training-runs/00003-imagenet100 --class mushroom --seeds 0-3 --grid 2x2
    python gen_videos.py --network net.safetensors --class 947 --seeds 0-5 --interpolate --trajectory turntable
    python gen_videos.py --network net.safetensors --class 947 --seeds 1 --mode depth --trajectory sphere

Videos are H.264 mp4 (yuv420p) in --outdir, e.g. seed0001_class947_mushroom_orbit.mp4,
seeds0000-0003_class947_mushroom_orbit_grid2x2.mp4, interp_seeds0000-0005_class947_mushroom_turntable.mp4
(a suffix _depth / _raw for the other modes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import click
import numpy as np
import torch

from training import gen_utils
from training.gen_options import output_options, source_options
from training.trajectories import TRAJECTORIES, trajectory_cameras


def _frames(G, ws_per_frame, cameras, mode: str, rows: int, cols: int, resolution: Optional[int],
            sample_mult: Optional[float], depth_range) -> Iterator[np.ndarray]:
    """One tiled uint8 picture per frame: ws_per_frame(f) -> [cells, num_ws, w_dim], camera f."""
    for f in range(len(cameras)):
        out = gen_utils.render_views(G, ws_per_frame(f), cameras[f], sample_mult=sample_mult)
        yield gen_utils.tile(gen_utils.frame_cells(out, mode, depth_range, resolution), rows, cols)


def _video_jobs(G, seeds: Sequence[int], entries: Sequence[Dict], rows: int, cols: int, interpolate: bool,
                frames: int, trunc: float, cutoff: Optional[int], device, suffix: str) -> List[Dict]:
    """(name, ws_per_frame) per video: per class, one grid of seeds per video, or one interpolation."""
    cells = rows * cols
    suffix += f"_grid{rows}x{cols}" if cells > 1 else ""
    jobs = []
    for entry in entries:
        slug = gen_utils.class_slug(entry)
        if interpolate:
            keys = gen_utils.compute_ws(G, seeds, entry, trunc, cutoff, device=device)
            paths = torch.stack([gen_utils.interpolate_ws(keys, frames, start=i) for i in range(cells)], 1)
            name = f"interp_seeds{seeds[0]:04d}-{seeds[-1]:04d}_{slug}"
            jobs.append(dict(name=name + suffix, ws=lambda f, p=paths: p[f]))
            continue
        for g in range(0, len(seeds), cells):
            group = list(seeds[g:g + cells])
            ws = gen_utils.compute_ws(G, group, entry, trunc, cutoff, device=device)
            name = f"seed{group[0]:04d}_{slug}" if cells == 1 else f"seeds{group[0]:04d}-{group[-1]:04d}_{slug}"
            jobs.append(dict(name=name + suffix, ws=lambda f, w=ws: w))
    return jobs


def _check_seed_count(seeds: Sequence[int], rows: int, cols: int, interpolate: bool) -> None:
    if interpolate and len(seeds) < 2:
        raise ValueError("--interpolate needs at least two --seeds to move between")
    if not interpolate and len(seeds) % (rows * cols) != 0:
        raise ValueError(f"--grid {rows}x{cols} tiles {rows * cols} seeds per video, but --seeds gives "
                         f"{len(seeds)} (use a multiple of {rows * cols})")


@click.command()
@source_options
@click.option("--trajectory", default="orbit", show_default=True, type=click.Choice(TRAJECTORIES),
              help="orbit: yaw sweep with gentle pitch; turntable: 360 degrees at --elevation; sphere: spiral.")
@click.option("--elevation", default=None, type=float, help="Camera elevation in degrees (turntable; orbit's centre).")
@click.option("--interpolate", is_flag=True, help="Move through the seeds in w while the camera moves.")
@click.option("--grid", default=None, metavar="RxC", help="Tile R x C seeds in one video.")
@click.option("--mode", default="image", show_default=True, type=click.Choice(gen_utils.VIDEO_MODES))
@click.option("--frames", default=120, show_default=True, type=click.IntRange(min=1), help="Frames per video.")
@click.option("--fps", default=30.0, show_default=True, type=click.FloatRange(min=1))
@click.option("--resolution", default=None, type=click.IntRange(min=2), help="Output size of each cell in pixels.")
@output_options
def main(network: Optional[str], class_spec: Optional[str], seeds: str, trajectory: str, elevation: Optional[float],
         interpolate: bool, grid: Optional[str], mode: str, frames: int, fps: float, resolution: Optional[int],
         sample_mult: Optional[float], truncation_psi: float, truncation_cutoff: Optional[int], outdir: str,
         device: str) -> None:
    """Render mp4 videos of generated objects per class along a camera trajectory."""
    try:
        seed_list = gen_utils.parse_range(seeds)
        rows, cols = gen_utils.parse_grid(grid)
        _check_seed_count(seed_list, rows, cols, interpolate)
        dev = gen_utils.choose_device(device)
        G, metadata, _ = gen_utils.load_generator(network, dev, echo=click.echo)
        entries = gen_utils.resolve_classes(gen_utils.model_classes(metadata, G.c_dim), class_spec)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    kw = G.camera_kwargs
    cameras = trajectory_cameras(trajectory, frames, radius=kw["radius"], fov_deg=kw["fov_deg"],
                                 look_at_point=kw["look_at_point"], elevation=elevation, device=dev)
    depth_range = gen_utils.video_depth_range(G)
    suffix = f"_{trajectory}" + ("" if mode == "image" else f"_{mode}")
    jobs = _video_jobs(G, seed_list, entries, rows, cols, interpolate, frames, truncation_psi, truncation_cutoff, dev,
                       suffix)
    for i, job in enumerate(jobs):
        path = Path(outdir) / (job["name"] + ".mp4")
        click.echo(f"[{i + 1}/{len(jobs)}] {path}")
        gen_utils.write_video(path, _frames(G, job["ws"], cameras, mode, rows, cols, resolution, sample_mult,
                                            depth_range), fps=fps, total=frames)


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
