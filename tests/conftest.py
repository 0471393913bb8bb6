"""Shared pytest fixtures."""

import pytest

from training_fixtures import build_tiny_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 2-class, 12-image synthetic data set at 16x16 (built once per test session)."""
    return build_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny-16.zip")
