"""Prefill cells (sweep.prefill): the whole prompt through the stack over an empty cache, in one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_reference import reference_logits

from harness import accounting
from harness.backend_support import unsupported_reason
from harness.model import available_backends, build_decoder
from harness.predict.features import variant_of
from harness.report.prefill import prefill_section
from harness.results.store import load_result
from harness.run.runner import Runner, RunOptions
from harness.scenario.schema import ModelSpec
from harness.scenario.serving import layouts, with_chunk, with_layout, with_prefill
from harness.variants import MLAShape, Variant, sharing_map, window_layers

CASES = {
    "GQA2": Variant("GQA2", 16, 4, 2, sharing_map(4, 1)),
    "MQA-CLA2": Variant("MQA-CLA2", 16, 4, 1, sharing_map(4, 2)),
    "MLA": Variant("MLA", 24, 4, 1, sharing_map(4, 1), mla=MLAShape(32, 8, 16, 12)),
}


@pytest.mark.parametrize("prompt", [7, 8, 13])  # pages of 4: ending inside a page, on its edge, past three
@pytest.mark.parametrize("page_size", ["contiguous", 4])
@pytest.mark.parametrize("backend", [b for b in available_backends("cpu")] + ["naive"])
@pytest.mark.parametrize("name", CASES)
def test_a_prefill_step_equals_the_reference_at_every_prompt_position_and_fills_the_cache(
    tiny_model: ModelSpec, name: str, backend: str, page_size: int | str, prompt: int
) -> None:
    variant = with_prefill(with_layout(CASES[name], page_size))
    reason = unsupported_reason(backend, variant, "cpu")
    if reason is not None:
        pytest.skip(reason)
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend=backend, seed=3)
    tokens = torch.randint(0, 97, (2, prompt + 1), generator=torch.Generator().manual_seed(8))
    start, n_new = accounting.step_span(variant, prompt)
    assert (start, n_new) == (0, prompt)
    cache = decoder.allocate_cache(2, accounting.cache_len(start, n_new) + 1)  # room for the first decoded token
    first = decoder.decode_step(tokens[:, :prompt], cache, start)  # [B, prompt, vocab]
    expected = reference_logits(decoder, tokens)
    torch.testing.assert_close(first.double(), expected[:, :prompt], atol=2e-5, rtol=1e-4)
    after = decoder.decode_step(tokens[:, prompt:], cache, prompt)  # the next token reads what the prefill wrote
    torch.testing.assert_close(after.double(), expected[:, prompt:], atol=2e-5, rtol=1e-4)


def test_a_prefill_is_accounted_as_its_prompt_over_an_empty_cache(tiny_model: ModelSpec) -> None:
    decode, prefill = CASES["GQA2"], with_prefill(CASES["GQA2"])
    per_position = 4 * 2 * 2 * 16 * 4  # 4 producers, K and V of 2 heads of 16, float32
    assert accounting.kv_cache_bytes(prefill, "float32", 3, 100) == 3 * 100 * per_position  # no decode slot
    assert accounting.kv_cache_bytes(decode, "float32", 3, 100) == 3 * 101 * per_position
    params = accounting.param_counts(tiny_model, prefill)
    per_pair = 2 * 4 * (16 + 16) * 4  # 2 · n_heads · (score + value width), 4 layers
    triangle = 100 * 101 // 2  # prompt token t scores t + 1 positions
    assert accounting.flops_per_step(tiny_model, prefill, 3, 100) == 3 * (100 * 2 * params.matmul + triangle * per_pair)
    rows = min(300, tiny_model.vocab_size)  # 300 tokens look up at most every row of the embedding once
    weights = (params.total - params.embedding + rows * tiny_model.d_model) * 4
    kv = 3 * 100 * per_position  # written once and read once per layer (CLA consumers would re-read)
    assert accounting.bytes_per_step(tiny_model, prefill, "float32", 3, 100) == weights + kv + kv


def test_a_prefill_form_follows_each_cache_layout_and_takes_one_length_per_batch() -> None:
    forms = layouts(CASES["GQA2"], ["contiguous", 16], ["same", "long-tail"], 0, [1, 4], prefill=True)
    names = [form.name for form in forms]
    assert names == [
        "GQA2",
        "GQA2-T4",
        "GQA2-longtail",
        "GQA2-longtail-T4",
        "GQA2-prefill",
        "GQA2-P16",
        "GQA2-P16-T4",
        "GQA2-longtail-P16",
        "GQA2-longtail-P16-T4",
        "GQA2-P16-prefill",
    ]
    assert forms[-1].describe() == "H16-GQA2-P16-prefill"
    assert Variant.from_payload(forms[-1].to_payload()) == forms[-1]


def test_a_windowed_prefill_is_refused_with_the_reason() -> None:
    windowed = with_prefill(Variant("SWA", 16, 4, 2, sharing_map(4, 1), window_layers(4, 5)))
    assert "windowed" in str(unsupported_reason("eager", windowed))
    assert unsupported_reason("eager", with_prefill(CASES["GQA2"])) is None
    with pytest.raises(ValueError, match="whole prompt"):
        Variant("GQA2", 16, 4, 2, sharing_map(4, 1), q_len=4, prefill=True)


PREFILL = """
name = "prefill"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MQA-CLA2"
[sweep]
batch_size = [2]
context_len = [30]
backend = ["eager"]
page_size = ["contiguous", 4]
prefill = true
prefill_chunk = [8]
[measure]
metrics = ["decode", "memory"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
cold = false
"""


def test_a_run_measures_each_layouts_prefill_with_its_cache_as_accounted_and_reports_its_ttft(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prefill.toml"
    path.write_text(PREFILL)
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    outcome = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=tmp_path / "out")).run()
    assert outcome.exit_code == 0
    result = load_result(outcome.path)
    model = ModelSpec.model_validate(result.scenario.model)
    cells = {cell.variant: cell for cell in result.cells}
    layouts = ["H16-MQA-CLA2", "H16-MQA-CLA2-P4"]
    assert sorted(cells) == sorted(f"{name}{form}" for name in layouts for form in ("", "-prefill", "-chunk8"))
    for name in [f"{layout}{form}" for layout in layouts for form in ("-prefill", "-chunk8")]:
        cell = cells[name]
        assert cell.status == "ok" and (cell.prefill is True) == name.endswith("-prefill")
        assert cell.chunk == (8 if name.endswith("-chunk8") else None)
        assert cell.metrics is not None and cell.metrics.kv_cache_bytes == cell.metrics.kv_cache_bytes_expected
        rebuilt = variant_of(cell)  # what the cost model learns from: the step and layout the cell measured
        assert accounting.flops_per_step(model, rebuilt, 2, 30) == cell.metrics.flops_per_step
        assert accounting.kv_cache_bytes(rebuilt, "float32", 2, 30) == cell.metrics.kv_cache_bytes_expected
    decode, prefill = cells["H16-MQA-CLA2"].metrics, cells["H16-MQA-CLA2-prefill"].metrics
    assert decode is not None and prefill is not None
    assert prefill.kv_cache_bytes < decode.kv_cache_bytes  # 30 positions, not 30 + 1
    assert prefill.flops_per_step > 25 * decode.flops_per_step  # 30 tokens of matmuls against one
    section = "\n".join(prefill_section(result))
    rows = [line for line in section.splitlines() if line.startswith("| H16") and "-prefill " in line]
    assert len(rows) == 2 and all("| 30 " in row for row in rows)
    chunked = [line.split("|") for line in section.splitlines() if "-chunk8 " in line]
    assert [row[2].strip() for row in chunked] == ["8", "8"]
    assert all(float(row[7]) > 0 for row in chunked)  # the decode step of the same layout beside it


@pytest.mark.parametrize("chunk", [3, 6])  # pages of 4: the chunk ends inside a page, and past the next one
@pytest.mark.parametrize("page_size", ["contiguous", 4])
@pytest.mark.parametrize("backend", [b for b in available_backends("cpu")] + ["naive"])
@pytest.mark.parametrize("name", CASES)
def test_a_chunked_prefill_step_equals_the_reference_for_the_chunk_and_each_decode_token(
    tiny_model: ModelSpec, name: str, backend: str, page_size: int | str, chunk: int
) -> None:
    variant = with_chunk(with_layout(CASES[name], page_size), chunk)
    reason = unsupported_reason(backend, variant, "cpu")
    if reason is not None:
        pytest.skip(reason)
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", backend=backend, seed=3)
    context, batch_size = 13, 3
    tokens = torch.randint(0, 97, (batch_size, context + chunk), generator=torch.Generator().manual_seed(8))
    cache = decoder.allocate_cache(batch_size, accounting.cache_len(*accounting.step_span(variant, context)))
    decoder.prefill(tokens[:, :context], cache)
    step = decoder.decode_step(tokens[:, context:], cache, context)  # [1, chunk + 2, vocab]
    expected = reference_logits(decoder, tokens)  # each sequence's full history
    assert step.shape[:2] == (1, chunk + batch_size - 1)
    torch.testing.assert_close(step[0, :chunk].double(), expected[0, context:], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(step[0, chunk:].double(), expected[1:, context], atol=2e-5, rtol=1e-4)
    q = torch.randn(decoder.core_query_shape(batch_size, chunk), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        decoder.core_attention(q, cache, context), decoder.reference_attention(q, cache, context), atol=2e-5, rtol=1e-4
    )


def test_a_chunked_prefill_step_is_accounted_as_a_chunk_beside_decode_tokens(tiny_model: ModelSpec) -> None:
    decode, chunked = CASES["GQA2"], with_chunk(CASES["GQA2"], 8)
    per_position = 4 * 2 * 2 * 16 * 4  # 4 producers, K and V of 2 heads of 16, float32
    assert accounting.kv_cache_bytes(chunked, "float32", 3, 100) == 3 * 108 * per_position  # slots sized for the chunk
    params = accounting.param_counts(tiny_model, chunked)
    per_pair = 2 * 4 * (16 + 16) * 4
    chunk_pairs = sum(100 + t + 1 for t in range(8))
    expected_flops = (8 + 2) * 2 * params.matmul + (chunk_pairs + 2 * 101) * per_pair
    assert accounting.flops_per_step(tiny_model, chunked, 3, 100) == expected_flops
    read = (108 + 2 * 101) * per_position  # the chunk's sequence reads 108 positions per layer, the others 101
    written = 10 * per_position
    weights_and_rows = accounting.bytes_per_step(tiny_model, decode, "float32", 3, 100) - 3 * 101 * per_position
    weights_and_rows -= 3 * per_position  # a decode step writes 3 tokens' K/V
    rows = (10 - 3) * tiny_model.d_model * 4  # 10 embedding rows looked up, not 3
    assert accounting.bytes_per_step(tiny_model, chunked, "float32", 3, 100) == weights_and_rows + rows + read + written
    budget = 2**22
    per_token = accounting.activation_bytes_per_sequence(tiny_model, decode, "float32", 107)  # one token over 108
    fixed = accounting.weight_bytes(tiny_model, chunked, "float32") + 7 * per_token
    expected_batch = (budget - fixed) // (108 * per_position + per_token)
    assert accounting.predicted_max_batch(tiny_model, chunked, "float32", 100, budget) == expected_batch
