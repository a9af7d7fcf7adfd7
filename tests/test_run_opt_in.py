"""A run that asks for the opt-in measurements: a training step per cell, recorded beside the decode cell."""

from __future__ import annotations

import pytest

from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.runner import Runner, RunOptions
from harness.scenario.schema import MeasureSpec

OPT_IN = """
name = "opt-in"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MHA"
[[variant]]
name = "H16-MHA-CLA2"
[[variant]]
name = "H16-GQA2-SWA8"
[sweep]
batch_size = [2]
context_len = [64]
[measure]
metrics = ["memory", "train_step"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""


@pytest.fixture(scope="module")
def opt_in_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    folder = tmp_path_factory.mktemp("opt-in")
    path = folder / "opt-in.toml"
    path.write_text(OPT_IN)
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    try:
        outcome = Runner(RunOptions(scenario=str(path), device="cpu", out_dir=folder / "out")).run()
    finally:
        mp.undo()
    assert outcome.exit_code == 0
    return load_result(outcome.path)


def test_train_step_is_not_measured_unless_a_scenario_asks_for_it():
    assert "train_step" not in MeasureSpec().selected_metrics
    assert "train_step" not in MeasureSpec(memory_budget=2**30).selected_metrics
    assert MeasureSpec(metrics=["train_step"]).selected_metrics == ("train_step",)


def test_each_cell_gets_a_training_step_whose_kv_activations_pass_their_check(opt_in_run: RunResult):
    for cell in opt_in_run.cells[:2]:
        assert cell.metrics is not None and cell.metrics.train_step is not None
        step = cell.metrics.train_step
        assert step.status == "ok" and step.tokens == 2 * 64
        assert step.kv_activation_bytes == step.kv_activation_bytes_expected
        assert step.peak_memory_bytes is not None and step.peak_memory_bytes > 0
        passed = {c.name: c.passed for c in cell.checks}
        assert passed["train_kv_as_accounted"] and passed["train_peak_holds_activations"]


def test_cla2_halves_the_training_kv_activations_of_its_base(opt_in_run: RunResult):
    steps = {c.variant: c.metrics.train_step for c in opt_in_run.cells if c.metrics is not None}
    mha, cla = steps["H16-MHA"], steps["H16-MHA-CLA2"]
    assert mha is not None and cla is not None
    assert mha.kv_activation_bytes == 2 * cla.kv_activation_bytes  # type: ignore[operator]


def test_a_variant_that_does_not_train_here_keeps_its_decode_cell_and_says_why(opt_in_run: RunResult):
    cell = next(c for c in opt_in_run.cells if c.variant == "H16-GQA2-SWA8")
    assert cell.status == "ok" and cell.metrics is not None and cell.metrics.train_step is not None
    assert cell.metrics.train_step.status == "unsupported"
    assert "ring buffer holds only its window" in (cell.metrics.train_step.error or "")
