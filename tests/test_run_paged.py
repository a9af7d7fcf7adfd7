"""A run with sweep.page_size and sweep.lengths: each variant in each cache layout and length mix, what is
measured, recorded and reported."""

from __future__ import annotations

import pytest

from harness.model import native
from harness.report import paging
from harness.report.paging import paging_section
from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.run.runner import Runner, RunOptions
from harness.scenario.load import parse_scenario

PAGED = """
name = "paged"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MQA-CLA2"
[[variant]]
name = "latent"
attention = "mla"
kv_lora_rank = 32
qk_rope_head_dim = 8
qk_nope_head_dim = 16
n_heads = 4
[sweep]
batch_size = [3]
context_len = [30]
backend = ["eager", "sdpa"]
page_size = ["contiguous", 4]
lengths = ["same", [1, 0.5, 0.25]]
q_len = [1, 2]
[measure]
metrics = ["decode", "memory"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
cold = false
"""


@pytest.fixture(scope="module")
def paged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, int]:
    folder = tmp_path_factory.mktemp("paged")
    path = folder / "paged.toml"
    path.write_text(PAGED)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    try:
        outcome = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=folder / "out")).run()
    finally:
        mp.undo()
    return load_result(outcome.path), outcome.exit_code


def test_each_variant_is_measured_in_each_layout_and_paged_sdpa_is_unsupported(paged_run: tuple[RunResult, int]):
    result, exit_code = paged_run
    status = {(c.variant, c.backend): c for c in result.cells}
    assert len(status) == 32
    for name in ("H16-MQA-CLA2", "latent"):
        assert status[(name, "eager")].status == "ok" and status[(name, "eager")].page_size is None
        assert status[(f"{name}-P4", "eager")].status == "ok"
        assert status[(f"{name}-P4", "eager")].page_size == 4
        paged_sdpa = status[(f"{name}-P4", "sdpa")]
        assert paged_sdpa.status == "unsupported" and "contiguous KV cache only" in str(paged_sdpa.error)
    assert status[("H16-MQA-CLA2-P4", "eager")].spelling == "H16-MQA-CLA2-P4"
    assert exit_code == 0


def test_every_paged_cache_holds_the_accounted_bytes_with_its_last_page_waste(paged_run: tuple[RunResult, int]):
    result, _ = paged_run
    cells = {(c.variant, c.backend): c for c in result.cells}
    for name in ("H16-MQA-CLA2", "latent"):
        paged, contiguous = cells[(f"{name}-P4", "eager")], cells[(name, "eager")]
        assert paged.metrics is not None and contiguous.metrics is not None
        assert paged.metrics.kv_cache_bytes == paged.metrics.kv_cache_bytes_expected
        assert "kv_cache_as_accounted" not in paged.checks_failed
        assert paged.metrics.kv_cache_bytes is not None and contiguous.metrics.kv_cache_bytes is not None
        assert paged.metrics.kv_cache_bytes > contiguous.metrics.kv_cache_bytes  # 31 positions in 8 pages of 4
    mqa = cells[("H16-MQA-CLA2-P4", "eager")]
    assert mqa.kv_bytes_per_sequence == 2 * (8 * 4 * 2 * 16 * 4 + 8 * 8)  # 2 producers: 8 pages and 8 entries


def test_a_ragged_batch_records_its_lengths_and_holds_only_its_sequences_pages(paged_run: tuple[RunResult, int]):
    result, _ = paged_run
    cells = {(c.variant, c.backend): c for c in result.cells}
    ragged, uniform = cells[("H16-MQA-CLA2-fixed(1,0.5,0.25)-P4", "eager")], cells[("H16-MQA-CLA2-P4", "eager")]
    assert ragged.status == "ok" and (ragged.length_mix, ragged.context_lens) == ("fixed(1,0.5,0.25)", [30, 15, 8])
    assert ragged.metrics is not None and uniform.metrics is not None
    assert ragged.metrics.kv_cache_bytes == ragged.metrics.kv_cache_bytes_expected
    # per producer: pages of 4 for 31, 16 and 9 positions (8 + 4 + 3), and 3 table rows of 8 entries
    assert ragged.metrics.kv_cache_bytes == 2 * ((8 + 4 + 3) * 4 * 2 * 16 * 4 + 3 * 8 * 8)
    assert ragged.metrics.bytes_per_step < uniform.metrics.bytes_per_step
    static = cells[("H16-MQA-CLA2-fixed(1,0.5,0.25)", "eager")]
    assert static.metrics is not None and static.metrics.kv_cache_bytes == 2 * 3 * 31 * 2 * 16 * 4  # a slot each
    assert cells[("latent-fixed(1,0.5,0.25)", "sdpa")].status == "unsupported"
    section = "\n".join(paging.ragged_section(result))
    assert "| H16-MQA-CLA2-fixed(1,0.5,0.25)-P4 " in section and "| 18 " in section  # mean of 30, 15, 8 is 17.7


