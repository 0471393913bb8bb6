"""Command-line options shared by gen_samples.py and gen_videos.py (one definition, one help text)."""

from __future__ import annotations

from typing import Callable

import click

from training.gen_utils import MAX_CLASSES_BY_DEFAULT

__all__ = ["source_options", "output_options"]


def _apply(options: list, fn: Callable) -> Callable:
    for option in reversed(options):  # the first option listed comes first in --help
        fn = option(fn)
    return fn


def source_options(fn: Callable) -> Callable:
    """--network, --class, --seeds: which model, which classes, which latents."""
    return _apply([
        click.option("--network", "network", default=None, metavar="PATH",
                     help="Snapshot file or run directory (its newest snapshot). Default: newest under training-runs/."),
        click.option("--class", "class_spec", default=None, metavar="CLASSES",
                     help="ImageNet-1k index, name or synset; comma list; or 'all'. "
                          f"Default: all classes when the model has <= {MAX_CLASSES_BY_DEFAULT}, else the first."),
        click.option("--seeds", default="0-3", show_default=True, help="Seeds, e.g. 0-7,9."),
    ], fn)


def output_options(fn: Callable) -> Callable:
    """--trunc, --trunc-cutoff, --sample-mult, --outdir, --device."""
    return _apply([
        click.option("--trunc", "truncation_psi", default=0.7, show_default=True, type=float,
                     help="Truncation psi toward the class's mean w (1 = none)."),
        click.option("--trunc-cutoff", "truncation_cutoff", default=None, type=int,
                     help="Truncate only the first N ws."),
        click.option("--sample-mult", default=None, type=float, help="Multiply the samples per ray (finer renders)."),
        click.option("--outdir", default="out", show_default=True, type=click.Path(file_okay=False),
                     help="Output directory."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
    ], fn)
