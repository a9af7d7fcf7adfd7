"""choose_backend: the fastest backend that agrees with eager, measured with a fake timer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import harness.model.attention as attention_module
from harness.measure import autotune
from harness.measure.autotune import AutoChoice, choose_backend
from harness.model import Decoder, KVCache, build_decoder
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map

POS = 11


@pytest.fixture
def decoder(tiny_model: ModelSpec) -> Decoder:
    """A GQA-CLA2 stack (4 query heads of width 16 over 2 KV heads) on the CPU, backend "sdpa"."""
    variant = Variant(name="GQA2-CLA2", head_dim=16, n_heads=4, n_kv_heads=2, kv_layers=sharing_map(4, 2))
    return build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend="sdpa")


@pytest.fixture
def cache(decoder: Decoder) -> KVCache:
    cache = decoder.allocate_cache(batch_size=2, cache_len=16)
    decoder.fill_cache_synthetic(cache, POS + 1, torch.Generator().manual_seed(3))
    return cache


def fake_timer(latencies_s: dict[str, float], decoder: Decoder) -> Callable[[Callable[[], object], float], float]:
    """A timer that calls the function once and reports the latency given for the decoder's current backend."""

    def time_one(fn: Callable[[], object], window_s: float) -> float:
        fn()
        return latencies_s[decoder.backend]

    return time_one


def test_choose_backend_picks_the_fastest_agreeing_backend(decoder: Decoder, cache: KVCache) -> None:
    latencies = {"eager": 3.0, "sdpa": 2.0, "grouped": 1.0, "native": 1.5}
    choice = choose_backend(decoder, cache, POS, timer=fake_timer(latencies, decoder))
    assert choice == AutoChoice(backend="grouped", latencies_s=latencies, rejected={})


def test_choose_backend_rejects_a_backend_that_disagrees_with_eager(
    decoder: Decoder, cache: KVCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_grouped = attention_module._grouped

    def wrong_grouped(*args: torch.Tensor | int) -> torch.Tensor:
        return real_grouped(*args) + 0.1  # type: ignore[arg-type]

    monkeypatch.setattr(attention_module, "_grouped", wrong_grouped)
    timer = fake_timer({"eager": 3.0, "sdpa": 2.0, "grouped": 1.0, "native": 2.5}, decoder)
    choice = choose_backend(decoder, cache, POS, timer=timer)
    assert choice.backend == "sdpa"
    assert "grouped" not in choice.latencies_s
    assert choice.rejected["grouped"].startswith("disagrees with eager")


def test_choose_backend_rejects_a_backend_that_raises(
    decoder: Decoder, cache: KVCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_sdpa(*args: torch.Tensor | int) -> torch.Tensor:
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(attention_module, "_sdpa", broken_sdpa)
    timer = fake_timer({"eager": 3.0, "sdpa": 0.5, "grouped": 1.0, "native": 1.2}, decoder)
    choice = choose_backend(decoder, cache, POS, timer=timer)
    assert choice.backend == "grouped"
    assert choice.rejected == {"sdpa": "RuntimeError: no kernel for this shape"}


def test_choose_backend_never_picks_a_backend_unavailable_on_the_device(decoder: Decoder, cache: KVCache) -> None:
    timer = fake_timer({"eager": 3.0, "sdpa": 2.0, "grouped": 1.0, "flex": 0.1}, decoder)
    choice = choose_backend(decoder, cache, POS, candidates=("sdpa", "flex"), timer=timer)
    assert choice.backend == "sdpa"
    assert choice.rejected == {"flex": "not available on cpu"}


def test_choose_backend_restores_the_decoder_backend(decoder: Decoder, cache: KVCache) -> None:
    timer = fake_timer({"eager": 3.0, "sdpa": 2.0, "grouped": 1.0, "native": 1.0}, decoder)
    choose_backend(decoder, cache, POS, timer=timer)
    assert decoder.backend == "sdpa"


def test_choose_backend_raises_when_no_backend_qualifies(decoder: Decoder, cache: KVCache) -> None:
    with pytest.raises(RuntimeError, match="no attention backend qualified"):
        choose_backend(decoder, cache, POS, candidates=("flex",), timer=fake_timer({}, decoder))


def test_choose_backend_with_the_real_timer_returns_a_positive_median_per_backend(
    decoder: Decoder, cache: KVCache
) -> None:
    choice = choose_backend(decoder, cache, POS, time_budget_s=0.06)
    assert set(choice.latencies_s) == {"eager", "sdpa", "grouped", "native"}
    assert all(latency > 0 for latency in choice.latencies_s.values())
    assert choice.backend in choice.latencies_s


def test_on_cuda_candidates_are_timed_by_graph_replay_as_cells_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import timing

    asked: list[dict[str, object]] = []

    def recording_time_cuda(fn: Callable[[], object], **options: object) -> timing.CudaTimings:
        asked.append(options)
        return timing.CudaTimings(device_s=[2e-3, 1e-3, 3e-3], host_s=[], graph_used=True)

    monkeypatch.setattr(timing, "time_cuda", recording_time_cuda)
    median = autotune._default_timer("cuda")(lambda: None, 0.1)
    assert median == 2e-3
    assert asked and asked[0]["graph"] is True and asked[0]["host"] is False
