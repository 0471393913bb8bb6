"""Times the generator forward and one G+D training step of a named config (CPU, and CUDA where present).

    python bench/step.py --cfg eg3d-small                 # the config's batch, CPU (and GPU if present)
    python bench/step.py --cfg demo --repeats 2           # smoke run
    python bench/step.py --cfg eg3d-small --malloc tuned --traffic   # + bytes allocated per step
    python bench/step.py --cfg eg3d-small --device cpu --malloc tuned --flops   # + FLOPs and their floor
    python bench/step.py --cfg imagenet100 --device cuda --batch 4 --resolution 256 --profile 25
    python bench/step.py --cfg eg3d-small --device cpu --batch 8 --classes 100
    python bench/step.py --cfg eg3d-small --device cpu --compare --malloc tuned   # layout x reuse
    python bench/step.py --cfg eg3d-small --device cpu --compare-precision --fp16-res 4 --malloc tuned
    python bench/step.py --cfg eg3d-small --device cpu --compare-kernels --malloc tuned   # kernels x reuse
    python bench/step.py --cfg eg3d-small --device cpu --compare-winograd --malloc tuned  # Winograd x reuse
    python bench/step.py --cfg eg3d-small --device cpu --compare-torgb --malloc tuned  # one-pass ToRGB x reuse
    python bench/step.py --cfg demo --resolution 64 --classes 4 --device cpu --compare --malloc tuned

The networks are built from the config's `G:` and `D:` sections with `c_dim = --classes` and
the image resolution from --resolution, else the config's optional top-level `resolution` key
(128 when absent).
Inputs are random: z ~ N(0, 1), one-hot classes, real images uniform in [-1, 1].

What is timed (medians over --repeats after --warmup untimed runs):

* "G forward": `G(z, c)` in training mode under `torch.no_grad()` (mapping, backbone,
  rendering, super-resolution), i.e. the generator pass of a D step.
* "G inference": the same in eval mode, as gen_samples.py and gen_videos.py run it (on a GPU
  its synthesis layers take grouped convs, see SynthesisBlock).
* "G+D step": EG3D's two main phases, G_main then D_main, as the training loop runs them
  (one view per tri-plane, no blur, no augmentation, no lazy regularisers, no optimiser step):
    G_main: G's parameters require grad, D's do not; fake = G(z, c); logits = D(fake, c);
            softplus(-logits).mean().backward()  (gradients reach G's weights through D's input);
    D_main: D's parameters require grad, G's do not;
            fake = G(z, c) under no_grad (EG3D regenerates the fakes here; with
            --reuse-fakes the G_main fakes are detached and reused instead, skipping one
            G forward); softplus(D(fake, c)).mean().backward();
            softplus(-D(real, c)).mean().backward() with the real image and, for a dual D,
            its bilinear (antialiased) resize to the neural-render resolution as the raw image.
  Gradients are cleared (set to None) before each phase, as the loop does.
* "images/s": batch / (G+D step time), i.e. fake images per second of training.
* --malloc tuned (CPU): before building anything, glibc is told to keep freed memory in the
  process (mallopt M_MMAP_THRESHOLD and M_TRIM_THRESHOLD = 1 GiB). By default every tensor
  above ~32 MiB is a fresh mmap, and touching its pages again costs a page fault per 4 KiB
  (hundreds of thousands per step here, expensive in a VM); the figures show both settings.
* --traffic: after the timings, one more G+D step under torch.profiler(profile_memory=True)
  prints the bytes the step allocates in all (every intermediate tensor, summed). On a CPU
  each allocated byte is written at least once and usually read again, so this bounds the
  step from below by memory bandwidth, next to its arithmetic.
* --compare (CPU): the G+D step of the four variants {NCHW, channels-last activations} x
  {fakes regenerated, reused}, interleaved run by run so that they share the machine's load,
  with each one's speed-up over NCHW + regenerated (the code before either change).
* --compare-kernels (CPU): the same for {PyTorch ops, compiled CPU kernels} x {regenerated,
  reused}: the kernels of torch_utils/ops/cpu_kernels.py (tri-plane sampler, modulation,
  bias_act, Winograd convolutions, one-pass ToRGB) against the PyTorch paths they replace.
* --compare-winograd (CPU): the same for {direct, Winograd} x {regenerated, reused}: the
  stride-1 3x3 convolutions (forward, input and weight gradients) by oneDNN's direct
  algorithm or by torch_utils/ops/winograd.py's F(4x4, 3x3) kernel (where `usable`), all
  other kernels on. `bench/winograd.py` has the same shape by shape.
* --compare-torgb (CPU): the same for {unfused, one-pass} x {regenerated, reused}: ToRGB of the
  tri-plane skip images as upsample2d, scale, 1x1 conv and epilogue passes, or as
  torch_utils/ops/torgb.py's one-pass kernel (where `kernel_applies`), all other kernels on.
* --cpu-bf16 (CPU): the blocks flagged for reduced precision (the config's `num_fp16_res`
  highest resolutions of backbone, super-resolution and D; `--fp16-res N` sets all three)
  compute in bfloat16 (torch_utils/precision.py), as they compute in fp16 on CUDA.
* --compare-precision (CPU): the same interleaving for {fp32, bf16 blocks} x {regenerated,
  reused}; needs `num_fp16_res` > 0 (e.g. --fp16-res 4).
* --flops: after the timings, the FLOPs of one G+D step (convolutions forward and backward,
  matmuls; torch.utils.flop_counter), the rate the timed step ran at, and the time those FLOPs
  take at the speed of a 2048² fp32 matmul measured in the same process: the step's floor for
  as long as its arithmetic stays the same, however well the memory-bound rest is fused. The
  FLOPs are those of direct convolutions; the part that runs in the Winograd kernel (which
  multiplies 4x less) is shown beside them, with the floor of what is executed.
* --profile N: after the timings, one more G+D step under torch.profiler; prints the N ops
  with the most self time (device time on a GPU, CPU time on a CPU).
* Peak memory: CPU, the peak resident set size seen during the timed runs minus the RSS
  before them (sampled every 2 ms by a thread; psutil), plus ru_maxrss; GPU,
  torch.cuda.max_memory_allocated over the timed runs.

Timings on a shared machine vary with load; compare code paths within one run (the figures
of two runs are comparable only at equal load, shown by `uptime` at the top).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import threading
import time
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import psutil
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_utils import precision  # noqa: E402
from torch_utils.misc import cpu_channels_last, tune_cpu_allocator  # noqa: E402
from torch_utils.ops import cpu_kernels, torgb, winograd  # noqa: E402
from torch_utils.ops.cpu_kernels import kernels_enabled  # noqa: E402
from training.discriminator import Discriminator  # noqa: E402
from training.options import load_config, to_plain  # noqa: E402
from training.triplane import TriPlaneGenerator  # noqa: E402

DEFAULT_RESOLUTION = 128


def build_networks(cfg_name: str, classes: int, device: torch.device, resolution: Optional[int] = None,
                   fp16_res: Optional[int] = None) -> Tuple[torch.nn.Module, torch.nn.Module, dict]:
    """G and D of a named config (train mode, no parameter requires grad), and the config.

    ``fp16_res`` replaces ``num_fp16_res`` of the backbone, the super-resolution and D.
    """
    opts = load_config(cfg_name)
    for key in ("G", "D"):
        if key not in opts:
            raise ValueError(f"--cfg {cfg_name}: the config has no '{key}:' section")
    if fp16_res is not None:
        for section in (opts.G.setdefault("backbone_kwargs", {}), opts.G.setdefault("sr_kwargs", {}), opts.D):
            section["num_fp16_res"] = fp16_res
    res = int(resolution or opts.get("resolution") or DEFAULT_RESOLUTION)
    torch.manual_seed(0)
    G = TriPlaneGenerator(**to_plain(opts.G), c_dim=classes, img_res=res)
    D = Discriminator(**to_plain(opts.D), c_dim=classes, img_resolution=res)
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    return G, D, opts


def make_inputs(G: torch.nn.Module, batch: int, classes: int, device: torch.device) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(batch, G.z_dim, generator=gen)
    c = F.one_hot(torch.randint(classes, (batch,), generator=gen), classes).float() if classes > 0 \
        else torch.zeros(batch, 0)
    real = torch.rand(batch, 3, G.img_res, G.img_res, generator=gen) * 2 - 1
    real_raw = F.interpolate(real, size=(G.neural_res,) * 2, mode="bilinear", align_corners=False,
                             antialias=G.neural_res < G.img_res)
    return {k: v.to(device) for k, v in dict(z=z, c=c, real=real, real_raw=real_raw).items()}


def _zero_grad(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def g_forward(G, inputs) -> None:
    with torch.no_grad():
        G(inputs["z"], inputs["c"])


def g_inference(G, inputs) -> None:
    """G(z, c) in eval mode under no_grad, as gen_samples.py and gen_videos.py run it."""
    G.eval()
    try:
        g_forward(G, inputs)
    finally:
        G.train()


def gd_step(G, D, inputs, reuse_fakes: bool = False) -> None:
    """G_main then D_main (see the module docstring)."""
    z, c = inputs["z"], inputs["c"]
    # G_main
    _zero_grad(G)
    G.requires_grad_(True)
    out = G(z, c)
    fake = dict(image=out["image"], image_raw=out["image_raw"])
    F.softplus(-D(fake, c)).mean().backward()
    G.requires_grad_(False)
    # D_main
    _zero_grad(D)
    D.requires_grad_(True)
    if reuse_fakes:
        fake = {k: v.detach() for k, v in fake.items()}
    else:
        with torch.no_grad():
            out = G(z, c, update_emas=True)
        fake = dict(image=out["image"], image_raw=out["image_raw"])
    F.softplus(D(fake, c)).mean().backward()
    real = dict(image=inputs["real"], image_raw=inputs["real_raw"])
    F.softplus(-D(real, c)).mean().backward()
    D.requires_grad_(False)


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the largest value seen (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc, self.interval = psutil.Process(), interval
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def time_fn(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> List[float]:
    """Wall times of fn() in seconds (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def allocated_bytes(fn: Callable[[], None]) -> int:
    """Bytes allocated while fn() runs: each profiled op's own allocations (net of what it frees
    itself, so a slight underestimate), summed over ops (torch.profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) + max(getattr(e, "self_device_memory_usage", 0), 0)
               for e in prof.events())


def step_flops(fn: Callable[[], None]) -> Dict[str, int]:
    """FLOPs of one run of fn() by aten op (convolutions, their backward, matmuls), counted by
    torch.utils.flop_counter (2 per multiply-add; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return {str(op).split(".")[-1]: int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul on this device, median of `repeats` (the machine's practical peak)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    times = time_fn(lambda: a @ b, device, repeats, warmup=1)
    return 2 * n ** 3 / statistics.median(times)


def print_flops(fn: Callable[[], None], device: torch.device, step_time: float) -> None:
    """The step's FLOPs, the rate it ran at, and how long they take at the matmul peak: a floor
    for the step that no fusion of the remaining (memory-bound) work can go below.

    The counter sees aten's convolutions only, so it runs twice: with the Winograd kernel off
    (the FLOPs of direct convolutions: the step's nominal arithmetic) and on (what aten still
    runs); the difference ran in the kernel, whose matrix products need a quarter of it."""
    with winograd.enabled(False):
        flops = step_flops(fn)
    total = sum(flops.values())
    in_kernel = total - sum(step_flops(fn).values())
    executed = total - in_kernel * 3 / 4
    peak = matmul_peak(device)
    parts = ", ".join(f"{op} {n / 1e9:.1f}" for op, n in sorted(flops.items(), key=lambda kv: -kv[1]) if n >= 1e8)
    print(f"  FLOPs per step        {total / 1e9:8.1f} GFLOP with direct convolutions ({parts})")
    print(f"  in Winograd's kernel  {in_kernel / 1e9:8.1f} GFLOP of those, as {in_kernel / 4e9:.1f} GFLOP of products: "
          f"{executed / 1e9:.1f} GFLOP executed (transforms not counted)")
    print(f"  at the step's time    {total / step_time / 1e9:8.1f} GFLOP/s nominal; a 2048² matmul here: "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"  FLOPs at that peak    {executed / peak:8.3f} s executed, {total / peak:.3f} s nominal "
          f"(the step's floor without fewer FLOPs)")


def print_profile(fn: Callable[[], None], device: torch.device, rows: int) -> None:
    """The `rows` ops with the most self time in one run of fn() (device time on CUDA), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if on_cuda:
            torch.cuda.synchronize(device)
    sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


def _fmt(times: List[float]) -> str:
    return f"{statistics.median(times):8.3f} s (min {min(times):.3f}, max {max(times):.3f})"


def _interleave(G, D, inputs, batch: int, repeats: int, warmup: int,
                variants: Dict[str, Tuple[Callable[[], ContextManager], bool]]) -> None:
    """G+D steps of each variant (a context to run in, fakes reused or not), interleaved run by run
    so that they share the machine's load; speed-ups over the first variant."""
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for run in range(warmup + repeats):
        for name, (context, reuse) in variants.items():
            with context():
                start = time.perf_counter()
                gd_step(G, D, inputs, reuse)
                if run >= warmup:
                    times[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        step = statistics.median(ts)
        print(f"  {name:36s} {_fmt(ts)}  {batch / step:6.2f} images/s  x{base / step:.2f}")


def compare_variants(G, D, inputs, batch: int, repeats: int, warmup: int) -> None:
    """Interleaved G+D steps of {NCHW, channels-last} x {regenerated, reused fakes} (CPU)."""
    variants = {f"{'channels-last' if cl else 'NCHW'}, fakes {'reused' if reuse else 'regenerated'}":
                (functools.partial(cpu_channels_last, cl), reuse) for cl in (False, True) for reuse in (False, True)}
    _interleave(G, D, inputs, batch, repeats, warmup, variants)


def compare_kernels(G, D, inputs, batch: int, repeats: int, warmup: int) -> None:
    """Interleaved G+D steps of {PyTorch ops, compiled CPU kernels} x {regenerated, reused fakes}."""
    if cpu_kernels.plugin.get() is None:
        print(f"  --compare-kernels: the CPU kernels are not available ({cpu_kernels.plugin.failed_reason})")
        return
    variants = {f"{'C++ kernels' if k else 'PyTorch ops'}, fakes {'reused' if reuse else 'regenerated'}":
                (functools.partial(kernels_enabled, k), reuse) for k in (False, True) for reuse in (False, True)}
    _interleave(G, D, inputs, batch, repeats, warmup, variants)


def compare_switch(G, D, inputs, batch: int, repeats: int, warmup: int, switch: Callable[[bool], ContextManager],
                   names: Tuple[str, str], flag: str) -> None:
    """Interleaved G+D steps of {switch off, on} x {regenerated, reused fakes} (CPU), all other kernels on."""
    if cpu_kernels.plugin.get() is None:
        print(f"  {flag}: the CPU kernels are not available ({cpu_kernels.plugin.failed_reason})")
        return
    variants = {f"{names[on]}, fakes {'reused' if reuse else 'regenerated'}": (functools.partial(switch, on), reuse)
                for on in (False, True) for reuse in (False, True)}
    _interleave(G, D, inputs, batch, repeats, warmup, variants)


def compare_precision(G, D, inputs, batch: int, repeats: int, warmup: int) -> None:
    """Interleaved G+D steps of {fp32, bf16 reduced-precision blocks} x {regenerated, reused fakes} (CPU)."""
    if not any(getattr(m, "use_fp16", False) for net in (G, D) for m in net.modules()):
        print("  note: no block has num_fp16_res > 0, so both precisions run the same; pass --fp16-res N")
    variants = {f"{'bf16 blocks' if bf16 else 'fp32'}, fakes {'reused' if reuse else 'regenerated'}":
                (functools.partial(precision.cpu_bf16, bf16), reuse)
                for bf16 in (False, True) for reuse in (False, True)}
    _interleave(G, D, inputs, batch, repeats, warmup, variants)


def bench_device(args, device: torch.device) -> None:
    with precision.cpu_bf16(args.cpu_bf16):
        _bench_device(args, device)


def _bench_device(args, device: torch.device) -> None:
    G, D, opts = build_networks(args.cfg, args.classes, device, args.resolution, args.fp16_res)
    batch = args.batch or int(opts.batch)
    inputs = make_inputs(G, batch, args.classes, device)
    n_g = sum(p.numel() for p in G.parameters())
    n_d = sum(p.numel() for p in D.parameters())
    print(f"[{device}] cfg {args.cfg}: batch {batch}, img {G.img_res}, neural {G.neural_res}, "
          f"tri-plane {G.triplane_res}x{G.triplane_channels}, samples {G.renderer.num_coarse}+{G.renderer.num_fine}, "
          f"G {n_g / 1e6:.2f}M params, D {n_d / 1e6:.2f}M params, classes {args.classes}", flush=True)
    if args.compare or args.compare_kernels or args.compare_precision or args.compare_winograd or args.compare_torgb:
        if device.type != "cpu":
            print("  --compare / --compare-kernels / --compare-precision / --compare-winograd / --compare-torgb: "
                  "CPU only")
            return
        if args.compare_precision:
            compare_precision(G, D, inputs, batch, args.repeats, args.warmup)
        if args.compare:
            compare_variants(G, D, inputs, batch, args.repeats, args.warmup)
        if args.compare_kernels:
            compare_kernels(G, D, inputs, batch, args.repeats, args.warmup)
        if args.compare_winograd:
            compare_switch(G, D, inputs, batch, args.repeats, args.warmup, winograd.enabled,
                           ("direct convs", "Winograd convs"), "--compare-winograd")
        if args.compare_torgb:
            compare_switch(G, D, inputs, batch, args.repeats, args.warmup, torgb.enabled,
                           ("unfused ToRGB", "one-pass ToRGB"), "--compare-torgb")
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as rss:
        t_g = time_fn(lambda: g_forward(G, inputs), device, args.repeats, args.warmup)
        t_eval = time_fn(lambda: g_inference(G, inputs), device, args.repeats, args.warmup)
        t_step = time_fn(lambda: gd_step(G, D, inputs, args.reuse_fakes), device, args.repeats, args.warmup)
    step = statistics.median(t_step)
    what = "G_main + D_main, fakes reused" if args.reuse_fakes else "G_main + D_main"
    print(f"  G forward (no grad)   {_fmt(t_g)}")
    print(f"  G inference (eval)    {_fmt(t_eval)}")
    print(f"  G+D step ({what}) {_fmt(t_step)}")
    print(f"  images/s              {batch / step:8.2f}")
    if args.traffic:
        allocated = allocated_bytes(lambda: gd_step(G, D, inputs, args.reuse_fakes))
        print(f"  allocated per step    {allocated / 2**30:8.1f} GiB")
    if args.flops:
        print_flops(lambda: gd_step(G, D, inputs, args.reuse_fakes), device, step)
    if args.profile:
        print(f"  one G+D step under torch.profiler, the {args.profile} ops with the most self time:")
        print_profile(lambda: gd_step(G, D, inputs, args.reuse_fakes), device, args.profile)
    if device.type == "cuda":
        print(f"  peak GPU memory       {torch.cuda.max_memory_allocated(device) / 2**20:8.1f} MiB")
    else:
        maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"  peak RSS growth       {(rss.peak - rss.base) / 2**20:8.1f} MiB "
              f"(peak RSS {rss.peak / 2**20:.1f} MiB, ru_maxrss {maxrss_mib:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="config name (configs/NAME.yaml) or path")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's batch)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: CPU, then CUDA too when a GPU is present")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (c_dim)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--malloc", choices=["default", "tuned"], default="default",
                        help="glibc allocator settings (tuned: keep freed memory; see above)")
    parser.add_argument("--traffic", action="store_true",
                        help="also print the bytes one G+D step allocates (profiled once, untimed)")
    parser.add_argument("--reuse-fakes", action="store_true",
                        help="D_main scores the detached G_main fakes instead of regenerating them")
    parser.add_argument("--compare", action="store_true",
                        help="interleave NCHW / channels-last x regenerated / reused fakes (CPU) and print speed-ups")
    parser.add_argument("--compare-kernels", action="store_true",
                        help="interleave PyTorch ops / compiled CPU kernels x regenerated / reused fakes (CPU)")
    parser.add_argument("--compare-winograd", action="store_true",
                        help="interleave direct / Winograd stride-1 3x3 convs x regenerated / reused fakes (CPU)")
    parser.add_argument("--compare-torgb", action="store_true",
                        help="interleave unfused / one-pass ToRGB x regenerated / reused fakes (CPU)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="CPU: the config's reduced-precision blocks compute in bfloat16 (see above)")
    parser.add_argument("--fp16-res", type=int, default=None, metavar="N",
                        help="num_fp16_res for backbone, super-resolution and D (default: the config's)")
    parser.add_argument("--compare-precision", action="store_true",
                        help="interleave fp32 / bf16 reduced-precision blocks x regenerated / reused fakes (CPU)")
    parser.add_argument("--flops", action="store_true",
                        help="also count the step's FLOPs (untimed) and time them at this device's matmul peak")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timings, profile one G+D step and print the N ops with the most self time")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image resolution (default: the config's 'resolution' key, else 128; the demo's data is 64)")
    args = parser.parse_args()
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.fp16_res is not None and args.fp16_res < 0:
        parser.error(f"--fp16-res must be >= 0, got {args.fp16_res}")
    if (args.cpu_bf16 or args.compare_precision) and not precision.cpu_has_fast_bf16():
        print("note: this CPU has no native bf16 instructions; oneDNN emulates them (slowly)")
    if args.repeats < 1 or args.warmup < 0 or args.classes < 0:
        parser.error("--repeats must be >= 1, --warmup and --classes >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    malloc = args.malloc
    if malloc == "tuned" and not tune_cpu_allocator():
        malloc = "default (mallopt unavailable)"
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load = os.getloadavg()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, repeats {args.repeats}, warm-up {args.warmup}, "
          f"malloc {malloc}")
    for name in devices:
        bench_device(args, torch.device(name))


if __name__ == "__main__":
    main()
