"""Property-based tests of result files: truncated, mutated, retyped, huge, non-finite and unicode-laden
files through every command that reads them (validate, compare, export, report). Each keeps the
contract of helpers_fuzz: exit 0, 1 or 2, one line per problem on stderr, no traceback. A file that
stays valid however hostile its values must be read by every command without complaint.

Examples are seeded (see conftest). Besides the random examples, every field of a full result gets
every edge value once, and a few hostile files go through the real console script.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_fuzz import (
    EDGE_VALUES,
    HOSTILE_VALUES,
    assert_contract,
    attnbench,
    delete_at,
    field_paths,
    replace_at,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.results.summary import summarize

DATA = Path(__file__).parent / "data" / "report" / "cpu-amd-epyc-2c.json"
LATENCIES = ("decode_latency_s", "decode_latency_cold_s", "attention_latency_s")


def reference() -> dict[str, Any]:
    """A valid result with every kind of field: MHA, MQA and MQA-CLA2 cells, one that ran out of
    memory, two measurement rounds, telemetry, an auto backend's candidates and a measured peak."""
    data: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
    data["cells"] = [data["cells"][i] for i in (0, 3, 8, 16)]
    cell = data["cells"][0]
    decode = cell["metrics"]["decode_latency_s"]
    decode["process_medians"] = [decode["p10"], decode["p90"]]
    cell["rounds_done"] = 2
    cell["metrics"]["telemetry"] = {"power_w": 250.5, "throttle_reasons": ["sw_power_cap"], "energy_per_token_j": 0.4}
    cell["metrics"]["auto_latencies_s"] = {"sdpa": 0.0012, "grouped": 0.0011}
    data["environment"]["peak_bandwidth"] = {"read_gbps": 18.5, "copy_gbps": 16.0, "method": "torch copy"}
    return data


REFERENCE = reference()
REFERENCE_TEXT = json.dumps(REFERENCE)


def _commands(base: Path, file: Path, out: Path, *, report: bool) -> list[list[str]]:
    commands = [
        ["validate", str(file)],
        ["compare", str(base), str(file)],
        ["compare", str(file), str(base), "--only-changed"],
        ["export", str(file), "-o", str(out / "export.json")],
    ]
    if report:
        commands.append(["report", str(file), "--out", str(out / "report")])
    return commands


def check_result(content: str | bytes, *, report: bool = False, valid: bool = False) -> None:
    """Every command on a result file holding ``content``; with ``valid`` it must be accepted."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base, file = folder / "base.json", folder / "fuzzed.json"
        base.write_text(REFERENCE_TEXT, encoding="utf-8")
        file.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        for argv in _commands(base, file, folder, report=report):
            outcome = attnbench(argv)
            allowed = (0, 1, 2) if not valid else {"validate": (0,), "compare": (0, 1), "report": (0,)}.get(argv[0])
            assert_contract(outcome, argv[0], allowed or (0, 2))
            if outcome.code == 2 and argv[0] != "compare":
                assert all(f": error: {file}" in line for line in outcome.stderr.splitlines()), outcome


# --- mutations of a valid file -------------------------------------------------------------------


@st.composite
def mutated_results(draw: st.DrawFn) -> dict[str, Any]:
    """The reference with one to three fields deleted, set to a hostile value, or added."""
    doc = copy.deepcopy(REFERENCE)
    for _ in range(draw(st.integers(1, 3))):
        fields = field_paths(doc)
        if not fields:
            break
        path = draw(st.sampled_from(fields))
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete":
            delete_at(doc, path)
        elif action == "replace":
            replace_at(doc, path, draw(HOSTILE_VALUES))
        else:
            tables = [p for p in [(), *fields] if isinstance(_at(doc, p), dict)]
            _at(doc, draw(st.sampled_from(tables)))[draw(st.text(min_size=1, max_size=10))] = draw(HOSTILE_VALUES)
    return doc


def _at(doc: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@given(mutated_results())
def test_a_mutated_result_file_keeps_the_contract_in_every_command(doc: dict[str, Any]) -> None:
    check_result(json.dumps(doc))


@given(st.integers(0, len(REFERENCE_TEXT) - 1))
def test_a_truncated_result_file_is_refused_in_one_line(end: int) -> None:
    check_result(REFERENCE_TEXT[:end])


NUMBER_TOKENS = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1" * 5000, "1e-400", "0.0"])


@given(st.data())
def test_a_number_spelled_as_any_json_number_keeps_the_contract(data: st.DataObject) -> None:
    """Python's json reads NaN, Infinity and over-long numbers; put one where any number stands."""
    marker = 1234567.5
    doc = copy.deepcopy(REFERENCE)
    numbers = [p for p in field_paths(doc) if type(_at(doc, p)) in (int, float)]
    replace_at(doc, data.draw(st.sampled_from(numbers)), marker)
    check_result(json.dumps(doc).replace(repr(marker), data.draw(NUMBER_TOKENS)))


