"""A run that asks for the opt-in measurements: a training step per cell and its decode step sharded over tp ranks,
recorded beside the decode cell."""

from __future__ import annotations

import pytest

from harness.results.schema import RunResult
from harness.results.store import load_result
from harness.run.runner import Runner, RunOptions
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
name = "H16-MQA"
[[variant]]
name = "H16-GQA2-SWA8"
[[variant]]
name = "threes"
attention = "gqa"
head_dim = 16
n_heads = 3
n_kv_heads = 3
[sweep]
batch_size = [2]
context_len = [64]
tp = [1, 2]
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


def test_each_cell_is_measured_sharded_at_every_degree_with_each_ranks_cache_as_accounted(opt_in_run: RunResult):
    cell = next(c for c in opt_in_run.cells if c.variant == "H16-MHA")
    assert cell.metrics is not None
    assert [(m.tp, m.status, len(m.ranks)) for m in cell.metrics.tp] == [(1, "ok", 1), (2, "ok", 2)]
    two = cell.metrics.tp[1]
    assert two.comm_backend == "gloo" and two.kv_heads_per_rank == 2 and two.kv_replication == 1.0
    assert [r.kv_cache_bytes for r in two.ranks] == [cell.metrics.kv_cache_bytes // 2] * 2
    assert two.decode_latency_s is not None and len(two.decode_latency_s.samples) >= 5
    assert all(r.peak_memory_bytes is not None and r.peak_memory_bytes > 0 for r in two.ranks)
    assert {c.name: c.passed for c in cell.checks}["tp_kv_as_accounted"]


def test_mqa_keeps_its_whole_cache_on_every_rank(opt_in_run: RunResult):
    cell = next(c for c in opt_in_run.cells if c.variant == "H16-MQA")
    assert cell.metrics is not None
    two = cell.metrics.tp[1]
    assert two.kv_replication == 2.0
    assert [r.kv_cache_bytes for r in two.ranks] == [cell.metrics.kv_cache_bytes] * 2


def test_a_layout_that_does_not_split_is_recorded_unsupported_and_the_run_goes_on(opt_in_run: RunResult):
    cell = next(c for c in opt_in_run.cells if c.variant == "threes")
    assert cell.status == "ok" and cell.metrics is not None
    assert [(m.tp, m.status) for m in cell.metrics.tp] == [(1, "ok"), (2, "unsupported")]
    assert cell.metrics.tp[1].error == "threes at tp 2: its 3 query heads do not split evenly over 2 ranks"
