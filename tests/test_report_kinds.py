"""Reports over the cache-saving kinds: the ranked KV-savings section, and claims that pair like with like."""

from __future__ import annotations

from pathlib import Path

from helpers_results import lognormal_samples, make_cell, make_run

from harness.report.claims import check_attention_cut_by_kv_heads, check_kv_cache, cla_pairs, variant_shapes
from harness.report.render import LoadedResult, render_target
from harness.report.savings import rows_at, savings_section
from harness.results.schema import CellResult, RunResult


def cell(variant: str, context: int, per_token: int, held: int | None = None, **fields: object) -> CellResult:
    """A measured cell whose cache holds ``held`` positions (default context + 1) of ``per_token`` bytes."""
    made = make_cell(
        variant, batch_size=1, context_len=context, decode_samples=lognormal_samples(0.002 * per_token / 1e4)
    )
    per_sequence = per_token * (held if held is not None else context + 1)
    return made.model_copy(update={"kv_bytes_per_token": per_token, "kv_bytes_per_sequence": per_sequence, **fields})


def kinds_run() -> RunResult:
    cells = []
    for context in (4096, 32768):
        cells += [
            cell("H128-GQA8", context, 131_072, attention="gqa"),
            cell("H128-GQA8-SWA4096", context, 131_072, held=min(context + 1, 4096), layer_windows=[4096] * 32),
            cell("H128-GQA8-KV8", context, 65_536, kv_dtype="float8_e4m3fn", kv_scale="tensor"),
            cell("MLA512-R64", context, 36_864, attention="mla", mla={"kv_lora_rank": 512}),
        ]
    return make_run(cells)


def test_the_savings_section_ranks_variants_by_their_cache_per_sequence_at_each_context():
    result = kinds_run()
    # at 4096 the window holds 4096 of 4097 positions; at 32768 it holds 4096 of 32769
    at_4k, at_32k = rows_at(result, 4096), rows_at(result, 32768)
    assert [row.variant for row in at_4k] == ["MLA512-R64", "H128-GQA8-KV8", "H128-GQA8-SWA4096", "H128-GQA8"]
    assert [row.variant for row in at_32k] == ["H128-GQA8-SWA4096", "MLA512-R64", "H128-GQA8-KV8", "H128-GQA8"]
    assert at_32k[0].kv_bytes_per_token == 131_072 * 4096 / 32769


def test_the_savings_section_shows_bytes_per_token_share_of_the_largest_and_decode_latency():
    text = "\n".join(savings_section(kinds_run()))
    assert "### KV-cache savings, ranked" in text and "Context 32768:" in text
    swa_row = next(line for line in text.splitlines() if "| H128-GQA8-SWA4096" in line and "12.5%" in line)
    assert "16,384" in swa_row  # 131,072 · 4096 / 32,769 bytes per cached token, rounded
    assert "decode ms, b1" in text


def test_a_run_of_one_variant_has_no_savings_section():
    assert savings_section(make_run([cell("H128-GQA8", 4096, 131_072)])) == []


def test_cells_a_backend_could_not_run_say_so_in_the_ranking():
    result = kinds_run()
    skipped = result.cells[2].model_copy(
        update={"status": "unsupported", "error": "sdpa cannot read float8", "metrics": None}
    )
    result = result.model_copy(update={"cells": [*result.cells[:2], skipped, *result.cells[3:]]})
    assert "| unsupported" in "\n".join(savings_section(result))


def test_the_report_renders_the_savings_section(tmp_path: Path):
    files = render_target([LoadedResult(tmp_path / "r.json", kinds_run())], tmp_path)
    assert "### KV-cache savings, ranked" in str(files["REPORT.md"])


def shapes_run() -> RunResult:
    """Full and CLA2 pairs of four kinds, at one context: MHA, MQA, windowed MHA, 8-bit MHA, and MLA."""

    def pair(name: str, n_kv_heads: int, **fields: object) -> list[CellResult]:
        out = []
        for suffix, kv_layers, p in (("", [0, 1, 2, 3], 4), ("-CLA2", [0, 0, 2, 2], 2)):
            made = make_cell(name + suffix, batch_size=1, context_len=1024, kv_cache_bytes=1000 * p * n_kv_heads)
            out.append(
                made.model_copy(update={"n_kv_heads": n_kv_heads, "kv_layers": kv_layers, "n_kv_layers": p, **fields})
            )
        return out

    return make_run(
        pair("H128-MHA", 8)
        + pair("H128-MQA", 1)
        + pair("H128-MHA-SWA64", 8, layer_windows=[64] * 4)
        + pair("H128-MHA-KV8", 8, kv_dtype="float8_e4m3fn", kv_scale="tensor")
        + pair("MLA512-R64", 1, attention="mla", mla={"kv_lora_rank": 512})
    )


def test_cla_variants_pair_with_the_base_that_caches_the_same_kind():
    pairs, unmatched = cla_pairs(variant_shapes(shapes_run()))
    assert {(p.subject.name, p.reference.name) for p in pairs} == {
        ("H128-MHA-CLA2", "H128-MHA"),
        ("H128-MQA-CLA2", "H128-MQA"),
        ("H128-MHA-SWA64-CLA2", "H128-MHA-SWA64"),
        ("H128-MHA-KV8-CLA2", "H128-MHA-KV8"),
        ("MLA512-R64-CLA2", "MLA512-R64"),
    }
    assert unmatched == []
    assert all(check.verdict == "holds" for check in check_kv_cache(shapes_run()))


def test_mla_is_not_paired_with_mha_as_if_it_were_mqa():
    checks = check_attention_cut_by_kv_heads(shapes_run())
    assert not any("MLA" in check.comparison for check in checks)
    assert any(check.comparison.startswith("H128-MQA vs H128-MHA") for check in checks)


def test_a_cla_variant_with_local_and_global_layers_is_left_out_of_the_producer_ratio_claim():
    run = shapes_run()
    mixed = [c.model_copy(update={"layer_windows": [64, 64, None, None]}) for c in run.cells if "SWA64" in c.variant]
    run = run.model_copy(update={"cells": [c for c in run.cells if "SWA64" not in c.variant] + mixed})
    pairs, unmatched = cla_pairs(variant_shapes(run))
    assert "H128-MHA-SWA64-CLA2" not in {p.subject.name for p in pairs} | {u.name for u in unmatched}


def test_the_kv_bytes_against_latency_plot_places_a_windowed_cache_by_its_bytes_at_that_context():
    from harness.report.plots import cell_frame

    frame = cell_frame(kinds_run()).set_index(["variant", "context_len"])
    assert frame.loc[("H128-GQA8-SWA4096", 32768), "kv_bytes_per_token"] == 131_072 * 4096 / 32769
    assert frame.loc[("H128-GQA8", 32768), "kv_bytes_per_token"] == 131_072
