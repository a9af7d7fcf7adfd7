"""``attnbench explore``: a design space ranked by the cost model, its frontier, and measuring only the frontier."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from helpers_predict import modelled_run
from helpers_tiny import DECODE_ONLY, tiny_scenario
from test_predict import GIT

from harness.cli import main
from harness.hardware import detect_target
from harness.predict.calibration import CALIBRATION_NAME, calibrate, save_calibration
from harness.predict.explore import Candidate, design_space, frontier, generated_variants, paper_name
from harness.results.store import load_result, result_files, save_result
from harness.scenario import Cell, load_scenario


@pytest.fixture(autouse=True)
def peak_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))


def _calibrated(tmp_path: Path, target: str = "cpu-test-2c") -> Path:
    folder = tmp_path / target
    folder.mkdir(parents=True)
    save_result(modelled_run(target=target), folder / "20260105T100000Z_0123456.json")
    save_calibration(calibrate(folder, target, GIT), folder / CALIBRATION_NAME)
    return tmp_path


def test_paper_names_spell_mha_gqa_mqa_and_cla():
    assert [paper_name(64, 8, g, s) for g, s in ((8, 1), (2, 2), (1, 4))] == [
        "H64-MHA",
        "H64-GQA2-CLA2",
        "H64-MQA-CLA4",
    ]


def test_generated_layouts_are_every_kv_head_divisor_with_sharing_one_to_four():
    model = load_scenario("scenarios/default.toml").scenario.model  # d_model 512, 8 layers
    variants = generated_variants(model, [64])  # 8 heads: 1, 2, 4, 8 KV heads
    assert len(variants) == 16
    assert {(v.n_kv_heads, v.n_kv_layers) for v in variants} == {(g, p) for g in (1, 2, 4, 8) for p in (8, 4, 3, 2)}


def test_design_space_adds_generated_layouts_once_beside_the_scenarios_own():
    loaded = load_scenario("scenarios/default.toml")
    cells = design_space(loaded, generate=True, batch_sizes=[1, 2, 4], contexts=[128])
    names = {c.variant.name for c in cells}
    assert len(names) == 16  # the scenario's 5 layouts are among the 16 shapes, under their own names
    assert {"H64-MHA-CLA2", "H64-GQA4-CLA3"} <= names
    assert len(cells) == 16 * 3


def _candidate(kv: int, latency: float, context: int = 512) -> Candidate:
    variant = load_scenario("scenarios/default.toml").variants[0]
    return Candidate(Cell(variant, 1, context, "float32", "sdpa"), kv, latency, 1, 1, "memory")


def test_frontier_keeps_what_no_other_beats_on_both_kv_kept_and_objective():
    a, b, c, d = _candidate(4096, 0.010), _candidate(2048, 0.012), _candidate(1024, 0.008), _candidate(512, 0.009)
    other_context = _candidate(512, 0.5, context=2048)
    front = frontier([a, b, c, d, other_context], "latency")
    assert front == [a, c, other_context]  # b and d: another keeps more KV and is faster


def test_explore_ranks_and_prints_the_frontier_in_json(tmp_path: Path, capsys):
    results = _calibrated(tmp_path)
    args = ["explore", "--target", "cpu-test-2c", "--results", str(results), "--json"]
    assert main([*args, "--batch-sizes", "1,2,4,8", "--contexts", "512,2048", "--budget", "384MiB"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["configurations"] == 16 * 4 * 2
    assert 0 < data["within_budget"] <= data["configurations"]
    front = data["frontier"]
    assert front and all(r["peak_memory_bytes"] <= 384 * 2**20 for r in front)
    for r in front:  # none dominated by another configuration at its context
        rivals = [t for t in data["top"] if t["context_len"] == r["context_len"] and t is not r]
        assert not any(
            t["kv_bytes_per_token"] >= r["kv_bytes_per_token"] and t["tokens_per_s"] > r["tokens_per_s"] for t in rivals
        )


def test_explore_refuses_a_bad_budget_in_one_line(tmp_path: Path, capsys):
    results = _calibrated(tmp_path)
    assert main(["explore", "--target", "cpu-test-2c", "--results", str(results), "--budget", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget" in err


def test_explore_refuses_to_overwrite_a_scenario_file(tmp_path: Path, capsys):
    results = _calibrated(tmp_path)
    existing = tmp_path / "front.toml"
    existing.write_text("kept")
    assert main(["explore", "--target", "cpu-test-2c", "--results", str(results), "--measure", str(existing)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert existing.read_text() == "kept"


def test_explore_measure_runs_only_the_frontier_cells_and_records_their_predictions(tmp_path: Path, capsys):
    target = detect_target("cpu")
    results = _calibrated(tmp_path / "results", target)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        tiny_scenario(("H16-MHA", "H16-MQA", "H16-MQA-CLA2"), 'memory_budget = "256MiB"\n' + DECODE_ONLY)
    )
    written = tmp_path / "front.toml"
    args = ["explore", str(scenario), "--no-generate", "--results", str(results), "--out", str(results)]
    assert main([*args, "--measure", str(written), "--device", "cpu", "--objective", "latency"]) == 0
    front_scenario = tomllib.loads(written.read_text())
    assert front_scenario["name"] == "tiny-frontier"
    assert front_scenario["measure"]["memory_budget"] == 256 * 2**20
    files = [p for p in result_files(results / target) if load_result(p).scenario.name == "tiny-frontier"]
    assert len(files) == 1
    cells = load_result(files[0]).cells
    out = capsys.readouterr().out
    assert 0 < len(cells) < 3 * 2  # the frontier, not the whole sweep
    assert all(c.status == "ok" and c.prediction is not None for c in cells)
    assert "predicted against measured" in out
