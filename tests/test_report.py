"""attnbench report: REPORT.md tables and plots per target, CROSS_TARGET.md, and errors on bad input.

The inputs are golden result files in tests/data/report/: one 'cla-small' run on each of two CPU
targets (H64-MHA, GQA4, MQA, MHA-CLA2, MQA-CLA2 x batch 1, 8 x context 1024, 4096; one oom cell on
the 2-core target). The reports are rendered once per module, through the command line.
"""

from __future__ import annotations

import io
import re
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from harness.cli import main
from harness.errors import UserError
from harness.report import build_reports, load_results, plots
from harness.report.render import LoadedResult, render_cross_target, render_target
from harness.results.schema import RunResult
from harness.results.store import load_result, save_result

DATA = Path(__file__).parent / "data" / "report"
TWO_CORE = DATA / "cpu-amd-epyc-2c.json"
FOUR_CORE = DATA / "cpu-intel-xeon-4c.json"
NOT_A_RESULT = DATA / "not-a-result.json"
PLOT_SUFFIXES = (
    "latency-vs-context",
    "bandwidth-fraction",
    "memory-vs-batch",
    "max-batch-vs-context",
    "kv-bytes-vs-latency",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reports")
    assert main(["report", str(TWO_CORE), str(FOUR_CORE), "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def report(out: Path) -> str:
    return (out / "cpu-amd-epyc-2c" / "REPORT.md").read_text(encoding="utf-8")


def _section(report: str, title: str) -> str:
    """The text of one '### title' section, up to the next heading."""
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^#|\Z)", report, flags=re.S | re.M)
    assert match is not None, f"no section {title!r}"
    return match.group(1)


def _row(section: str, *cells: str) -> bool:
    """Whether a table row holds these cell texts in this order (tabulate pads with spaces)."""
    pattern = r"^\|\s*" + r"\s*\|\s*".join(re.escape(c) for c in cells) + r"\s*\|"
    return re.search(pattern, section, flags=re.M) is not None


def _without_metrics(path: Path) -> RunResult:
    """The golden result with its first two cells failed and the rest dropped: nothing to plot, fast to render."""
    result = load_result(path)
    failed = [c.model_copy(update={"status": "error", "error": "boom", "metrics": None}) for c in result.cells[:2]]
    return result.model_copy(update={"cells": failed})


def test_cli_prints_each_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "result.json"
    save_result(_without_metrics(TWO_CORE), source)
    assert main(["report", str(source), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'out' / 'cpu-amd-epyc-2c' / 'REPORT.md'}"]


def test_report_closes_with_the_environment_and_its_measured_peak_bandwidth(report: str) -> None:
    environment = report.split("\n## Environment\n")[1]
    assert "## Scenario" not in environment
    assert _row(environment, "CPU", "AMD EPYC 7B13")
    assert _row(environment, "CPU cores (logical)", "2")
    assert _row(environment, "Memory", "8.00 GiB")
    assert _row(environment, "torch", "2.13.0+cpu")
    assert _row(environment, "Measured peak bandwidth", "18.5 GB/s")
    assert _row(environment, "cpu_l3_cache_bytes", "32.00 MiB")


def test_report_shows_scenario_hash_commit_and_quick_flag(report: str) -> None:
    assert _row(report, "sha256", "`9b1e6d3c2a5f4e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d`")
    assert _row(report, "Git commit", "`3f2a9c1d0b8e7f6a5c4d3e2f1a0b9c8d7e6f5a4b` on main")
    assert _row(report, "Quick run", "no")
    assert "d_model 512, n_layers 4, d_ff 1376" in report


def test_report_explains_how_it_was_measured(report: str) -> None:
    text = _section(report, "How it was measured")
    assert "`time.perf_counter`" in text
    assert "cold samples flush the caches" in text
    assert "10 samples per cell" in text
    assert "divided by the warm median latency" in text
    assert "measured peak of 18.5 GB/s" in text


def test_decode_latency_table_shows_median_with_p10_p90_and_oom_cells(report: str) -> None:
    table = _section(report, "Decode latency")
    assert _row(table, "variant", "batch", "ctx 1024", "ctx 4096")
    assert _row(table, "H64-MHA", "1", "7.57 (7.39–7.72)", "12.0 (11.7–12.2)")
    assert _row(table, "H64-MHA", "8", "18.1 (17.7–18.3)", "oom")


def test_cold_latency_table_appears_when_cold_samples_exist(report: str) -> None:
    assert _row(_section(report, "Decode latency, cold caches"), "H64-MHA", "1", "8.88 (8.68–8.97)", "14.4 (14.1–14.5)")


def test_core_attention_latency_table_shows_sub_millisecond_medians(report: str) -> None:
    table = _section(report, "Core attention latency")
    assert _row(table, "H64-MQA", "1", "0.269 (0.263–0.273)", "0.882 (0.874–0.910)")


def test_bandwidth_table_shows_gbps_with_fraction_of_peak(report: str) -> None:
    assert _row(_section(report, "Achieved bandwidth"), "H64-MHA", "1", "11.1 (60%)", "11.2 (61%)")
    assert _row(_section(report, "Core attention bandwidth"), "H64-MQA", "1", "7.9 (42%)", "9.5 (52%)")


def test_peak_memory_table_shows_bytes_per_cell(report: str) -> None:
    assert _row(_section(report, "Peak memory"), "H64-MHA", "1", "108.75 MiB", "156.54 MiB")


def test_kv_cache_table_compares_measured_with_expected(report: str) -> None:
    assert _row(_section(report, "KV cache"), "H64-MQA-CLA2", "8", "8.01 MiB (= expected)", "32.01 MiB (= expected)")


def test_max_batch_table_shows_predicted_measured_and_error(report: str) -> None:
    table = _section(report, "Max batch under the budget")
    assert _row(table, "H64-MHA", "4096", "1.00 GiB", "14", "13", "+7.7%")
    assert _row(table, "H64-MQA-CLA2", "1024", "1.00 GiB", "871", "869", "+0.2%")


def test_failed_cells_are_listed_with_their_error(report: str) -> None:
    table = _section(report, "Cells that did not run")
    assert _row(
        table, "H64-MHA", "8", "4096", "float32", "sdpa", "oom",
        "CPU worker ran out of memory (RLIMIT_AS 1 GiB) while building the cache",
    )  # fmt: skip


def test_claims_section_shows_a_verdict_per_claim(tmp_path: Path) -> None:
    from helpers_results import with_evidence

    report = str(render_target([LoadedResult(TWO_CORE, with_evidence(load_result(TWO_CORE)))], tmp_path)["REPORT.md"])
    assert "Missing evidence" not in report
    table = _section(report, "Claims check")
    assert _row(
        table,
        "KV cache shrinks by the sharing factor",
        "H64-MQA-CLA2 vs H64-MQA",
        "✅ holds",
        "expected 4/2 producer layers = 2.000 (s=2); measured 2.000 in 4 cells",
    )
    assert "❌" not in table


def test_a_result_without_checks_stability_or_host_load_gets_a_banner_and_no_firm_verdict(report: str) -> None:
    banner = report.split("### Verdict")[0]
    assert "**Missing evidence.**" in banner
    assert all(f"`{field}`" in banner for field in ("checks", "stability", "host_load"))
    claims = _section(report, "Claims check")
    assert _row(claims, "KV cache shrinks by the sharing factor", "H64-MQA-CLA2 vs H64-MQA", "❔ inconclusive")
    assert "✅" not in claims and "❌" not in claims
    verdict = _section(report, "Verdict")
    assert "decode latency not distinguishable: unchecked (the result has no checks, stability, host_load)" in verdict
    assert "faster" not in verdict.split("**Context")[1]


def test_report_names_the_attnbench_commit_that_rendered_it(report: str) -> None:
    from harness.report import attnbench_commit

    commit = attnbench_commit().short
    assert commit is not None
    assert re.search(rf"^Rendered by attnbench at commit `{commit}`", report, flags=re.M)


def test_report_writes_every_plot_as_a_valid_png(out: Path) -> None:
    for suffix in PLOT_SUFFIXES:
        path = out / "cpu-amd-epyc-2c" / f"cla-small-{suffix}.png"
        assert path.read_bytes().startswith(PNG_SIGNATURE), path
        with Image.open(path) as image:
            image.verify()


def test_report_links_each_plot_relative_to_itself(report: str, out: Path) -> None:
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(links) == sorted(f"cla-small-{suffix}.png" for suffix in PLOT_SUFFIXES)
    assert all((out / "cpu-amd-epyc-2c" / link).is_file() for link in links)


def test_report_leaves_no_temporary_files(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_cross_target_file_shows_latency_and_bandwidth_side_by_side(out: Path) -> None:
    text = (out / "CROSS_TARGET.md").read_text(encoding="utf-8")
    assert _row(text, "variant", "batch", "context", "cpu-amd-epyc-2c", "cpu-intel-xeon-4c")
    assert _row(text, "H64-MHA", "1", "1024", "7.57", "4.66", "×0.62")
    assert _row(text, "H64-MHA", "8", "4096", "oom", "31.3", "—")
    assert _row(text, "H64-MHA", "1", "1024", "60%", "58%")


def test_cross_target_file_is_not_rendered_for_a_single_target() -> None:
    assert render_cross_target([LoadedResult(TWO_CORE, load_result(TWO_CORE))]) is None


def test_one_target_with_two_scenarios_gets_one_report_with_a_section_each(tmp_path: Path) -> None:
    first = _without_metrics(TWO_CORE)
    second = first.model_copy(update={"scenario": first.scenario.model_copy(update={"name": "cla-long"})})
    files = render_target([LoadedResult(TWO_CORE, first), LoadedResult(TWO_CORE, second)], tmp_path)
    text = files["REPORT.md"]
    assert isinstance(text, str)
    assert text.count("## Scenario `cla-long`") == 1
    assert text.count("## Scenario `cla-small`") == 1
    assert list(files) == ["REPORT.md"]


def test_a_folder_also_gives_the_quality_report_of_its_newest_quality_result(tmp_path: Path) -> None:
    from test_quality_claims import conversion, result

    from harness.results.quality import save_quality

    folder = tmp_path / "results" / "cpu-test"
    folder.mkdir(parents=True)
    shutil.copy(TWO_CORE, tmp_path / "results" / "20261124T061500Z_3f2a9c1.json")
    older = result([2.0, 2.1, 1.9], [2.0, 2.1, 1.9])
    newer = result([2.0, 2.1, 1.9], [2.0, 2.1, 1.9], [conversion([3.0, 3.1, 2.9], [2.6, 2.7, 2.5])])
    save_quality(older, folder / "quality_20261101T000000Z_0000000.json")
    save_quality(newer, folder / "quality_20261102T000000Z_0000000.json")
    written = build_reports([tmp_path / "results"], tmp_path / "results")
    quality = tmp_path / "results" / "cpu-test" / "QUALITY-t.md"
    assert quality in written
    text = quality.read_text(encoding="utf-8")
    assert "[quality_20261102T000000Z_0000000.json](quality_20261102T000000Z_0000000.json)" in text
    assert "An uptrained conversion reaches the loss of training the variant from scratch" in text


def test_a_non_result_file_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(NOT_A_RESULT))):
        build_reports([TWO_CORE, NOT_A_RESULT], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_gives_its_newest_result_per_target_and_scenario(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "cpu-amd-epyc-2c"
    folder.mkdir(parents=True)
    shutil.copy(TWO_CORE, folder / "20261123T061500Z_0000000.json")
    shutil.copy(TWO_CORE, folder / "20261124T061500Z_3f2a9c1.json")
    shutil.copy(FOUR_CORE, tmp_path / "results" / "20261124T071500Z_3f2a9c1.json")
    loaded = load_results([tmp_path / "results"])
    assert sorted(item.path.name for item in loaded) == [
        "20261124T061500Z_3f2a9c1.json",
        "20261124T071500Z_3f2a9c1.json",
    ]


def test_an_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no result files found"):
        load_results([tmp_path])


def test_a_missing_path_is_a_user_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'nowhere'}: no such file or folder")):
        load_results([tmp_path / "nowhere"])


def _two_backends_at_one_context() -> RunResult:
    """The 2-core fixture's cells at its longest context, each also as backend "native", 10% faster."""
    result = load_result(TWO_CORE)
    longest = max(cell.context_len for cell in result.cells)
    cells = []
    for cell in result.cells:
        if cell.context_len != longest or cell.metrics is None:
            continue
        fraction = cell.metrics.attention_bandwidth_fraction
        assert fraction is not None
        faster = cell.metrics.model_copy(update={"attention_bandwidth_fraction": fraction * 1.1})
        cells += [cell, cell.model_copy(update={"backend": "native", "backend_used": "native", "metrics": faster})]
    return result.model_copy(update={"cells": cells})


def test_backend_plot_ranks_backends_and_replaces_the_line_plot_at_a_single_context() -> None:
    result = _two_backends_at_one_context()
    palette = plots.series_palette(result)
    png = plots.backend_bandwidth(result, palette)
    assert png is not None and png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    assert plots.bandwidth_fraction(result, palette) is None  # one context: no lines to draw


def test_backend_plot_is_left_out_for_a_single_backend() -> None:
    result = load_result(TWO_CORE)
    assert plots.backend_bandwidth(result, plots.series_palette(result)) is None


def test_cli_writes_the_report_beside_a_results_folder_given_without_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "elsewhere" / "cpu-amd-epyc-2c"
    folder.mkdir(parents=True)
    save_result(_without_metrics(TWO_CORE), folder / "result.json")
    monkeypatch.chdir(tmp_path)  # a results/ folder here must stay untouched
    assert main(["report", str(tmp_path / "elsewhere")]) == 0
    assert (folder / "REPORT.md").is_file()
    assert not (tmp_path / "results").exists()


def test_names_with_characters_the_font_lacks_render_without_a_warning(tmp_path: Path) -> None:
    result = load_result(TWO_CORE)
    names = {"H64-MHA": "H64-MHA \x1b\u0378\U000fed23", "H64-MQA": "H64-MQA " + "\U0001b493" * 40}
    cells = [c.model_copy(update={"variant": names.get(c.variant, c.variant)}) for c in result.cells]
    odd = result.model_copy(update={"cells": cells})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = render_target([LoadedResult(TWO_CORE, odd)], tmp_path)
    assert {f"cla-small-{suffix}.png" for suffix in PLOT_SUFFIXES} <= set(files)


def test_how_measured_says_how_the_rounds_warmed_up_how_tight_they_got_and_the_machines_noise_floor() -> None:
    from helpers_results import make_cell, make_run

    from harness.report.render import how_measured
    from harness.results.schema import HostLoad

    cells = []
    for steady, width, reference_s in ((True, 0.01, 0.0010), (False, 0.05, 0.0011)):
        cell = make_cell()
        assert cell.metrics is not None
        decode = cell.metrics.decode_latency_s
        assert decode is not None
        decode = decode.model_copy(
            update={"process_warmup_s": [0.3], "process_warmup_steady": [steady], "process_ci_half_widths": [width]}
        )
        load = HostLoad(wall_s=1.0, other_cpu_s=0.0, steal_s=0.0, cores=2, reference_s=reference_s)
        metrics = cell.metrics.model_copy(update={"decode_latency_s": decode})
        cells.append(cell.model_copy(update={"metrics": metrics, "host_load": [load]}))
    run = make_run(cells)
    run.scenario.measure["target_ci"] = 0.02
    text = how_measured(run)
    assert "1 of 2 rounds got there, in 0.30–0.30 s" in text  # steady warm-up: one of the two
    assert "known within ±2% (95% interval): 1 of 2 rounds got there" in text
    assert (
        "bare reference loop (1.05 ms) moved by 7.6% (p10-p90) across 2 measuring processes" in text
    )  # (1.09 - 1.01) / 1.05


def test_the_report_names_the_sdpa_kernel_each_variant_ran(tmp_path: Path) -> None:
    result = load_result(TWO_CORE)
    kernels = {"H64-MQA": ("cudnn", False), "H64-GQA4": ("math", True)}
    cells = []
    for c in result.cells:
        if c.metrics is not None and c.variant in kernels:
            kernel, copied = kernels[c.variant]
            c = c.model_copy(
                update={"metrics": c.metrics.model_copy(update={"sdpa_kernel": kernel, "sdpa_kv_copied": copied})}
            )
        cells.append(c)
    files = render_target([LoadedResult(TWO_CORE, result.model_copy(update={"cells": cells}))], tmp_path)
    report = str(files["REPORT.md"])
    section = report.split("### SDPA kernels", 1)[1].split("###", 1)[0]
    rows = {tuple(part.strip() for part in line.strip("|").split("|")) for line in section.splitlines() if "|" in line}
    dtype = next(c.dtype for c in result.cells)
    assert ("H64-MQA", dtype, "cudnn", "read in place") in rows
    assert ("H64-GQA4", dtype, "math", "repeated per query head") in rows


def test_a_history_figure_beside_the_report_is_shown_and_none_is_not_invented(tmp_path: Path) -> None:
    from harness.history import figure_name

    loaded = [LoadedResult(TWO_CORE, _without_metrics(TWO_CORE))]
    name = load_result(TWO_CORE).scenario.name
    assert "History across commits" not in str(render_target(loaded, tmp_path)["REPORT.md"])
    (tmp_path / figure_name(name)).write_bytes(PNG_SIGNATURE)
    report = str(render_target(loaded, tmp_path)["REPORT.md"])
    assert f"]({figure_name(name)})" in _section(report, "History across commits")


def test_claims_the_run_cannot_test_are_listed_once_below_the_verdicts(report: str) -> None:
    claims = _section(report, "Claims check")
    table, _, below = claims.partition("➖ not testable in this run:")
    assert "not testable |" not in table  # no table row is only "not testable"
    assert "- CLA cuts training K/V activations by the sharing factor (" in below
    assert below.count("- CLA cuts training K/V activations by the sharing factor") == 1
