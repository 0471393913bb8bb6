"""Train a class-conditional tri-plane GAN from pose-free images: `python train.py --cfg imagenet100`."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import click
import torch

from dnnlib import EasyDict, make_run_dir
from training import distributed as tdist
from training.options import apply_overrides, available_configs, load_config, parse_kimg, to_plain, validate_options


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _resolve_resume(resume: Optional[str], outdir: str) -> Optional[str]:
    """--resume PATH (snapshot file or run dir) or 'latest' (the newest snapshot under --outdir)."""
    if resume is None:
        return None
    from training.snapshot import find_snapshot

    try:
        return str(find_snapshot(None if resume == "latest" else resume, search_root=outdir))
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--resume") from exc


def _run_worker(info: tdist.DistInfo, opts: EasyDict, run_dir: Optional[Path]) -> None:
    from training.training_loop import training_loop

    training_loop(opts, run_dir, info)


class KimgType(click.ParamType):
    name = "kimg"

    def convert(self, value, param, ctx):
        try:
            return parse_kimg(value, flag=f"--{param.name.replace('_', '-')}")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command(context_settings=dict(max_content_width=110))
@click.option("--cfg", default="imagenet100", show_default=True,
              help=f"Named config in configs/ ({', '.join(available_configs())}) or a YAML path.")
@click.option("--data", type=str, help="Data set zip or folder (default: from the config).")
@click.option("--outdir", default="training-runs", show_default=True, help="Where run directories are made.")
@click.option("--gpus", type=click.IntRange(min=1), help="Processes on this machine (default: all visible GPUs, 1 on a CPU).")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size over all GPUs.")
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Images per GPU per round (gradient accumulation).")
@click.option("--kimg", type=KimgType(), help="Training length in thousands of real images.")
@click.option("--multiview-at", type=str, help="When multi-view discrimination starts: 8000kimg, 8000, or 'never'.")
@click.option("--views", type=click.IntRange(min=1), help="Views per tri-plane once multi-view is on (paper: 3).")
@click.option("--gamma", type=click.FloatRange(min=0), help="R1 weight.")
@click.option("--glr", type=click.FloatRange(min=0), help="Generator learning rate.")
@click.option("--dlr", type=click.FloatRange(min=0), help="Discriminator learning rate.")
@click.option("--extra-blocks/--no-extra-blocks", default=None, help="The paper's extra non-upsampling blocks.")
@click.option("--decoder-layers", type=click.IntRange(min=2), help="FC layers of the tri-plane decoder (paper: 4).")
@click.option("--neural-res", type=int, help="Neural-rendering resolution, fixed (replaces the config's neural_res_fade).")
@click.option("--triplane-res", type=int, help="Tri-plane resolution.")
@click.option("--reuse-fakes/--no-reuse-fakes", default=None,
              help="D's fake phase scores the G phase's fakes instead of generating new ones (faster).")
@click.option("--cpu-bf16/--no-cpu-bf16", default=None,
              help="On a CPU, run the config's num_fp16_res blocks in bfloat16 (fp16 on CUDA regardless).")
@click.option("--aug", type=click.Choice(["ada", "fixed", "noaug"]), help="Discriminator augmentation.")
@click.option("--mirror/--no-mirror", default=None, help="Add x-flipped copies of the data.")
@click.option("--resume", type=str, help="Snapshot file, run directory, or 'latest' (newest under --outdir).")
@click.option("--snap", type=click.IntRange(min=1), help="Ticks between snapshots.")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), help="kimg between progress lines.")
@click.option("--metrics", type=str, help="Metrics at snapshots (comma list, or 'none').")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--workers", type=click.IntRange(min=0), help="Data loader worker processes.")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Train on the GPUs or on the CPU.")
@click.option("--desc", type=str, help="Extra words in the run directory's name.")
@click.option("--dry-run", is_flag=True, help="Print the merged options and exit.")
def main(cfg, outdir, gpus, device, desc, dry_run, resume, multiview_at, **flags):
    """Train a class-conditional 3D tri-plane GAN with multi-view discrimination.

    \b
    Examples:
      python train.py --cfg imagenet100 --multiview-at 8000kimg
      python train.py --cfg imagenet100 --gpus 8 --batch 64 --data datasets/imagenet100-256.zip
      torchrun --nnodes 2 --nproc-per-node 8 ... train.py --cfg imagenet100   # multi-node
      python train.py --cfg demo --device cpu
    """
    try:
        opts = load_config(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--cfg") from exc
    if flags.get("metrics") is not None:
        flags["metrics"] = [m for m in flags["metrics"].split(",") if m and m != "none"]
    if multiview_at is not None:
        try:
            flags["multiview_at"] = parse_kimg(multiview_at) if multiview_at.lower() not in ("never", "none") else "never"
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--multiview-at") from exc
    opts = apply_overrides(opts, flags)
    use_cuda = device == "cuda" or (device == "auto" and _visible_gpus() > 0)
    if use_cuda and _visible_gpus() == 0:
        raise click.BadParameter("no CUDA GPU is visible", param_hint="--device")
    if tdist.launched_by_torchrun():
        num_procs = int(os.environ["WORLD_SIZE"])
    else:
        num_procs = gpus or (_visible_gpus() if use_cuda else 1)
    try:
        opts = validate_options(opts, num_procs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if opts.get("metrics"):
        raise click.BadParameter("metrics at snapshots need the metrics package, which this version does not have "
                                 "yet; use --metrics none", param_hint="--metrics")
    opts.resume = _resolve_resume(resume, outdir)
    opts.num_gpus, opts.device = num_procs, "cuda" if use_cuda else "cpu"
    if not Path(opts.data).exists():
        how = f"build it with:\n  {opts.data_command}" if opts.get("data_command") else "build it with dataset_tool.py"
        raise click.BadParameter(f"data set '{opts.data}' does not exist; {how}\n(or pass --data PATH)",
                                 param_hint="--data")

    if dry_run:
        import yaml

        click.echo(yaml.safe_dump(to_plain(opts), sort_keys=False))
        return
    run_desc = "-".join(filter(None, [Path(str(opts.cfg)).stem, Path(opts.data).stem, f"gpus{num_procs}",
                                      f"batch{opts.batch}", desc]))
    # Only rank 0 writes (options, logs, snapshots); under torchrun the other ranks get no run dir.
    is_main = not tdist.launched_by_torchrun() or int(os.environ["RANK"]) == 0
    run_dir = make_run_dir(outdir, run_desc) if is_main else None
    if is_main:
        from training.training_loop import write_options

        write_options(opts, run_dir)
        click.echo(f"Run directory: {run_dir}")
    tdist.launch(functools.partial(_run_worker, opts=opts, run_dir=run_dir), num_procs, use_cuda)


if __name__ == "__main__":
    main()  # pylint: disable=no-value-for-parameter
