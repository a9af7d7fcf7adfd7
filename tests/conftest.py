"""Shared fixtures, and the hypothesis profiles of the fuzz tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from harness.scenario.schema import ModelSpec

# "ci" (the default): the same examples on every run (derandomize), few enough that the fuzz tests
# take about a minute on two cores, no timing deadline (a shared machine stalls), no example
# database left behind. "explore": ten times the examples, a fresh seed each run, failures kept in
# .hypothesis/ and replayed first; run it with HYPOTHESIS_PROFILE=explore pytest tests/test_fuzz_*.py.
settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def tiny_model() -> ModelSpec:
    """A four-layer stack small enough that a forward pass takes milliseconds on a CPU."""
    return ModelSpec(d_model=64, n_layers=4, d_ff=96, vocab_size=97, dtype="float32")
