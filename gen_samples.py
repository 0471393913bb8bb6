"""Generate images (several views, raw neural render, depth) and optionally 3D shapes from a trained tri-plane GAN.

Examples:

    python gen_samples.py --class 947 --shapes                  # newest snapshot under training-runs/
    python gen_samples.py --network training-runs/00003-imagenet100 --class mushroom,n07734744 --seeds 0-7
    python gen_samples.py --network net.safetensors --class all --angles 0:10,90:10,180:30 --trunc 0.7

Per seed and class it writes, e.g., out/seed0007_class947_mushroom_views.png (the views side by side),
_raw.png (the neural renders) and _depth.png (depth, near = yellow); with --shapes a coloured mesh
seed0007_class947_mushroom.ply and with --save-mrc the density volume .mrc. Meshes are in world units
in the camera convention of docs/cameras.md (+Y up), so they line up with the renders.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import click
from tqdm import tqdm

from training import gen_utils
from training.gen_options import output_options, source_options
from training.shapes import DEFAULT_LEVEL, MESH_FORMATS, export_generator_shape


def _check_level(ctx, param, value: str) -> str:
    """--shape-level: a number or 'auto'."""
    if value.strip().lower() != "auto":
        try:
            float(value)
        except ValueError:
            raise click.BadParameter(f"'{value}' is neither a number nor 'auto'") from None
    return value


@click.command()
@source_options
@click.option("--views", default=3, show_default=True, type=click.IntRange(min=1),
              help=f"Views spread evenly in yaw at pitch {gen_utils.DEFAULT_PITCH:g} degrees.")
@click.option("--angles", default=None, metavar="YAW:PITCH,...",
              help="Explicit view angles in degrees (overrides --views).")
@click.option("--shapes", is_flag=True, help="Also extract a coloured mesh from the density field.")
@click.option("--shape-res", default=256, show_default=True, type=click.IntRange(min=2),
              help="Density grid size per axis.")
@click.option("--shape-format", default="ply", show_default=True, type=click.Choice(MESH_FORMATS))
@click.option("--shape-level", default=str(DEFAULT_LEVEL), show_default=True, callback=_check_level,
              help="Iso-level of the activated density, or 'auto' (halfway between the field's min and max).")
@click.option("--save-mrc", is_flag=True, help="Write the density volume as .mrc (with or without --shapes).")
@output_options
def main(network: Optional[str], class_spec: Optional[str], seeds: str, views: int, angles: Optional[str],
         truncation_psi: float, truncation_cutoff: Optional[int], sample_mult: Optional[float], shapes: bool,
         shape_res: int, shape_format: str, shape_level: str, save_mrc: bool, outdir: str, device: str) -> None:
    """Generate views, raw renders and depth (and with --shapes meshes) per seed and class."""
    try:
        seed_list = gen_utils.parse_range(seeds)
        view_angles = gen_utils.parse_angles(angles) if angles else gen_utils.default_angles(views)
        dev = gen_utils.choose_device(device)
        G, metadata, _ = gen_utils.load_generator(network, dev, echo=click.echo)
        entries = gen_utils.resolve_classes(gen_utils.model_classes(metadata, G.c_dim), class_spec)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    cameras = gen_utils.view_cameras(G, view_angles, device=dev)
    out_dir = Path(outdir)
    click.echo(f"Generating {len(seed_list)} seed(s) x {len(entries)} class(es), {len(view_angles)} view(s) "
               f"-> {out_dir}/")
    for seed, entry in tqdm(list(itertools.product(seed_list, entries)), desc="samples", unit="sample"):
        stem = out_dir / gen_utils.output_stem(seed, entry)
        ws = gen_utils.compute_ws(G, [seed], entry, truncation_psi, truncation_cutoff, device=dev)
        out = gen_utils.render_views(G, ws, cameras, sample_mult=sample_mult)
        gen_utils.save_view_strips(out, stem)
        if shapes or save_mrc:
            info = export_generator_shape(G, out["planes"], stem, resolution=shape_res, level=shape_level,
                                          mesh_format=shape_format if shapes else None, save_mrc=save_mrc)
            if info["message"]:
                tqdm.write(f"{stem.name}: {info['message']}")
            elif info["mesh"]:
                tqdm.write(f"{stem.name}: mesh {info['mesh']} ({info['vertices']} vertices, {info['faces']} faces, "
                           f"level {info['level']:.4g})")


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