def test_the_report_sets_each_paged_cell_beside_its_contiguous_one(paged_run: tuple[RunResult, int]):
    result, _ = paged_run
    section = "\n".join(paging_section(result))
    assert "Paged against contiguous caches" in section
    row = next(line for line in section.splitlines() if line.startswith("| H16-MQA-CLA2-P4 ") and "eager" in line)
    assert "+4.84%" in row  # 32 positions held for 31, plus 8 table entries: 4160 B against 3968 B per producer
    sdpa = next(line for line in section.splitlines() if line.startswith("| H16-MQA-CLA2-P4 ") and "| sdpa " in line)
    cells = [part.strip() for part in sdpa.strip("|").split("|")]
    assert cells[-3:] != ["unsupported", "unsupported", "—"] and cells[-2] == "unsupported"


def test_page_size_rejects_repeats_and_non_positive_sizes() -> None:
    base = {
        "name": "x",
        "model": {"d_model": 64, "n_layers": 2, "d_ff": 64, "vocab_size": 97},
        "variant": [{"name": "H16-MQA"}],
    }
    for layouts, reason in (([16, 16], "repeats"), ([0], "greater than 0"), (["paged"], "contiguous")):
        sweep = {"batch_size": [1], "context_len": [8], "page_size": layouts}
        with pytest.raises(Exception, match=reason):
            parse_scenario(base | {"sweep": sweep}, "x.toml")


@pytest.mark.skipif(not native.available(), reason="no C++ compiler for the native kernel")
def test_native_reads_pages_where_it_reads_the_contiguous_cache() -> None:
    from harness.backend_support import unsupported_reason
    from harness.scenario.serving import with_layout
    from harness.variants import Variant, sharing_map

    variant = with_layout(Variant("H16-GQA2", 16, 4, 2, sharing_map(4, 1)), 16)
    assert variant.name == "H16-GQA2-P16" and unsupported_reason("native", variant, "cpu") is None


def test_a_two_token_step_moves_the_cache_once_and_the_report_shows_it_below_the_one_token_step(
    paged_run: tuple[RunResult, int],
):
    result, _ = paged_run
    cells = {(c.variant, c.backend): c for c in result.cells}
    two, one = cells[("H16-MQA-CLA2-P4-T2", "eager")], cells[("H16-MQA-CLA2-P4", "eager")]
    assert two.status == "ok" and two.q_len == 2 and one.q_len is None
    assert two.metrics is not None and one.metrics is not None
    assert two.metrics.kv_cache_bytes == two.metrics.kv_cache_bytes_expected
    assert one.metrics.flops_per_step < two.metrics.flops_per_step < 2.1 * one.metrics.flops_per_step
    assert two.metrics.bytes_per_step < 1.1 * one.metrics.bytes_per_step  # weights and cache read once either way
    ragged_two = cells[("H16-MQA-CLA2-fixed(1,0.5,0.25)-T2", "eager")]
    assert ragged_two.status == "unsupported" and "one new token per sequence" in str(ragged_two.error)
    section = "\n".join(paging.multi_token_section(result))
    rows = [line for line in section.splitlines() if line.startswith("| H16-MQA-CLA2-P4")]
    assert [row.split("|")[2].strip() for row in rows[:2]] == ["1", "2"]


def test_the_roofline_section_gives_both_fractions_and_each_crossover_beside_its_prediction(
    paged_run: tuple[RunResult, int],
):
    from harness.report.roofline import flops_fraction, matmul_peak_tflops, roofline_section

    result, _ = paged_run
    assert matmul_peak_tflops(result, "float32") is not None  # probed once per target, kept in the environment
    cell = next(c for c in result.cells if (c.variant, c.backend) == ("H16-MQA-CLA2-P4-T2", "eager"))
    fraction = flops_fraction(result, cell)
    assert fraction is not None and fraction > 0
    lines = "\n".join(roofline_section(result)).splitlines()
    crossover = [line.split("|") for line in lines if line.startswith("| H16-MQA-CLA2-P4 ") and "1, 2" in line]
    assert len(crossover) == 1  # the eager one-token paged cell with its two-token step
    predicted, measured = crossover[0][5].strip(), crossover[0][6].strip()
    assert predicted.lstrip("> ").isdigit() and measured.lstrip("> ").isdigit()


def test_a_paged_step_of_several_tokens_is_set_beside_the_contiguous_step_of_as_many(
    paged_run: tuple[RunResult, int],
):
    result, _ = paged_run
    cells = {(c.variant, c.backend): c for c in result.cells}
    partner = paging.contiguous_partner(cells[("H16-MQA-CLA2-P4-T2", "eager")], result.cells)
    assert partner is not None and partner.variant == "H16-MQA-CLA2-T2"
    ragged = paging.contiguous_partner(cells[("H16-MQA-CLA2-fixed(1,0.5,0.25)-P4", "eager")], result.cells)
    assert ragged is not None and ragged.variant == "H16-MQA-CLA2-fixed(1,0.5,0.25)"
