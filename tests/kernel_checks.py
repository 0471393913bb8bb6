"""Checks shared by the tests of the compiled CPU kernels: closeness to a float64 reference,
thread counts, a kernel source built without AVX-512 in a fresh process, and a few training
steps with and without a kernel."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import pytest
import torch

from dnnlib import EasyDict


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's thread count set to n within the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 2e-5) -> None:
    """Within `rel` of the expected tensor's largest magnitude (a kernel's roundings are a few
    float32 ulps of that scale; a wrong tap, tile or index is off by the scale itself)."""
    scale = expected.abs().max().item()
    err = (actual.double() - expected).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} against scale {scale:.3g}"


_PORTABLE_HEADER = """
import sys
import torch
from torch.utils import cpp_extension

source, build_dir = sys.argv[1], sys.argv[2]
cpp_extension.load(name="{name}", sources=[source], build_directory=build_dir,
                   extra_cflags=["-O2", "-march=x86-64-v2"], is_python_module=False, verbose=False)
ops = torch.ops.triplane3d_cpu
torch.manual_seed(0)
"""


def run_portable_build(source: Path, checks: str, tmp_path: Path) -> None:
    """Build `source` alone for x86-64-v2 (no AVX-512: the kernels' plain C++ paths) in a fresh
    Python, then run `checks` there (with `torch`, `sys` and `ops` = torch.ops.triplane3d_cpu
    defined); they print "ok" when they pass."""
    from torch_utils.custom_ops import cpu_build_available

    ok, reason = cpu_build_available()
    if not ok:
        pytest.skip(f"no CPU plugin can be built here: {reason}")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the portable build is pinned to x86-64-v2")
    path = tmp_path / "check.py"
    path.write_text(_PORTABLE_HEADER.format(name=f"{source.stem}_portable") + checks)
    done = subprocess.run([sys.executable, str(path), str(source), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def training_difference(opts: EasyDict, run_dir: Path, switch: Callable[[bool], ContextManager]) -> float:
    """Relative L2 difference of G's and D's final weights between training runs of `opts` with
    `switch(False)` and `switch(True)`, from the same seed."""
    from training import distributed as tdist
    from training.training_loop import training_loop

    weights = {}
    for on in (False, True):
        with switch(on):
            torch.manual_seed(0)
            trainer = training_loop(opts, run_dir / f"run-{on}", tdist.DistInfo())
        weights[on] = [v.detach().double() for net in (trainer.G, trainer.D) for v in net.state_dict().values()
                       if v.is_floating_point()]
    diff = sum((a - b).square().sum() for a, b in zip(weights[True], weights[False])).sqrt()
    norm = sum(b.square().sum() for b in weights[False]).sqrt()
    return float(diff / norm)
