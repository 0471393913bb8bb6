"""Build training data sets (zip or folder of PNGs + dataset.json) from ImageNet, class folders or the synthetic scenes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import click

from training.dataset_classes import DEFAULT_IMAGENET_TABLE, ClassListError, load_imagenet_table, parse_class_list
from training.dataset_sources import SourceError, folder_source, imagenet_source
from training.dataset_writer import check_destination, convert_dataset, summarise_report
from training.image_processing import DEFAULT_MAX_PIXELS, ProcessOptions, parse_colour

DEFAULT_CLASS_LIST = Path(__file__).resolve().parent / "configs" / "imagenet100_classes.txt"


def _parse_background(ctx: click.Context, param: click.Parameter, value: str):
    try:
        return parse_colour(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def common_options(fn: Callable) -> Callable:
    """Options shared by the image-source subcommands."""
    options = [
        click.option("--dest", required=True, type=click.Path(path_type=Path),
                     help="Output: a .zip file, or a folder when the name has no .zip"),
        click.option("--resolution", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Side of the square output images"),
        click.option("--max-images", type=click.IntRange(min=1), default=None,
                     help="At most this many source files in all, spread round-robin over the classes"),
        click.option("--max-per-class", type=click.IntRange(min=1), default=None,
                     help="At most this many source files per class (first in sorted order)"),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Processes decoding and resizing in parallel (output order stays the same)"),
        click.option("--force", is_flag=True, help="Replace an existing --dest (only once the new one is complete)"),
        click.option("--upscale/--skip-small", default=True, show_default=True,
                     help="Images smaller than --resolution: upscale them, or skip them"),
        click.option("--background", default="white", show_default=True, callback=_parse_background,
                     help="Colour transparent images are composited on: a name, #rrggbb or r,g,b"),
        click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, hidden=True,
                     help="Decompression-bomb guard: skip images with more pixels than this"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run(items, classes, dest: Path, source: Path, resolution: int, workers: int, force: bool,
         upscale: bool, background, max_pixels: int) -> None:
    """Shared tail of the image subcommands: process, write, summarise."""
    if not items:
        raise click.ClickException(f"no source files found under {source}")
    opts = ProcessOptions(resolution=resolution, upscale=upscale, background=background, max_pixels=max_pixels)
    click.echo(f"{len(items)} source files in {len(classes)} classes -> {dest} ({resolution}x{resolution})")
    try:
        report = convert_dataset(items, classes, dest, opts, workers=workers, force=force, source_root=source)
    except (RuntimeError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(summarise_report(report))


def _check_dest(dest: Path, force: bool) -> None:
    try:
        check_destination(dest, force)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def cli() -> None:
    """Build data sets for training: PNG images and dataset.json (labels and class table) in a zip or folder."""


@cli.command()
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="ImageNet train folder (one sub-folder per WordNet synset)")
@click.option("--classes", "class_list", type=click.Path(path_type=Path), default=DEFAULT_CLASS_LIST,
              show_default="configs/imagenet100_classes.txt", help="Class list: ImageNet-1k indices or synsets, one per line, # comments")
@click.option("--class-table", type=click.Path(path_type=Path), default=DEFAULT_IMAGENET_TABLE, hidden=True,
              help="The ImageNet-1k table (index, synset, names)")
@common_options
def imagenet(source: Path, class_list: Path, class_table: Path, dest: Path, max_images: Optional[int],
             max_per_class: Optional[int], **kw: Any) -> None:
    """Selected ImageNet classes, centre-cropped and resized."""
    _check_dest(dest, kw["force"])  # every check happens before any work
    try:
        classes = parse_class_list(class_list, load_imagenet_table(class_table))
        items, table = imagenet_source(source, classes, max_per_class, max_images)
    except (ClassListError, SourceError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    _run(items, table, dest, Path(source).expanduser(), **kw)


@cli.command()
@click.option("--source", required=True, type=click.Path(path_type=Path),
              help="Folder with one sub-folder of images per class (e.g. ShapeNet renders)")
@common_options
def folder(source: Path, dest: Path, max_images: Optional[int], max_per_class: Optional[int], **kw: Any) -> None:
    """A folder per class; class names are the sorted folder names."""
    _check_dest(dest, kw["force"])
    try:
        items, table = folder_source(source, max_per_class, max_images)
    except SourceError as e:
        raise click.ClickException(str(e)) from None
    _run(items, table, dest, Path(source).expanduser(), **kw)


def _nuisance(backgrounds: Optional[bool], distractors: Optional[bool], lighting: Optional[bool]) -> Optional[Dict[str, bool]]:
    """Only the flags the user gave; None leaves every nuisance at the generator's default."""
    # Keys as training.synthetic.raycast.parse_nuisance reads them.
    given = {"background": backgrounds, "distractor": distractors, "lighting": lighting}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


@cli.command()
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Output .zip or folder")
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--images-per-class", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--resolution", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--backgrounds/--no-backgrounds", default=None, help="Textured backgrounds (default: generator's)")
@click.option("--distractors/--no-distractors", default=None, help="Distractor objects (default: generator's)")
@click.option("--lighting/--no-lighting", default=None, help="Varied lighting (default: generator's)")
@click.option("--force", is_flag=True, help="Replace an existing --dest (only once the new one is complete)")
def synthetic(dest: Path, num_classes: int, images_per_class: int, resolution: int, seed: int, workers: int,
              backgrounds: Optional[bool], distractors: Optional[bool], lighting: Optional[bool], force: bool) -> None:
    """The built-in synthetic 3D data set (rendered shapes from random cameras; needs no download)."""
    _check_dest(dest, force)
    try:
        from training.synthetic.build import build_synthetic_dataset
    except ImportError as e:
        raise click.ClickException(f"synthetic data-set generator unavailable: {e}") from None
    # The builder writes under a temporary name and replaces an old --dest only once the new one is complete.
    summary = build_synthetic_dataset(dest, num_classes=num_classes, images_per_class=images_per_class,
                                      resolution=resolution, seed=seed, workers=workers, overwrite=force,
                                      nuisance=_nuisance(backgrounds, distractors, lighting), progress=True)
    click.echo(f"wrote {dest}: {summary['images']} images of {len(summary['classes'])} classes "
               f"({', '.join(summary['classes'])}) at {resolution}x{resolution} in {summary['seconds']:.1f} s "
               f"({summary['images_per_second']:.0f} images/s)")


if __name__ == "__main__":
    cli()
