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
