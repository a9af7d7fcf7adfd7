"""Result files are untrusted input: every reader checks them whole and names each problem on one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_results import make_cell, make_run

from harness.cli import main
from harness.errors import UserError
from harness.predict.calibration import CALIBRATION_NAME, load_calibration
from harness.results import gitrev
from harness.results.quality import QUALITY_PREFIX, load_quality
from harness.results.store import load_result, parse_result
from harness.run import runfiles
from harness.scenario import load_scenario

REPO = Path(__file__).resolve().parents[1]
Edit = Callable[[dict[str, Any]], None]


def valid_data() -> dict[str, Any]:
    """A valid result file as parsed JSON: three ok cells and one that ran out of memory."""
    run = make_run(
        [
            make_cell("H128-MHA"),
            make_cell("H128-MQA"),
            make_cell("H128-MQA-CLA2", decode_cold_samples=[0.011, 0.012, 0.013, 0.0125, 0.0115]),
            make_cell("H128-GQA4", status="oom"),
        ]
    )
    data: dict[str, Any] = json.loads(run.model_dump_json())
    return data


def write(tmp_path: Path, data: dict[str, Any], name: str = "result.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def problems_of(data: dict[str, Any]) -> list[str]:
    """The lines a reader reports for ``data`` (none when it is valid)."""
    try:
        parse_result(json.dumps(data), "r.json")
    except UserError as exc:
        return [str(p) for p in exc.problems]
    return []


def edited(edit: Edit) -> dict[str, Any]:
    data = valid_data()
    edit(data)
    return data


def decode(data: dict[str, Any], cell: int = 0) -> dict[str, Any]:
    summary: dict[str, Any] = data["cells"][cell]["metrics"]["decode_latency_s"]
    return summary


def test_a_result_written_by_the_harness_passes_every_check() -> None:
    assert problems_of(valid_data()) == []


@pytest.mark.parametrize("path", sorted((REPO / "results").rglob("*.json")), ids=lambda p: p.name)
def test_every_committed_result_file_passes_every_check(path: Path) -> None:
    # quality results (attnbench train) and cost-model calibrations have their own schema and reader
    if path.name == CALIBRATION_NAME:
        load_calibration(path)
    else:
        (load_quality if path.name.startswith(QUALITY_PREFIX) else load_result)(path)


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (
            lambda d: d["cells"][0].update(metrics=None),
            "r.json: cells[0].metrics: an ok cell has no metrics",
        ),
        (
            lambda d: d["cells"][1]["metrics"].update(peak_memory_bytes=-5),
            "r.json: cells[1].metrics.peak_memory_bytes: Input should be greater than or equal to 0 (got -5)",
        ),
        (
            lambda d: d["cells"][0].update(batch_size=0),
            "r.json: cells[0].batch_size: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            lambda d: d["cells"][0].update(batch_size="8"),
            "r.json: cells[0].batch_size: Input should be a valid integer (got '8')",
        ),
        (
            lambda d: d["cells"][0]["metrics"].update(kv_cache_bytes=8.5),
            "r.json: cells[0].metrics.kv_cache_bytes: Input should be a valid integer (got 8.5)",
        ),
        (
            lambda d: d["cells"][0].update(params_total=True),
            "r.json: cells[0].params_total: Input should be a valid integer (got True)",
        ),
        (
            lambda d: d["cells"][0]["metrics"].update(bytes_per_step=2**63),
            "r.json: cells[0].metrics.bytes_per_step: Input should be less than or equal to 9223372036854775807 "
            "(got 9223372036854775808)",
        ),
        (
            lambda d: decode(d)["samples"].__setitem__(3, -0.01),
            "r.json: cells[0].metrics.decode_latency_s.samples[3]: Input should be greater than 0 (got -0.01)",
        ),
        (
            lambda d: decode(d).update(samples=[]),
            "r.json: cells[0].metrics.decode_latency_s.samples: List should have at least 1 item after validation, "
            "not 0",
        ),
        (
            lambda d: d["cells"][0]["metrics"].update(bandwidth_gbps=math.inf),
            "r.json: cells[0].metrics.bandwidth_gbps: Input should be a finite number (got inf)",
        ),
        (
            lambda d: d["cells"][0].update(status="fine"),
            "r.json: cells[0].status: Input should be 'ok', 'oom', 'error', 'timeout', 'unsupported' or 'killed' "
            "(got 'fine')",
        ),
        (
            lambda d: d["cells"][0].pop("kv_layers"),
            "r.json: cells[0].kv_layers: required field is missing",
        ),
        (
            lambda d: d["cells"][0].update(colour="red"),
            "r.json: cells[0].colour: unknown key",
        ),
    ],
    ids=[
        "ok-without-metrics",
        "negative-bytes",
        "zero-batch",
        "count-as-string",
        "count-as-float",
        "count-as-bool",
        "count-beyond-64-bits",
        "negative-sample",
        "no-samples",
        "infinite-bandwidth",
        "unknown-status",
        "missing-field",
        "unknown-field",
    ],
)
def test_a_bad_field_is_named_by_file_dotted_path_and_reason(edit: Edit, line: str) -> None:
    assert problems_of(edited(edit)) == [line]


@pytest.mark.parametrize(
    ("token", "read_as"), [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e999", "inf")]
)
def test_non_finite_latencies_are_refused_however_json_spells_them(token: str, read_as: str) -> None:
    data = valid_data()
    decode(data)["median"] = 12345.678
    text = json.dumps(data).replace("12345.678", token)
    with pytest.raises(UserError) as info:
        parse_result(text, "r.json")
    assert str(info.value) == (
        f"r.json: cells[0].metrics.decode_latency_s.median: Input should be a finite number (got {read_as})"
    )


def test_numbers_anywhere_in_the_file_are_finite_and_fit_64_bits_even_where_the_schema_is_open() -> None:
    def open_tables(d: dict[str, Any]) -> None:
        d["environment"]["memory_total_bytes"] = 10**30
        d["scenario"]["measure"]["warmup_s"] = math.nan

    assert problems_of(edited(open_tables)) == [
        "r.json: environment.memory_total_bytes: Input should be a whole number within 64 bits (got one of 31 digits)",
        "r.json: scenario.measure.warmup_s: Input should be a finite number (got nan)",
    ]


def test_text_with_a_lone_surrogate_is_refused_in_a_value_or_a_key() -> None:
    def surrogates(d: dict[str, Any]) -> None:
        d["cells"][0]["variant"] = "H128\ud800"
        d["environment"]["\udfff"] = 1

    assert problems_of(edited(surrogates)) == [
        "r.json: environment: the key holds a lone surrogate, not a character",
        "r.json: cells[0].variant: Input holds a lone surrogate, not a character",
    ]


def test_a_median_that_does_not_follow_from_the_samples_is_refused() -> None:
    def nudge(d: dict[str, Any]) -> None:
        samples = sorted(decode(d)["samples"])
        decode(d)["median"] = samples[2]  # a sample, but not the median of 20

    (line,) = problems_of(edited(nudge))
    assert line.startswith("r.json: cells[0].metrics.decode_latency_s.median: ")
    assert "does not follow from the samples (recomputed: " in line


def test_a_percentile_outside_the_samples_range_is_refused_saying_so() -> None:
    def beyond(d: dict[str, Any]) -> None:
        decode(d)["p90"] = 2 * max(decode(d)["samples"])

    (line,) = problems_of(edited(beyond))
    assert line.startswith("r.json: cells[0].metrics.decode_latency_s.p90: ")
    assert "lies outside the samples' range [" in line


def test_a_summary_whose_numbers_were_rounded_to_nanoseconds_is_accepted() -> None:
    def rounded(d: dict[str, Any]) -> None:
        for field in ("median", "p10", "p90", "ci_low", "ci_high"):
            decode(d)[field] = round(decode(d)[field], 9)

    data = edited(rounded)
    assert decode(data)["median"] != decode(valid_data())["median"]
    assert problems_of(data) == []


def test_a_process_median_outside_the_samples_range_is_refused() -> None:
    def far(d: dict[str, Any]) -> None:
        decode(d)["process_medians"] = [decode(d)["median"], 10.0]

    (line,) = problems_of(edited(far))
    assert line.startswith("r.json: cells[0].metrics.decode_latency_s.process_medians[1]: 10.0 lies outside")


def test_two_cells_with_the_same_coordinates_are_refused_naming_both() -> None:
    def twice(d: dict[str, Any]) -> None:
        d["cells"].append(d["cells"][1])

    assert problems_of(edited(twice)) == [
        "r.json: cells[4]: the same cell as cells[1] (H128-MQA b8 ctx2048 bfloat16 sdpa)"
    ]


def test_every_problem_of_a_file_is_reported_on_its_own_line() -> None:
    def three(d: dict[str, Any]) -> None:
        d["cells"][0]["metrics"]["peak_memory_bytes"] = -5
        d["cells"][2]["batch_size"] = -1
        d["cells"][3]["elapsed_s"] = "slow"

    assert [line.split(": ")[1] for line in problems_of(edited(three))] == [
        "cells[0].metrics.peak_memory_bytes",
        "cells[2].batch_size",
        "cells[3].elapsed_s",
    ]


def test_every_cross_field_problem_is_reported_too() -> None:
    def two(d: dict[str, Any]) -> None:
        d["cells"][0]["metrics"] = None
        decode(d, 1)["p10"] = 1.0

    assert [line.split(": ")[1] for line in problems_of(edited(two))] == [
        "cells[0].metrics",
        "cells[1].metrics.decode_latency_s.p10",
    ]


@pytest.mark.parametrize("target", ["../../elsewhere", "/tmp/x", ".hidden", "a/b", ""])
def test_a_target_that_is_not_a_plain_folder_name_is_refused(target: str) -> None:
    (line,) = problems_of(edited(lambda d: d.update(target=target)))
    assert line.startswith("r.json: target: String should ")


def test_a_field_name_with_a_newline_is_reported_on_one_line() -> None:
    lines = problems_of(edited(lambda d: d["cells"][0].update({"bad\nkey\u202e": 1})))
    assert lines == ["r.json: cells[0].bad\\nkey\\u202e: unknown key"]


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(json.dumps(valid_data()).encode("utf-8").replace(b"H128-MHA", b"H128-\xff"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_result(path)


def test_json_nested_too_deeply_for_a_result_is_refused() -> None:
    data = valid_data()
    nest: Any = 1
    for _ in range(40):
        nest = [nest]
    data["environment"]["deep"] = nest
    assert problems_of(data) == ["r.json: not a result file (nested deeper than 32 levels)"]


def test_json_nested_beyond_what_the_parser_reads_is_refused() -> None:
    with pytest.raises(UserError, match="nested too deeply"):
        parse_result("[" * 100_000 + "]" * 100_000, "r.json")


def test_an_integer_of_thousands_of_digits_is_refused() -> None:
    with pytest.raises(UserError, match=r"r\.json: not a result file: Exceeds the limit"):
        parse_result('{"schema_version": 1, "cells": [], "x": ' + "9" * 5000 + "}", "r.json")


# --- through the commands that read result files -------------------------------------------------


def test_compare_of_a_file_whose_first_ok_cell_has_no_metrics_exits_two_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write(tmp_path, valid_data(), "base.json")
    head = write(tmp_path, edited(lambda d: d["cells"][0].update(metrics=None)), "head.json")
    assert main(["compare", str(base), str(head)]) == 2
    assert capsys.readouterr().err == f"attnbench compare: error: {head}: cells[0].metrics: an ok cell has no metrics\n"


def test_compare_refuses_a_negative_peak_memory_instead_of_calling_it_an_improvement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write(tmp_path, valid_data(), "base.json")
    head = write(tmp_path, edited(lambda d: d["cells"][0]["metrics"].update(peak_memory_bytes=-5)), "head.json")
    assert main(["compare", str(base), str(head)]) == 2
    captured = capsys.readouterr()
    assert "improvement" not in captured.out
    assert captured.err.count("\n") == 1
    assert f"{head}: cells[0].metrics.peak_memory_bytes: " in captured.err


def test_report_of_a_bad_file_exits_two_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, valid_data(), "good.json")
    bad = write(tmp_path, edited(lambda d: decode(d).update(ci_high=1.0)), "bad.json")
    out = tmp_path / "reports"
    assert main(["report", str(good), str(bad), "--out", str(out)]) == 2
    assert "bad.json: cells[0].metrics.decode_latency_s.ci_high: " in capsys.readouterr().err
    assert not out.exists()


def test_export_of_a_bad_file_exits_two_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, edited(lambda d: d["cells"][0].update(context_len=-1)), "bad.json")
    output = tmp_path / "export.json"
    assert main(["export", str(bad), "-o", str(output)]) == 2
    assert "bad.json: cells[0].context_len: " in capsys.readouterr().err
    assert not output.exists()


def test_a_bad_result_committed_at_a_revision_is_named_by_revision_and_path(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "cpu-test-2c"
    folder.mkdir(parents=True)
    write(folder, edited(lambda d: d["cells"][0].update(metrics=None)), "20260105T100000Z_a1b2c3d.json")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "bad result"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    with pytest.raises(UserError) as info:
        gitrev.committed_results("HEAD", "cpu-test-2c", cwd=tmp_path)
    assert str(info.value) == (
        "HEAD:results/cpu-test-2c/20260105T100000Z_a1b2c3d.json: cells[0].metrics: an ok cell has no metrics"
    )


def test_resume_refuses_an_unfinished_result_that_fails_the_checks(tmp_path: Path) -> None:
    data = edited(lambda d: d["cells"][0].update(batch_size=-2))
    data["finished_utc"] = None
    (tmp_path / "cpu-test-2c").mkdir()
    write(tmp_path / "cpu-test-2c", data, "20260105T100000Z_a1b2c3d.json")
    loaded = load_scenario(REPO / "scenarios" / "default.toml")
    with pytest.raises(UserError, match=r"cells\[0\]\.batch_size: Input should be greater than or equal to 1"):
        runfiles.find_resumable(tmp_path, "cpu-test-2c", loaded, "cpu")


# --- validate ------------------------------------------------------------------------------------


def test_validate_accepts_a_valid_result_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, valid_data())
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (result of scenario 'decode-small' on cpu-test-2c, 4 cells)\n"


def test_validate_reports_every_problem_of_every_file_and_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(tmp_path, edited(lambda d: d["cells"][0].update(batch_size=0, context_len=0)), "first.json")
    good = write(tmp_path, valid_data(), "good.json")
    second = write(tmp_path, edited(lambda d: d["cells"][1].update(metrics=None)), "second.json")
    assert main(["validate", str(first), str(good), str(second)]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"{good}: ok (result of scenario 'decode-small' on cpu-test-2c, 4 cells)\n"
    assert [line.split(": ")[2] for line in captured.err.splitlines()] == [
        f"{first}",
        f"{first}",
        f"{second}",
    ]
    assert [line.split(": ")[3] for line in captured.err.splitlines()] == [
        "cells[0].batch_size",
        "cells[0].context_len",
        "cells[1].metrics",
    ]


def test_the_console_script_prints_no_traceback_for_a_bad_result_file(tmp_path: Path) -> None:
    path = write(tmp_path, edited(lambda d: d["cells"][0].update(metrics=None)))
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "compare", str(path), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def placed(started: str, finished: str) -> dict[str, Any]:
    return {
        "executor": "ray",
        "node_id": "a1b2",
        "host": "node-1",
        "device": "cuda",
        "device_id": "3",
        "device_uuid": "GPU-0f1e",
        "pid": 4242,
        "started_utc": started,
        "finished_utc": finished,
    }


def test_a_cell_placed_on_a_node_and_gpu_is_accepted() -> None:
    data = edited(lambda d: d["cells"][0].update(placement=[placed("2026-11-24T06:15:00.5Z", "2026-11-24T06:15:09Z")]))
    assert problems_of(data) == []


def test_a_placement_that_finishes_before_it_starts_is_refused() -> None:
    data = edited(
        lambda d: d["cells"][1].update(placement=[placed("2026-11-24T06:15:09.000001Z", "2026-11-24T06:15:09Z")])
    )
    assert problems_of(data) == [
        "r.json: cells[1].placement[0].finished_utc: finishes (2026-11-24T06:15:09Z) before it starts "
        "(2026-11-24T06:15:09.000001Z)"
    ]


def test_a_placement_time_that_is_not_utc_iso_is_refused_by_field() -> None:
    data = edited(lambda d: d["cells"][0].update(placement=[placed("yesterday", "2026-11-24T06:15:09Z")]))
    (line,) = problems_of(data)
    assert line.startswith("r.json: cells[0].placement[0].started_utc: String should match pattern")


def test_a_shard_whose_index_exceeds_its_count_is_refused() -> None:
    (line,) = problems_of(edited(lambda d: d.update(shard={"index": 3, "count": 2})))
    assert line.startswith("r.json: shard: ") and "the index exceeds the count" in line
