"""Tests for the CUDA plugin builder: a build that cannot happen falls back with one warning."""

import warnings
from pathlib import Path

import pytest
import torch

from torch_utils import custom_ops


def test_missing_cuda_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(custom_ops, "cuda_build_available", lambda: (False, "no CUDA device (test)"))
    plugin = custom_ops.CudaPlugin("never_built_plugin", sources=["missing.cpp"], source_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert plugin.get() is None
        assert plugin.get() is None  # second call: no new warning, no new build attempt
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "never_built_plugin" in messages[0] and "reference" in messages[0]
    assert "no CUDA device (test)" in plugin.failed_reason


def test_compiler_failure_falls_back(monkeypatch, tmp_path):
    """A build that raises (e.g. nvcc missing or a compile error) never crashes the caller."""
    monkeypatch.setattr(custom_ops, "cuda_build_available", lambda: (True, ""))
    monkeypatch.setattr(custom_ops, "_gpu_tag", lambda: "sm00")
    monkeypatch.setattr(custom_ops.torch.cuda, "get_device_capability", lambda *a: (0, 0))
    monkeypatch.setenv("TRIPLANE3D_CACHE_DIR", str(tmp_path / "cache"))

    def broken_load(**kwargs):
        raise OSError("nvcc: command not found")

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "load", broken_load)
    (tmp_path / "a.cpp").write_text("// nothing\n")
    plugin = custom_ops.CudaPlugin("broken_plugin", sources=["a.cpp"], source_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="broken_plugin"):
        assert plugin.get() is None
    assert "nvcc: command not found" in plugin.failed_reason


def test_build_cache_key_changes_with_sources(tmp_path):
    (tmp_path / "a.cu").write_text("// v1\n")
    first = custom_ops._hash_files([tmp_path / "a.cu"])
    (tmp_path / "a.cu").write_text("// v2\n")
    assert custom_ops._hash_files([tmp_path / "a.cu"]) != first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_cuda_build_available_says_why_not():
    ok, reason = custom_ops.cuda_build_available()
    assert not ok and reason


def test_cpu_plugins_can_be_switched_off(monkeypatch, tmp_path):
    """TRIPLANE3D_CPU_PLUGINS=0: no build is tried, one warning, and the caller gets None."""
    monkeypatch.setenv("TRIPLANE3D_CPU_PLUGINS", "0")
    ok, reason = custom_ops.cpu_build_available()
    assert not ok and "TRIPLANE3D_CPU_PLUGINS=0" in reason
    plugin = custom_ops.CpuPlugin("never_built_cpu_plugin", sources=["missing.cpp"], namespace="none",
                                   source_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="CPU plugin 'never_built_cpu_plugin'"):
        assert plugin.get() is None
    assert "TRIPLANE3D_CPU_PLUGINS=0" in plugin.failed_reason


def test_cpu_plugin_build_dir_is_keyed_by_cpu_and_torch(monkeypatch, tmp_path):
    """-march=native binaries must not be reused on another CPU or against another torch."""
    monkeypatch.setattr(custom_ops, "cpu_build_available", lambda: (True, ""))
    monkeypatch.setenv("TRIPLANE3D_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    def fake_load(**kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    (tmp_path / "k.cpp").write_text("// kernel\n")
    plugin = custom_ops.CpuPlugin("keyed_plugin", sources=["k.cpp"], namespace="keyed", source_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="stop here"):
        assert plugin.get() is None
    assert seen["build_directory"].endswith(custom_ops._cpu_tag())
    assert "-march=native" in seen["extra_cflags"] and "-fopenmp" in seen["extra_ldflags"]
    monkeypatch.setattr(custom_ops.torch, "__version__", "0.0.0-other")
    assert custom_ops._cpu_tag() not in seen["build_directory"]


def test_a_lock_file_left_by_a_killed_build_does_not_hang_the_next(monkeypatch, tmp_path):
    """torch waits forever on its build-directory lock file; one left by a killed process is cleared,
    and the next build runs under an flock that the kernel releases if its holder dies."""
    import fcntl

    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setattr(custom_ops, "cpu_build_available", lambda: (True, ""))
    monkeypatch.setenv("TRIPLANE3D_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}

    def fake_load(build_directory, **kwargs):
        seen["stale_lock_present"] = (Path(build_directory) / "lock").exists()
        with open(Path(build_directory) / ".triplane3d.flock") as other:
            try:  # another open file description: conflicts while ours is held
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["flock_held"] = False
            except BlockingIOError:
                seen["flock_held"] = True
        raise OSError("stop here")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    (tmp_path / "k.cpp").write_text("// kernel\n")
    plugin = custom_ops.CpuPlugin("locked_plugin", sources=["k.cpp"], namespace="locked", source_dir=tmp_path)
    build_dir = (custom_ops.plugin_cache_dir() /
                 f"locked_plugin-{custom_ops._hash_files([tmp_path / 'k.cpp'])}-{custom_ops._cpu_tag()}")
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # what a process killed inside cpp_extension.load leaves
    with pytest.warns(RuntimeWarning, match="stop here"):
        assert plugin.get() is None
    assert seen == {"stale_lock_present": False, "flock_held": True}
