"""Shared fixtures."""

from __future__ import annotations

import pytest

from harness.scenario.schema import ModelSpec


@pytest.fixture
def tiny_model() -> ModelSpec:
    """A four-layer stack small enough that a forward pass takes milliseconds on a CPU."""
    return ModelSpec(d_model=64, n_layers=4, d_ff=96, vocab_size=97, dtype="float32")
