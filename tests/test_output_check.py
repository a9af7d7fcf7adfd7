"""output_matches_reference on the step forms a cell can take, chunked-prefill steps included."""

from __future__ import annotations

import pytest
import torch

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.measure.autotune import output_tolerance
from harness.measure.output_check import output_check
from harness.model import build_decoder
from harness.model.decoder import Decoder, KVCache
from harness.scenario.schema import ModelSpec
from harness.scenario.serving import with_chunk, with_layout, with_q_len
from harness.variants import Variant, sharing_map

GQA2_CLA2 = Variant("GQA2-CLA2", 16, 4, 2, sharing_map(4, 2))


def _built(tiny_model: ModelSpec, variant: Variant, backend: str) -> tuple[Decoder, KVCache, torch.Tensor, int]:
    reason = unsupported_reason(backend, variant, "cpu")
    if reason is not None:
        pytest.skip(reason)
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend=backend, seed=3)
    context, batch_size = 13, 3
    start, n_new = accounting.step_span(variant, context)
    cache = decoder.allocate_cache(batch_size, accounting.cache_len(start, n_new))
    decoder.fill_cache_synthetic(cache, start, torch.Generator().manual_seed(5))
    q = torch.randn(decoder.core_query_shape(batch_size, n_new), generator=torch.Generator().manual_seed(2))
    return decoder, cache, q, start


FORMS = {
    "one token": lambda v: v,
    "four tokens, pages of 4": lambda v: with_q_len(with_layout(v, 4), 4),
    "chunk of 6": lambda v: with_chunk(v, 6),
    "chunk of 6, pages of 4": lambda v: with_chunk(with_layout(v, 4), 6),
}


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("form", FORMS)
def test_a_backend_that_computes_attention_passes_on_every_step_form(
    tiny_model: ModelSpec, form: str, backend: str
) -> None:
    decoder, cache, q, start = _built(tiny_model, FORMS[form](GQA2_CLA2), backend)
    check = output_check(decoder, q, cache, start, output_tolerance(torch.float32, "cpu"))
    assert check is not None and check.passed, check


@pytest.mark.parametrize("form", FORMS)
def test_an_output_off_by_half_fails_on_every_step_form(
    tiny_model: ModelSpec, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder, cache, q, start = _built(tiny_model, FORMS[form](GQA2_CLA2), "eager")
    right = decoder.core_attention
    monkeypatch.setattr(decoder, "core_attention", lambda *args: right(*args) * 1.5)
    check = output_check(decoder, q, cache, start, output_tolerance(torch.float32, "cpu"))
    assert check is not None and not check.passed
    assert "largest |output - reference|" in check.detail
