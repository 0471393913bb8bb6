"""Times the Winograd F(4x4, 3x3) CPU kernel against oneDNN's direct convolution, shape by shape.

    python bench/winograd.py                          # the stride-1 3x3 convolutions of eg3d-small's G+D step
    python bench/winograd.py --cfg demo --resolution 64 --classes 4 --batch 16
    python bench/winograd.py --repeats 9 --threads 1

The shapes are collected from one G+D step of the config (bench/step.py's networks and
inputs): every stride-1 3x3 convolution that conv2d_gradfix runs on channels-last float32
tensors, with the number of times it runs per step. For each shape it prints the median time
of the forward convolution, the input gradient (the transposed convolution) and the weight
gradient, direct against Winograd, how often each runs per step, the Winograd results' largest
error relative to a float64 reference (the direct float32 results' beside it), and whether
`winograd.usable` picks the kernel for each pass (its size rules). The last line sums the times
over a step, with the kernel only where it is used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import Counter
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step  # noqa: E402  (bench/step.py)

from torch_utils.misc import tune_cpu_allocator  # noqa: E402
from torch_utils.ops import conv2d_gradfix, winograd  # noqa: E402
from torch_utils.ops.cpu_kernels import plugin  # noqa: E402

# (batch, C, K, H, W, padding)
Shape = Tuple[int, int, int, int, int, int]


PASSES = ("forward", "input grad", "weight grad")


def _key(n: int, c: int, k: int, h: int, w: int, pad: Tuple[int, int]) -> Shape:
    return (n, c, k, h, w, pad[0])


def collect_shapes(cfg: str, classes: int, batch: int, resolution: int) -> Dict[Shape, Counter]:
    """The stride-1 3x3 convolutions of one G+D step on channels-last float32 tensors (square
    padding), each with how often its forward, input gradient and weight gradient run."""
    G, D, opts = step.build_networks(cfg, classes, torch.device("cpu"), resolution)
    inputs = step.make_inputs(G, batch or int(opts.batch), classes, torch.device("cpu"))
    seen: Dict[Shape, Counter] = {}
    apply, weight_grad = conv2d_gradfix._ConvSpec.apply, conv2d_gradfix._WeightGradFn.forward

    def plain(spec, x, kernel) -> bool:
        return (spec.stride == (1, 1) and spec.dilation == (1, 1) and spec.groups == 1 and tuple(kernel[2:]) == (3, 3)
                and spec.padding[0] == spec.padding[1] and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last))

    def count(key: Shape, what: str) -> None:
        seen.setdefault(key, Counter())[what] += 1

    def spy_apply(spec, x, w, b=None):
        if plain(spec, x, w.shape) and not spec.transpose:
            count(_key(x.shape[0], w.shape[1], w.shape[0], x.shape[2], x.shape[3], spec.padding), "forward")
        elif plain(spec, x, w.shape) and spec.output_padding == (0, 0):  # the input gradient of the conv with w
            h, w_ = (x.shape[i] + 2 - 2 * spec.padding[0] for i in (2, 3))
            count(_key(x.shape[0], w.shape[1], w.shape[0], h, w_, spec.padding), "input grad")
        return apply(spec, x, w, b)

    def spy_weight_grad(ctx, grad_out, x, spec, weight_shape):
        if plain(spec, x, weight_shape) and not spec.transpose:
            count(_key(x.shape[0], weight_shape[1], weight_shape[0], x.shape[2], x.shape[3], spec.padding),
                  "weight grad")
        return weight_grad(ctx, grad_out, x, spec, weight_shape)

    conv2d_gradfix._ConvSpec.apply = spy_apply
    conv2d_gradfix._WeightGradFn.forward = staticmethod(spy_weight_grad)
    try:
        step.gd_step(G, D, inputs)
    finally:
        conv2d_gradfix._ConvSpec.apply = apply
        conv2d_gradfix._WeightGradFn.forward = staticmethod(weight_grad)
    return seen


def median_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median wall time of fn() in ms after one untimed call (bench/step.py's timer)."""
    return statistics.median(step.time_fn(fn, torch.device("cpu"), repeats, warmup=1)) * 1e3


def rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return ((actual.double() - reference).abs().max() / reference.abs().max()).item()


def bench_shape(shape: Shape, repeats: int) -> Dict[str, Tuple[float, float, float, float]]:
    """{pass: (direct ms, Winograd ms, Winograd rel. error, direct rel. error)}."""
    n, c, k, h, w_, pad = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w_, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    ho, wo = h + 2 * pad - 2, w_ + 2 * pad - 2
    dy = torch.randn(n, k, ho, wo, generator=gen).contiguous(memory_format=torch.channels_last)
    p = (pad, pad)
    passes = {
        "forward": (lambda: F.conv2d(x, w, padding=pad), lambda: winograd.conv3x3(x, w, None, p),
                    lambda: F.conv2d(x.double(), w.double(), padding=pad)),
        "input grad": (lambda: F.conv_transpose2d(dy, w, padding=pad),
                       lambda: winograd.conv_transpose3x3(dy, w, None, p),
                       lambda: F.conv_transpose2d(dy.double(), w.double(), padding=pad)),
        "weight grad": (
            lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], list(p), [1, 1], False, [0, 0], 1,
                                                        [False, True, False])[1],
            lambda: winograd.weight_grad3x3(dy, x, p),
            lambda: torch.ops.aten.convolution_backward(dy.double(), x.double(), w.double(), None, [1, 1], list(p),
                                                        [1, 1], False, [0, 0], 1, [False, True, False])[1]),
    }
    result = {}
    for name, (direct, wino, reference) in passes.items():
        ref = reference()
        result[name] = (median_ms(direct, repeats), median_ms(wino, repeats), rel_error(wino(), ref),
                        rel_error(direct(), ref))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", default="eg3d-small", help="config whose G+D step gives the shapes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--resolution", type=int, default=None, help="image resolution (default: as bench/step.py)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    if plugin.get() is None:
        sys.exit(f"bench/winograd.py: the CPU kernels are not available ({plugin.failed_reason})")
    shapes = collect_shapes(args.cfg, args.classes, args.batch, args.resolution)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; cfg {args.cfg}: {len(shapes)} stride-1 3x3 shapes")
    print(f"{'N x C -> K @ HxW, pad':27s} {'used':>4s}  {'runs':>8s}  {'forward ms':>15s}  {'input grad ms':>15s}  "
          f"{'weight grad ms':>15s}  max rel. error, wino (direct): forward, input grad, weight grad")
    direct_total = wino_total = 0.0
    for shape, counts in sorted(shapes.items(), key=lambda kv: -kv[0][1] * kv[0][2] * kv[0][3] * kv[0][4]):
        n, c, k, h, w_, pad = shape
        x = torch.empty(n, c, h, w_).contiguous(memory_format=torch.channels_last)
        used = {p: winograd.usable(x, torch.empty(k, c, 3, 3), (1, 1), (pad, pad), (1, 1), 1,
                                   weight_grad=p == "weight grad") for p in PASSES}
        result = bench_shape(shape, args.repeats)
        runs = "/".join(str(counts[p]) for p in PASSES)
        cells = "  ".join(f"{result[p][0]:6.2f} / {result[p][1]:6.2f}" for p in PASSES)
        errors = ", ".join(f"{result[p][2]:.1e} ({result[p][3]:.1e})" for p in PASSES)
        shape_text = f"{n} x {c:3d} -> {k:3d} @ {h:3d}x{w_:<3d} p{pad}"
        used_text = "".join("y" if used[p] else "n" for p in PASSES)
        print(f"{shape_text}  {used_text:>4s}  {runs:>8s}  {cells}  {errors}")
        direct_total += sum(counts[p] * result[p][0] for p in PASSES)
        wino_total += sum(counts[p] * result[p][1 if used[p] else 0] for p in PASSES)
    print("(times: direct / Winograd, median ms; runs: forward/input grad/weight grad calls per G+D step;"
          " used: y/n for each of the three)")
    print(f"per G+D step, these convolutions: direct {direct_total:.1f} ms; Winograd where 'used' "
          f"{wino_total:.1f} ms (x{direct_total / max(wino_total, 1e-9):.2f})")


if __name__ == "__main__":
    main()
