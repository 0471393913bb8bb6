"""Shared pytest fixtures."""

import pytest
import torch

from training_fixtures import build_tiny_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 2-class, 12-image synthetic data set at 16x16 (built once per test session)."""
    return build_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny-16.zip")


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """The tests' tiny models run much faster on one thread: no thread-pool start-up or contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cpu_kernels_module():
    """The compiled CPU kernels (torch.ops.triplane3d_cpu); skipped where no C++ compiler exists.

    Where one exists the library must build: a build failure fails the test, it is not skipped.
    """
    from torch_utils.custom_ops import cpu_build_available
    from torch_utils.ops import cpu_kernels

    ok, reason = cpu_build_available()
    if not ok:
        pytest.skip(f"no CPU plugin can be built here: {reason}")
    module = cpu_kernels.plugin.get()
    assert module is not None, cpu_kernels.plugin.failed_reason
    return module
