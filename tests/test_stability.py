"""Stability of a cell's numbers: a contended or disagreeing cell is flagged with its reason, a quiet one is not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers_results import lognormal_samples, make_cell, make_metrics, make_run

from harness.measure import hostload
from harness.results.schema import CellResult, HostLoad, Summary
from harness.results.stability import assess_cell, assess_run, noise_floor, rounds_of, typical_spreads
from harness.run.derive import pooled_summary


def rounds(*medians: float, n: int = 15) -> Summary:
    """A summary pooled from one round per median, each ``n`` samples within ±1% of it."""
    summary: Summary | None = None
    for median in medians:
        seconds = [median * (0.99 + 0.02 * i / (n - 1)) for i in range(n)]
        summary, _ = pooled_summary(summary, {"seconds": seconds})
    assert summary is not None
    return summary


def cell_with(decode: Summary, host_load: list[HostLoad] | None = None) -> CellResult:
    cell = make_cell()
    assert cell.metrics is not None
    return cell.model_copy(
        update={"metrics": cell.metrics.model_copy(update={"decode_latency_s": decode}), "host_load": host_load or []}
    )


QUIET = HostLoad(wall_s=2.0, other_cpu_s=0.04, steal_s=0.0, cores=2)
BUSY = HostLoad(wall_s=2.0, other_cpu_s=1.9, steal_s=0.0, cores=2)


def test_pooled_rounds_can_be_split_back_into_their_own_samples() -> None:
    summary = rounds(0.010, 0.011, n=7)
    assert [len(r) for r in rounds_of(summary)] == [7, 7]
    assert rounds_of(summary)[1] == summary.samples[7:]


def test_a_quiet_cell_whose_rounds_agree_is_stable() -> None:
    stability = assess_cell(cell_with(rounds(0.010, 0.0101), [QUIET, QUIET]), {"decode_latency_s": 0.05})
    assert stability.unstable is False and stability.reasons == []


def test_rounds_that_disagree_by_a_fifth_beyond_their_intervals_make_a_cell_unstable() -> None:
    stability = assess_cell(cell_with(rounds(0.010, 0.012)), {"decode_latency_s": 0.05})
    assert stability.unstable
    assert stability.reasons == [
        "decode_latency_s: rounds 1 and 2 disagree by 20% (medians 10 and 12 ms, 95% intervals disjoint)"
    ]


def test_a_disagreement_names_how_far_the_reference_loop_moved_between_the_same_rounds_processes() -> None:
    loads = [QUIET.model_copy(update={"reference_s": 0.0030}), QUIET.model_copy(update={"reference_s": 0.0039})]
    stability = assess_cell(cell_with(rounds(0.010, 0.012), loads), {"decode_latency_s": 0.05})
    assert stability.reasons == [
        "decode_latency_s: rounds 1 and 2 disagree by 20% (medians 10 and 12 ms, 95% intervals disjoint); "
        "the reference loop moved 30% between the same two rounds' processes"
    ]


def test_rounds_a_few_percent_apart_are_run_to_run_noise_not_instability() -> None:
    assert not assess_cell(cell_with(rounds(0.010, 0.0104)), {"decode_latency_s": 0.05}).unstable


def test_a_spread_far_above_the_runs_typical_one_makes_a_cell_unstable() -> None:
    wide = make_metrics(decode_samples=[0.025] * 10 + [0.030, 0.2, 0.5, 0.9, 0.96]).decode_latency_s
    assert wide is not None
    stability = assess_cell(cell_with(wide), {"decode_latency_s": 0.04})
    assert stability.unstable and stability.reasons[0].startswith("decode_latency_s: p10-p90 spans")


def test_a_host_busy_while_the_cell_was_timed_makes_it_unstable_with_the_numbers() -> None:
    stability = assess_cell(cell_with(rounds(0.010, 0.0101), [QUIET, BUSY]), {"decode_latency_s": 0.05})
    assert stability.reasons == [
        "host busy while timing (round 2): other processes 1.90 CPU-s and steal 0.00 s in 2.00 s, 0.95 cores on average"
    ]


def test_a_gpu_shared_with_another_process_makes_a_cell_unstable() -> None:
    cell = cell_with(rounds(0.010)).model_copy(update={"checks_failed": ["gpu_not_shared"]})
    cell = cell.model_copy(update={"checks": [{"name": "gpu_not_shared", "passed": False, "detail": "4242"}]})
    assert "GPU contended while timing (gpu_not_shared failed)" in assess_cell(cell, {}).reasons


def test_the_run_is_assessed_against_its_own_typical_spread() -> None:
    quiet = [make_cell(batch_size=b, decode_samples=lognormal_samples(0.010, 0.02, 15, b)) for b in range(1, 6)]
    noisy = make_cell(batch_size=99, decode_samples=[0.025] * 10 + [0.030, 0.2, 0.5, 0.9, 0.96])
    run = make_run([*quiet, noisy])
    assert typical_spreads(run.cells)["decode_latency_s"] == pytest.approx(0.06, abs=0.03)
    assess_run(run)
    assert [c.batch_size for c in run.cells if c.unstable] == [99]
    assert all(c.stability is not None for c in run.cells)


def test_proc_stat_gives_busy_and_steal_seconds_without_counting_idle_or_guest_twice() -> None:
    text = "cpu  1000 50 200 9000 30 5 15 40 100 0\ncpu0 500 25 100 4500 15 2 7 20 50 0\n"
    assert hostload.parse_proc_stat(text, 100.0) == (12.7, 0.4)


def test_host_load_counts_other_processes_cpu_time_not_this_ones(tmp_path: Path) -> None:
    start = hostload.CpuTimes(busy_s=100.0, steal_s=1.0, own_s=10.0, wall_s=0.0)
    end = hostload.CpuTimes(busy_s=103.5, steal_s=1.5, own_s=12.0, wall_s=2.0)
    assert hostload.host_load(start, end, 2) == {"wall_s": 2.0, "other_cpu_s": 1.5, "steal_s": 0.5, "cores": 2.0}


def test_the_meter_reads_this_machine_or_nothing(tmp_path: Path) -> None:
    with hostload.HostLoadMeter() as meter:
        sum(range(100_000))
    assert meter.result is None or meter.result["wall_s"] > 0
    with hostload.HostLoadMeter(stat=tmp_path / "missing") as meter:
        pass
    assert meter.result is None


def test_pooled_rounds_keep_each_rounds_warm_up_and_interval_in_round_order() -> None:
    first, _ = pooled_summary(None, {"seconds": [1.0, 1.1, 1.2], "warmup_s": 0.3, "warmup_steady": True,
                                     "ci_half_width": 0.02})  # fmt: skip
    both, _ = pooled_summary(first, {"seconds": [1.0], "warmup_s": 1.0, "warmup_steady": False, "ci_half_width": 0.5})
    assert both.process_warmup_s == [0.3, 1.0]
    assert both.process_warmup_steady == [True, False]
    assert both.process_ci_half_widths == [0.02, 0.5]


def test_a_round_pooled_onto_one_that_recorded_no_warm_up_records_none_rather_than_misalign() -> None:
    old, _ = pooled_summary(None, {"seconds": [1.0, 1.1]})
    both, _ = pooled_summary(old, {"seconds": [1.0], "warmup_s": 0.3, "warmup_steady": True, "ci_half_width": 0.02})
    assert both.process_medians == [1.05, 1.0]
    assert both.process_warmup_s == [] and both.process_ci_half_widths == []


def test_the_run_process_tree_counts_a_childs_cpu_time_as_the_runs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess
    import sys

    monkeypatch.setenv(hostload.RUN_ROOT_ENV, str(os.getpid()))
    before = hostload.run_tree_cpu_s()
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while hostload.run_tree_cpu_s() - before < 0.35 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hostload.run_tree_cpu_s() - before >= 0.35  # the child's 0.4 s of CPU are the run's own
        monkeypatch.delenv(hostload.RUN_ROOT_ENV)
        own = os.times()
        assert hostload.run_tree_cpu_s() == pytest.approx(own.user + own.system, abs=0.05)  # unmarked: this one alone
    finally:
        child.communicate(b"\n", timeout=30)


def test_mark_run_root_keeps_the_root_a_process_above_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hostload.RUN_ROOT_ENV, "1")
    hostload.mark_run_root()
    assert hostload.os.environ[hostload.RUN_ROOT_ENV] == "1"
    monkeypatch.delenv(hostload.RUN_ROOT_ENV)
    hostload.mark_run_root()
    assert hostload.os.environ[hostload.RUN_ROOT_ENV] == str(hostload.os.getpid())


def test_noise_floor_is_the_spread_of_the_reference_medians_over_every_round_of_every_cell() -> None:
    loads = [QUIET.model_copy(update={"reference_s": ms / 1e3}) for ms in (1.0, 1.0, 1.02, 0.98, 1.1)]
    cells = [
        cell_with(rounds(0.01, 0.01), loads[:2]),
        cell_with(rounds(0.01, 0.01), loads[2:]),
        cell_with(rounds(0.01)),
    ]
    floor = noise_floor(cells)
    assert floor is not None
    assert floor.workers == 5
    assert floor.median_s == pytest.approx(1.0e-3)
    # p10 and p90 of [0.98, 1.0, 1.0, 1.02, 1.1] by linear interpolation: 0.988 and 1.068
    assert floor.spread == pytest.approx((1.068 - 0.988) / 1.0)
    assert floor.max_deviation == pytest.approx(0.1)
    assert noise_floor([cell_with(rounds(0.01), [QUIET])]) is None  # no reference: no floor
