"""Builds the C++/CUDA plugins of torch_utils/ops on first use, caches them, and falls back quietly.

Each op that has a CUDA kernel owns one `CudaPlugin`; an op with a CPU kernel owns one
`CpuPlugin` (C++ built with the host compiler, threads from torch's own pool). `plugin.get()`
returns the compiled extension module, or None when it cannot be had (no GPU, no compiler,
a build error); in that case a single warning per plugin is printed and the op uses its
reference path. A failed build never crashes the run.

Builds go to a cache directory keyed by the hash of the sources and by the GPU's compute
capability (CUDA) or the CPU's instruction sets and the torch version (CPU, compiled with
-march=native), so another process (or a later run) with the same sources reuses the binary.
Cache location: $TRIPLANE3D_CACHE_DIR/torch_extensions, else ~/.cache/triplane3d/torch_extensions.
Set TRIPLANE3D_CPU_PLUGINS=0 to keep the CPU ops on their PyTorch paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional, Sequence

try:
    import fcntl
except ImportError:  # Windows: no flock, torch's lock file alone as before
    fcntl = None  # type: ignore[assignment]

import torch

from dnnlib.util import cache_root

__all__ = ["CudaPlugin", "CpuPlugin", "plugin_cache_dir", "cuda_build_available", "cpu_build_available"]

# Set TRIPLANE3D_CUSTOM_OPS_VERBOSE=1 to see the compiler's output.
_VERBOSE = os.environ.get("TRIPLANE3D_CUSTOM_OPS_VERBOSE", "0") == "1"


def plugin_cache_dir() -> Path:
    """Directory under which compiled plugins are kept (one sub-directory per source hash and GPU)."""
    return cache_root() / "torch_extensions"


def cuda_build_available() -> tuple[bool, str]:
    """Whether a CUDA plugin can be built here; the reason when it cannot."""
    if not torch.cuda.is_available():
        return False, "no CUDA device is available to this process"
    if torch.version.cuda is None:
        return False, "this torch build has no CUDA support"
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return False, "ninja is not installed (pip install ninja)"
    return True, ""


def cpu_build_available() -> tuple[bool, str]:
    """Whether a CPU plugin can be built here; the reason when it cannot."""
    if os.environ.get("TRIPLANE3D_CPU_PLUGINS", "1") == "0":
        return False, "TRIPLANE3D_CPU_PLUGINS=0 turns the CPU plugins off"
    if sys.platform != "linux":
        return False, f"CPU plugins are built on Linux only (this is {sys.platform})"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return False, f"no C++ compiler ({compiler!r}) on PATH"
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return False, "ninja is not installed (pip install ninja)"
    return True, ""


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _gpu_tag() -> str:
    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def _cpu_tag() -> str:
    """The instruction sets the binary may use (-march=native) and the torch it links against."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    digest = hashlib.sha256((flags + torch.__version__).encode()).hexdigest()[:10]
    return f"cpu{digest}"


