"""Tests for the CUDA plugin builder: a build that cannot happen falls back with one warning."""

import warnings

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
