"""The flex backend's compiled kernel: it builds with the torch this project requires, agrees with eager, and one
compilation serves a whole decode run (the cache length grows every step).

FlexAttention runs on CPU too (compiled by inductor's C++ backend), so the compile path is exercised here
without a GPU; the backend itself stays CUDA-only in scenarios, where its decoding kernel is the point.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch._dynamo.utils

from harness.model.attention import FlexKernel, attend


@pytest.fixture
def fresh_compiler() -> Iterator[None]:
    """torch.compile's caches and counters emptied before and after: other tests compile other shapes."""
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch.compiler.reset()


@pytest.mark.slow
def test_flex_compiles_once_per_shape_family_and_agrees_with_eager_over_a_decode_run(fresh_compiler: None) -> None:
    kernel = FlexKernel()
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=generator)  # GQA: 4 query heads over 2 KV heads
    k = torch.randn(2, 2, 40, 16, generator=generator)
    v = torch.randn(2, 2, 40, 16, generator=generator)
    for pos in range(20, 26):  # six decode steps, each over one more cached position
        out = kernel(q, k[:, :, : pos + 1], v[:, :, : pos + 1], pos)
        torch.testing.assert_close(out, attend(q, k, v, start_pos=pos, backend="eager"), atol=1e-5, rtol=1e-5)
    # The first length compiles a static graph; the second makes the length symbolic; no more after that.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