class _Plugin:
    """A lazily built extension: `get()` builds once, caches the module or the failure."""

    kind = "C++"

    def __init__(self, name: str, sources: Sequence[str], headers: Sequence[str] = (),
                 source_dir: Optional[os.PathLike] = None) -> None:
        self.name = name
        self.source_dir = Path(source_dir) if source_dir else Path(__file__).parent / "ops"
        self.sources = [self.source_dir / s for s in sources]
        self.headers = [self.source_dir / h for h in headers]
        self._module: Optional[ModuleType] = None
        self._failed_reason: Optional[str] = None
        self._lock = threading.Lock()

    @property
    def failed_reason(self) -> Optional[str]:
        """Why the last build attempt failed (None if it did not fail or was not attempted)."""
        return self._failed_reason

    def get(self) -> Optional[ModuleType]:
        """The compiled module, building it on first call; None (with one warning) when unavailable."""
        if self._module is not None:
            return self._module
        if self._failed_reason is not None:
            return None
        with self._lock:
            if self._module is None and self._failed_reason is None:
                try:
                    self._module = self._build()
                except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference path
                    self._fail(f"{type(exc).__name__}: {exc}")
        return self._module

    def _fail(self, reason: str) -> None:
        self._failed_reason = reason
        first_line = reason.strip().splitlines()[0] if reason.strip() else reason
        warnings.warn(
            f"Could not build the {self.kind} plugin '{self.name}' ({first_line}); "
            "falling back to the reference PyTorch implementation (slower, same results). "
            "Set TRIPLANE3D_CUSTOM_OPS_VERBOSE=1 for the compiler output.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _build(self) -> ModuleType:
        raise NotImplementedError

    def _load(self, tag: str, **kwargs):
        """cpp_extension.load of the sources into the cache directory keyed by their hash and `tag`."""
        from torch.utils import cpp_extension

        key = _hash_files(self.sources + self.headers)
        build_dir = plugin_cache_dir() / f"{self.name}-{key}-{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(build_dir):
            return cpp_extension.load(name=self.name, sources=[str(s) for s in self.sources],
                                      extra_include_paths=[str(self.source_dir)], build_directory=str(build_dir),
                                      verbose=_VERBOSE, **kwargs)


@contextlib.contextmanager
def _exclusive(build_dir: Path) -> Iterator[None]:
    """Hold an flock on the build directory, and clear torch's own lock file if one was left behind.

    cpp_extension.load takes a lock *file* in the build directory on every call, even when
    nothing needs building, and waits forever while it exists. A process killed inside load
    (Ctrl-C at the start of a run) leaves it behind and every later process hangs. An flock is
    released by the kernel when its holder dies, so while we hold it no live process of ours is
    inside load, and a torch lock file found then is stale.
    """
    with open(build_dir / ".triplane3d.flock", "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if fcntl is not None and stale.exists():
                stale.unlink()
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


class CpuPlugin(_Plugin):
    """One lazily built C++ CPU library of torch operators (OpenMP threads through ATen's parallel_for).

    The sources register their functions with `TORCH_LIBRARY_FRAGMENT(<namespace>, m)` and
    include only light ATen headers (no torch/extension.h, no pybind11): a build of all the
    CPU kernels takes seconds, not a minute. `get()` returns `torch.ops.<namespace>`.
    Compiled with -O3 -march=native, so the cache key holds the CPU's flags; -fopenmp because
    ATen's parallel_for is inline OpenMP code in this torch's headers (the library then uses
    torch's own libgomp, already loaded).
    """

    kind = "CPU"

    def __init__(self, name: str, sources: Sequence[str], namespace: str, headers: Sequence[str] = (),
                 source_dir: Optional[os.PathLike] = None) -> None:
        super().__init__(name, sources, headers, source_dir)
        self.namespace = namespace
        self.enabled = True  # False: get() answers None, so the ops take their PyTorch paths

    def get(self) -> Optional[ModuleType]:
        return super().get() if self.enabled else None

    def _build(self) -> ModuleType:
        ok, reason = cpu_build_available()
        if not ok:
            raise RuntimeError(reason)
        self._load(_cpu_tag(), extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                   is_python_module=False)
        return getattr(torch.ops, self.namespace)


class CudaPlugin(_Plugin):
    """One lazily built CUDA extension.

    Args:
        name: extension module name, e.g. "bias_act_plugin".
        sources: source files (.cpp binding and .cu kernels) relative to `source_dir`.
        headers: extra files (e.g. shared .h) that take part in the hash but are not compiled.
        source_dir: directory holding the sources (defaults to torch_utils/ops).
        extra_cuda_cflags: flags passed to nvcc.
    """

    kind = "CUDA"

    def __init__(
        self,
        name: str,
        sources: Sequence[str],
        headers: Sequence[str] = (),
        source_dir: Optional[os.PathLike] = None,
        extra_cuda_cflags: Sequence[str] = ("--use_fast_math", "-O3"),
    ) -> None:
        super().__init__(name, sources, headers, source_dir)
        self.extra_cuda_cflags = list(extra_cuda_cflags)

    def _build(self) -> ModuleType:
        ok, reason = cuda_build_available()
        if not ok:
            raise RuntimeError(reason)
        # Compile for this GPU only: fast builds, and the cache key says which GPU it was.
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
        module = self._load(_gpu_tag(), extra_cuda_cflags=self.extra_cuda_cflags)
        sys.modules.setdefault(self.name, module)
        return module
