"""Prints forward+backward times of bias_act, upfirdn2d, plane_sample and the decoder MLP: the reference path next to the fast one.

    python bench/ops.py            # StyleGAN-sized shapes: [32,512,64,64] and [32,128,256,256]
    python bench/ops.py --quick    # small shapes, a few seconds on a CPU
    python bench/ops.py --device cuda --repeats 50

The fast path is the CUDA plugin on a GPU and the CPU fast path (impl=None) on a CPU.
upfirdn2d is timed as `upsample2d` (2x up) and `filter2d` (the 4-tap blur of the networks'
down/up-sampling convs); plane_sample (the tri-plane sampler) at eg3d-small's and imagenet100's
numbers of points; softplus_mlp (the tri-plane decoder, CPU only) at the demo's 3-view step
(16 -> 32 x3 -> 17 on 344k points) and eg3d-small's (32 -> 64 -> 33 on 197k). Times are medians over repeats after warm-up; on a GPU each timing
is bracketed by synchronisations. The ratio column is reference / fast for the same shape
and device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils.ops import bias_act as bias_act_mod  # noqa: E402
from torch_utils.ops import mlp as mlp_mod  # noqa: E402
from torch_utils.ops import plane_sample as plane_sample_mod  # noqa: E402
from torch_utils.ops import upfirdn2d as upfirdn2d_mod  # noqa: E402

FULL_SHAPES = [(32, 512, 64, 64), (32, 128, 256, 256)]
QUICK_SHAPES = [(4, 64, 32, 32), (4, 32, 64, 64)]
# plane_sample: (B, P, C, H, W, points per item): eg3d-small's 32² render x 48 samples, and one
# pass (48 samples) of imagenet100's 128² render, each on 3 planes of 32 x 256².
FULL_PLANE_SHAPES = [(4, 3, 32, 256, 256, 32 * 32 * 48), (4, 3, 32, 256, 256, 128 * 128 * 48)]
QUICK_PLANE_SHAPES = [(2, 3, 16, 32, 32, 4096)]
# softplus_mlp: (points, in, hidden..., out).
FULL_MLP_SHAPES = [(16 * 3 * 256 * 28, 16, 32, 32, 32, 17), (4 * 1024 * 48, 32, 64, 33)]
QUICK_MLP_SHAPES = [(8192, 16, 32, 32, 32, 17)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bias_act_case(shape, device, impl) -> Callable[[], None]:
    x = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape[1], device=device, requires_grad=True)

    def run():
        y = bias_act_mod.bias_act(x, b, act="lrelu", clamp=256, impl=impl)
        y.backward(torch.ones_like(y))
    return run


def _upfirdn2d_case(apply) -> Callable:
    """A case factory for an upfirdn2d wrapper `apply(x, f, impl)` with the networks' 4-tap filter."""
    def make(shape, device, impl) -> Callable[[], None]:
        x = torch.randn(shape, device=device, requires_grad=True)
        f = upfirdn2d_mod.setup_filter([1, 3, 3, 1], device=device)

        def run():
            y = apply(x, f, impl)
            y.backward(torch.ones_like(y))
        return run
    return make


upsample2d_case = _upfirdn2d_case(lambda x, f, impl: upfirdn2d_mod.upsample2d(x, f, up=2, impl=impl))
filter2d_case = _upfirdn2d_case(lambda x, f, impl: upfirdn2d_mod.filter2d(x, f, padding=1, impl=impl))


def plane_sample_case(shape, device, impl) -> Callable[[], None]:
    b, p, c, h, w, m = shape
    planes = torch.randn(b, p, c, h, w, device=device, requires_grad=True)
    grid = torch.rand(b, p, m, 2, device=device) * 2 - 1

    def run():
        y = plane_sample_mod.sample_mean(planes, grid, impl="ref" if impl == "ref" else None)
        y.backward(torch.ones_like(y))
    return run


def mlp_case(shape, device, impl) -> Callable[[], None]:
    points, *sizes = shape
    x = torch.randn(points, sizes[0], device=device, requires_grad=True)
    weights = [(torch.randn(o, i, device=device) / i ** 0.5).requires_grad_(True) for i, o in zip(sizes, sizes[1:])]
    biases = [torch.zeros(o, device=device, requires_grad=True) for o in sizes[1:]]

    def run():
        y = mlp_mod.softplus_mlp(x, weights, biases, impl="ref" if impl == "ref" else None)
        y.backward(torch.ones_like(y))
    return run


def bench(name: str, make_case, shapes, device: torch.device, repeats: int, fast_impl: Optional[str]) -> None:
    """One row per shape: reference ms, fast-path ms and their ratio (fast_impl: 'cuda', 'cpu' or None)."""
    for shape in shapes:
        ref_ms = time_fn(make_case(shape, device, "ref"), device, repeats)
        fast_ms: Optional[float] = None
        if fast_impl:
            impl = "cuda" if fast_impl == "cuda" else None  # impl=None on a CPU is the CPU fast path
            fast_ms = time_fn(make_case(shape, device, impl), device, repeats)
        ratio = f"{ref_ms / fast_ms:6.2f}x" if fast_ms else "     -"
        fast_txt = f"{fast_ms:10.2f}" if fast_ms else "         -"
        print(f"{name:<12} {str(list(shape)):<34} {ref_ms:10.2f} {fast_txt} {ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = args.repeats or (5 if device.type == "cpu" else 30)
    cuda_ok = device.type == "cuda" and bias_act_mod._plugin.get() is not None and upfirdn2d_mod._plugin.get() is not None
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {repeats}; forward+backward")
    if device.type == "cuda" and not cuda_ok:
        print("CUDA plugins unavailable: timing the reference path only")
    print(f"{'op':<12} {'shape':<34} {'ref ms':>10} {'fast ms':>10} {'ratio':>7}")
    fast = "cuda" if cuda_ok else ("cpu" if device.type == "cpu" else None)
    bench("bias_act", bias_act_case, shapes, device, repeats, fast)
    bench("upsample2d", upsample2d_case, shapes, device, repeats, fast)
    bench("filter2d", filter2d_case, shapes, device, repeats, fast)
    plane_fast = fast if device.type == "cpu" or plane_sample_mod._cuda_plugin.get() is not None else None
    bench("plane_sample", plane_sample_case, QUICK_PLANE_SHAPES if args.quick else FULL_PLANE_SHAPES, device,
          repeats, plane_fast)
    bench("softplus_mlp", mlp_case, QUICK_MLP_SHAPES if args.quick else FULL_MLP_SHAPES, device, repeats,
          "cpu" if device.type == "cpu" else None)


if __name__ == "__main__":
    main()
