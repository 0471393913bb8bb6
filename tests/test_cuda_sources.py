"""Compile-checks every CUDA kernel (.cu, with nvcc) and binding (.cpp, with g++) without a GPU.

Kernels include only CUDA and c10 scalar headers and bindings avoid ATen/cuda headers
(docs/contributing-ops.md), so both compile against a CPU-only torch. Where a compiler is
missing the tests skip and say which one.
"""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

OPS_DIR = Path(__file__).resolve().parents[1] / "torch_utils" / "ops"
TORCH_INCLUDE = Path(torch.__file__).parent / "include"
KERNELS = sorted(OPS_DIR.glob("*.cu"))
BINDINGS = sorted(OPS_DIR.glob("*.cpp"))


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    candidates = [Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"]
    if nvcc:
        candidates.insert(0, Path(nvcc).resolve().parents[1] / "include")
    return next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"


def test_every_op_has_kernel_and_binding():
    assert KERNELS, f"no .cu sources found in {OPS_DIR}"
    for cu in KERNELS:
        assert cu.with_suffix(".cpp").exists(), f"{cu.name} has no .cpp binding"
        assert cu.with_suffix(".h").exists(), f"{cu.name} has no shared .h header"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_kernel_compiles(source, arch, tmp_path):
    _run(["nvcc", "-c", "-std=c++17", f"-arch={arch}", f"-I{TORCH_INCLUDE}", f"-I{OPS_DIR}",
          str(source), "-o", str(tmp_path / "k.o")])


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")
@pytest.mark.skipif(_cuda_include() is None, reason="CUDA headers (cuda_runtime.h) not found")
@pytest.mark.parametrize("source", BINDINGS, ids=lambda p: p.name)
def test_binding_compiles(source):
    _run(["g++", "-fsyntax-only", "-std=c++20", "-w", f"-DTORCH_EXTENSION_NAME={source.stem}_plugin",
          f"-I{TORCH_INCLUDE}", f"-I{TORCH_INCLUDE / 'torch/csrc/api/include'}", f"-I{_cuda_include()}",
          f"-I{sysconfig.get_paths()['include']}", f"-I{OPS_DIR}", str(source)])
