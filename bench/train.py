"""Prints sec/kimg, images/s and peak memory of a short training run of a named config.

    python bench/train.py --cfg demo
    python bench/train.py --cfg imagenet100 --batch 2 --steps 3      # reduced batch on a CPU
    python bench/train.py --cfg imagenet100 --multiview              # with 3-view discrimination
    python bench/train.py --cfg demo --multiview --profile 30        # + the ops that take the time
    python bench/train.py --cfg imagenet100 --multiview --neural-res 128 --batch 8 --batch-gpu 4   # GPU memory
    python bench/train.py --cfg imagenet100 --batch 2 --steps 2 --cpu-bf16   # the config's fp16 blocks in bf16 (CPU)

The run uses the config's data set when it exists, otherwise a small synthetic set at the
config's resolution written to a temporary folder (image content does not change the speed).
Warm-up steps are not timed. Peak memory: the process's maximum RSS on CPU, and
torch.cuda.max_memory_allocated on a GPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import misc  # noqa: E402
from training import distributed as tdist  # noqa: E402
from training.options import apply_overrides, load_config, validate_options  # noqa: E402
from training.training_loop import Trainer  # noqa: E402


def _data_for(opts, resolution: int, tmp: str) -> str:
    if Path(opts.data).exists():
        return opts.data
    from training.synthetic import build_synthetic_dataset

    path = os.path.join(tmp, f"bench-{resolution}.zip")
    build_synthetic_dataset(path, num_classes=4, images_per_class=16, resolution=resolution, progress=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="demo")
    parser.add_argument("--batch", type=int, default=None, help="total batch (default: the config's)")
    parser.add_argument("--batch-gpu", type=int, default=None,
                        help="images per GPU per round (default: the whole batch in one round)")
    parser.add_argument("--neural-res", type=int, default=None,
                        help="fixed neural-rendering resolution (default: the config's, at the start of its fade)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--multiview", action="store_true", help="time with multi-view discrimination on")
    parser.add_argument("--resolution", type=int, default=None, help="data resolution if no data set exists")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="on a CPU, the config's num_fp16_res blocks compute in bfloat16 (train.py --cpu-bf16)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timed steps, profile --steps more and print the N ops with the most self time")
    args = parser.parse_args()

    opts = apply_overrides(load_config(args.cfg), dict(batch=args.batch, neural_res=args.neural_res))
    opts.batch_gpu = args.batch_gpu
    opts.multiview_at = 0 if args.multiview else None
    opts.workers, opts.resume, opts.kimg = 0, None, 1e9
    opts.cpu_bf16 = args.cpu_bf16
    opts = validate_options(opts, 1)
    resolution = args.resolution or int(opts.get("resolution", 0) or 0) or _guess_resolution(opts.data)
    device = torch.device(args.device)
    if device.type == "cpu" and opts.get("tune_cpu_allocator", True):
        misc.tune_cpu_allocator()  # as training_loop() does, so the figures are train.py's
    with tempfile.TemporaryDirectory() as tmp:
        opts.data = _data_for(opts, resolution, tmp)
        trainer = Trainer(opts, Path(tmp) / "run", tdist.DistInfo(device=device))
        data_iter = trainer._make_loader_iter()
        for _ in range(args.warmup):
            trainer.step(data_iter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(data_iter)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if args.profile:
            _print_profile(lambda: [trainer.step(data_iter) for _ in range(args.steps)], device, args.profile,
                           args.steps)
    images = args.steps * opts.batch
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30
    views = opts.views if args.multiview else 1
    print(f"cfg {args.cfg}  device {device}  threads {torch.get_num_threads()}  batch {opts.batch} "
          f"(per round {opts.batch_gpu})  views {views}  resolution {trainer.dataset.resolution}  "
          f"neural render {trainer._neural_res_at(trainer.cur_nimg) or opts.G.neural_res}"
          f"{'  bf16 blocks' if trainer.cpu_bf16 else ''}")
    print(f"sec/kimg {seconds / images * 1000:.1f}  images/s {images / seconds:.2f}  "
          f"s/step {seconds / args.steps:.3f}  peak memory {peak:.2f} GiB")


def _print_profile(fn, device: torch.device, rows: int, steps: int) -> None:
    """The `rows` ops with the most self time over fn() (device time on CUDA), per step."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        fn()
        if on_cuda:
            torch.cuda.synchronize(device)
    print(f"torch.profiler over {steps} training steps (totals, not per step):")
    sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


def _guess_resolution(data: str) -> int:
    """Resolution from a data path such as datasets/imagenet100-256.zip (default 64)."""
    stem = Path(data).stem
    tail = stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 64


if __name__ == "__main__":
    main()
