"""A run over MLA, windowed and 8-bit variants: what is measured, what a backend cannot run, what is recorded."""

from __future__ import annotations

import pytest

from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.run.runner import Runner, RunOptions

KINDS = """
name = "kinds"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-GQA2-SWA8-1:1"
[[variant]]
name = "latent"
attention = "mla"
kv_lora_rank = 32
qk_rope_head_dim = 8
qk_nope_head_dim = 16
n_heads = 4
[[variant]]
name = "H16-MQA-KV8"
[sweep]
batch_size = [2]
context_len = [32]
backend = ["grouped", "sdpa", "naive"]
[measure]
metrics = ["decode", "attention", "memory"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
cold = false
"""


@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, int]:
    folder = tmp_path_factory.mktemp("kinds")
    path = folder / "kinds.toml"
    path.write_text(KINDS)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    try:
        outcome = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=folder / "out")).run()
    finally:
        mp.undo()
    return load_result(outcome.path), outcome.exit_code


def test_cells_a_backend_cannot_run_are_recorded_as_unsupported_with_the_reason(kinds_run: tuple[RunResult, int]):
    result, exit_code = kinds_run
    status = {(c.variant, c.backend): (c.status, c.error) for c in result.cells}
    assert status[("H16-MQA-KV8", "sdpa")][0] == "unsupported"
    assert "cannot read a float8 KV cache" in str(status[("H16-MQA-KV8", "sdpa")][1])
    assert status[("H16-GQA2-SWA8-1:1", "naive")][0] == "unsupported"
    assert "decompresses an MLA latent" in str(status[("H16-GQA2-SWA8-1:1", "naive")][1])
    measured = {key for key, (state, _) in status.items() if state == "ok"}
    assert measured == {
        ("H16-GQA2-SWA8-1:1", "grouped"),
        ("H16-GQA2-SWA8-1:1", "sdpa"),
        ("latent", "grouped"),
        ("latent", "sdpa"),
        ("latent", "naive"),
        ("H16-MQA-KV8", "grouped"),
    }
    assert exit_code == 0  # an unsupported cell is an outcome, not a failure


def test_every_measured_cache_holds_exactly_the_accounted_bytes(kinds_run: tuple[RunResult, int]):
    result, _ = kinds_run
    for cell in result.cells:
        assert cell.metrics is not None
        if cell.status == "ok":
            assert cell.metrics.kv_cache_bytes == cell.metrics.kv_cache_bytes_expected, cell.variant
            assert cell.metrics.decode_latency_s is not None and cell.metrics.attention_latency_s is not None


def test_cells_record_what_their_variant_caches(kinds_run: tuple[RunResult, int]):
    result, _ = kinds_run
    cells = {c.variant: c for c in result.cells}
    windowed, latent, fp8 = cells["H16-GQA2-SWA8-1:1"], cells["latent"], cells["H16-MQA-KV8"]
    assert (windowed.attention, windowed.layer_windows, windowed.spelling) == (
        "gqa",
        [8, None, 8, None],
        "H16-GQA2-SWA8-1:1",
    )
    assert windowed.kv_bytes_per_sequence == 2 * (8 + 33) * 2 * 2 * 16 * 4  # two local, two global layers
    assert latent.attention == "mla" and latent.mla is not None and latent.mla["kv_lora_rank"] == 32
    assert latent.kv_bytes_per_token == 4 * (32 + 8) * 4
    assert (fp8.kv_dtype, fp8.kv_scale, fp8.kv_bytes_per_token) == ("float8_e4m3fn", "tensor", 4 * 2 * 16)