@given(st.binary(max_size=300), st.integers(0, len(REFERENCE_TEXT)))
def test_bytes_spliced_into_a_result_file_keep_the_contract(garbage: bytes, where: int) -> None:
    raw = REFERENCE_TEXT.encode("utf-8")
    check_result(raw[:where] + garbage + raw[where:])


# --- valid files with hostile values: every command must read them --------------------------------

# What a table the schema leaves open may validly hold: any JSON with finite numbers within 64 bits.
VALID_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
VALID_ANY = st.recursive(
    VALID_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
# Strings a file may validly hold anywhere a name or free text goes.
HOSTILE_TEXT = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["a|b", "`x`", "<b>x</b>", "line\nbreak", "\u202etxt", "😀" * 30, "\\", "[x](javascript:1)"]),
)


def _resummarize(summary: dict[str, Any], samples: list[float]) -> None:
    fresh = summarize(samples)
    summary |= fresh.model_dump(exclude={"process_medians"}) | {"process_medians": []}


@st.composite
def hostile_valid_results(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(REFERENCE)
    doc["scenario"]["name"] = draw(HOSTILE_TEXT)
    doc["scenario"]["description"] = draw(st.text(max_size=40))
    for table in (doc["environment"], doc["scenario"]["model"], doc["scenario"]["measure"]):
        key = draw(st.one_of(st.sampled_from(sorted(table)), st.text(max_size=10)))
        table[key] = draw(VALID_ANY)
    doc["git"]["branch"] = draw(st.one_of(st.none(), HOSTILE_TEXT))
    names = draw(st.lists(HOSTILE_TEXT, min_size=4, max_size=4, unique=True))
    for cell, name in zip(doc["cells"], names, strict=True):
        cell["variant"] = name
        cell["dtype"] = draw(st.sampled_from(["float32", "bfloat16", *([draw(HOSTILE_TEXT)])]))
        cell["error"] = draw(st.one_of(st.none(), HOSTILE_TEXT))
        metrics = cell["metrics"]
        if metrics is None:
            continue
        scale = draw(st.sampled_from([1e-12, 1e-6, 1.0, 1e3, 1e6]))
        for name_ in LATENCIES:
            if metrics.get(name_) is not None:
                samples = [s * scale for s in metrics[name_]["samples"]]
                _resummarize(metrics[name_], samples)
        for field in ("bandwidth_gbps", "bandwidth_fraction", "tokens_per_s", "attention_bandwidth_gbps"):
            metrics[field] = draw(st.sampled_from([0.0, 5e-324, 1e-300, metrics[field], 1e300, 1.7976931348623157e308]))
        metrics["peak_memory_bytes"] = draw(st.sampled_from([0, 1, metrics["peak_memory_bytes"], 2**63 - 1]))
        for field in ("kv_cache_bytes", "bytes_per_step", "flops_per_step"):
            metrics[field] = draw(st.sampled_from([1, metrics[field], 2**53 + 1, 2**63 - 1]))
        if metrics.get("max_batch"):
            metrics["max_batch"]["measured"] = draw(st.sampled_from([0, 1, None, 2**63 - 1]))
            metrics["max_batch"]["error_fraction"] = draw(st.sampled_from([None, -1.0, 0.0, 1e300]))
        if draw(st.booleans()):
            cell["status"] = draw(st.sampled_from(["oom", "error"]))
    return doc


@settings(max_examples=max(5, settings.default.max_examples // 3))  # each example renders a report (~1 s)
@given(hostile_valid_results())
def test_a_valid_file_with_hostile_values_is_read_by_every_command(doc: dict[str, Any]) -> None:
    check_result(json.dumps(doc), report=True, valid=True)


@settings(max_examples=max(5, settings.default.max_examples // 3))  # each example may render a report
@given(mutated_results())
def test_report_of_a_mutated_result_file_keeps_the_contract(doc: dict[str, Any]) -> None:
    check_result(json.dumps(doc), report=True)


# --- every field, every edge value ---------------------------------------------------------------


# Tables the schema leaves open (any JSON goes): their edge values are the loading checks' concern,
# and the commands that read them are fuzzed by hostile_valid_results.
OPEN_TABLES = (("environment",), ("scenario", "model"), ("scenario", "measure"))


def test_every_field_set_to_every_edge_value_or_deleted_keeps_the_contract(tmp_path: Path) -> None:
    """All variants are validated in one command; those accepted also go through compare and export."""
    files: dict[Path, bool] = {}  # file -> whether compare and export read it too
    for index, path in enumerate(field_paths(REFERENCE)):
        for variant, value in enumerate([*EDGE_VALUES, "<delete>"]):
            doc = copy.deepcopy(REFERENCE)
            if value == "<delete>":
                delete_at(doc, path)
            else:
                replace_at(doc, path, value)
            file = tmp_path / f"{index}-{variant}.json"
            file.write_text(json.dumps(doc), encoding="utf-8")
            files[file] = not any(path[: len(table)] == table for table in OPEN_TABLES)
    outcome = attnbench(["validate", *map(str, files)])
    assert_contract(outcome, "validate", (2,))
    refused = {line.split(": ")[2] for line in outcome.stderr.splitlines()}
    accepted = {line.split(": ")[0] for line in outcome.stdout.splitlines()}
    assert refused | accepted == {str(f) for f in files}
    assert not refused & accepted
    base = tmp_path / "base.json"
    base.write_text(REFERENCE_TEXT, encoding="utf-8")
    for file in sorted(accepted):
        if files[Path(file)]:
            assert_contract(attnbench(["compare", str(base), file]), "compare")
            assert_contract(attnbench(["export", file, "-o", str(tmp_path / "export.json")]), "export", (0, 2))


# --- the real console script ---------------------------------------------------------------------


def _edit(edit: Callable[[dict[str, Any]], None]) -> str:
    doc = copy.deepcopy(REFERENCE)
    edit(doc)
    return json.dumps(doc)


HOSTILE_FILES: dict[str, str | bytes] = {
    "ok-cell-without-metrics": _edit(lambda d: d["cells"][0].update(metrics=None)),
    "negative-bytes": _edit(lambda d: d["cells"][0]["metrics"].update(peak_memory_bytes=-5)),
    "nan-median": _edit(lambda d: d["cells"][0]["metrics"]["decode_latency_s"].update(median=1234567.5)).replace(
        "1234567.5", "NaN"
    ),
    "truncated": REFERENCE_TEXT[: len(REFERENCE_TEXT) // 2],
    "not-utf8": REFERENCE_TEXT.encode("utf-8").replace(b"H64-MHA", b"H64-\xff", 1),
    "deep": "[" * 50_000 + "]" * 50_000,
    "target-escapes-folder": _edit(lambda d: d.update(target="../../../tmp")),
}


# One real process per command (each start imports torch, ~5 s on two cores): the exit code and
# stderr a shell or CI sees, with no in-process capture between.
CONSOLE_RUNS = [
    ("validate", sorted(HOSTILE_FILES)),
    ("compare", ["ok-cell-without-metrics"]),
    ("export", ["nan-median"]),
    ("report", ["negative-bytes"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "names"), CONSOLE_RUNS, ids=[c for c, _ in CONSOLE_RUNS])
def test_the_console_script_refuses_hostile_result_files_one_line_each(
    command: str, names: list[str], tmp_path: Path
) -> None:
    files = []
    for name in names:
        content = HOSTILE_FILES[name]
        file = tmp_path / f"{name}.json"
        file.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        files.append(str(file))
    base = tmp_path / "base.json"
    base.write_text(REFERENCE_TEXT, encoding="utf-8")
    argv = {
        "validate": ["validate", *files],
        "compare": ["compare", str(base), *files],
        "export": ["export", *files, "-o", str(tmp_path / "export.json")],
        "report": ["report", *files, "--out", str(tmp_path / "report")],
    }[command]
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *argv], capture_output=True, text=True, check=False, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == len(files), lines  # each of these files has exactly one problem
    for line, file in zip(lines, files, strict=True):
        assert line.startswith(f"attnbench {command}: error: {file}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.name, *(Path(f).name for f in files)])
