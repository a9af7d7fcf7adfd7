"""The matmul peak probe and the roofline section: both fractions per cell, and the q_len where a step stops
being memory-bound, predicted from the accounting and read from the latencies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from harness import accounting
from harness.measure.matmul_peak import (
    PeakMatmul,
    load_or_measure_matmul_peak,
    matmul_cache_path,
    measure_matmul_peak,
)
from harness.report.roofline import MAX_Q_LEN, first_q_len, measured_crossover, predicted_crossover
from harness.scenario.schema import ModelSpec
from harness.variants import Variant, sharing_map

GQA2 = Variant("GQA2", 16, 4, 2, sharing_map(4, 1))


class _Cell:
    """The coordinates the crossover reads of a cell."""

    batch_size = 2
    context_len = 100
    dtype = "float32"


def quiet(peak: PeakMatmul) -> Callable[[str], PeakMatmul]:
    """A probe that measured ``peak`` with nothing else running (the cache's behaviour must not hang on the host)."""
    return lambda device: peak.model_copy(update={"host_other_cores": 0.0})


def test_the_matmul_probe_measures_each_cpu_dtype_and_is_reused_until_the_fingerprint_changes(tmp_path: Path) -> None:
    peak = measure_matmul_peak("cpu", repeats=2, side=128)
    assert set(peak.tflops) == {"float32", "bfloat16"} and all(rate > 0 for rate in peak.tflops.values())
    assert peak.host_other_cores is not None and peak.host_other_cores >= 0
    env = {"target": "cpu-test", "cpu_model": "a"}
    first = load_or_measure_matmul_peak("cpu-test", "cpu", tmp_path, env=env, measure=quiet(peak))
    path = matmul_cache_path("cpu-test", tmp_path)
    record = json.loads(path.read_text())
    record["peak"]["tflops"] = {"float32": 123.0}  # what a later run must read back, not measure
    path.write_text(json.dumps(record))
    assert load_or_measure_matmul_peak("cpu-test", "cpu", tmp_path, env=env).tflops == {"float32": 123.0}
    again = load_or_measure_matmul_peak("cpu-test", "cpu", tmp_path, env={**env, "cpu_model": "b"}, measure=quiet(peak))
    assert again.tflops != {"float32": 123.0} and set(again.tflops) == set(first.tflops)


def test_a_matmul_peak_measured_on_a_busy_host_serves_its_run_only_with_a_warning(tmp_path: Path) -> None:
    busy = PeakMatmul(tflops={"float32": 0.017}, side=1024, method="m", host_other_cores=1.4)
    env = {"target": "cpu-test", "cpu_model": "a"}
    peak = load_or_measure_matmul_peak("cpu-test", "cpu", tmp_path, env=env, measure=lambda device: busy)
    assert peak.tflops == busy.tflops
    assert peak.warning is not None and "1.40 cores" in peak.warning and "not cached" in peak.warning
    assert not matmul_cache_path("cpu-test", tmp_path).exists()  # the next run measures again


def test_first_q_len_finds_the_smallest_q_len_that_holds() -> None:
    assert first_q_len(lambda q: q >= 37) == 37
    assert first_q_len(lambda q: True) == 1
    assert first_q_len(lambda q: q > MAX_Q_LEN) is None


def _scan(bound_at: object) -> int | None:
    """A linear scan for the smallest q_len: the bisection's independent check."""
    return next((q for q in range(1, MAX_Q_LEN + 1) if bound_at(q)), None)  # type: ignore[operator]


def test_the_predicted_crossover_is_where_flops_at_the_matmul_peak_outlast_bytes_at_the_peak_bandwidth(
    tiny_model: ModelSpec,
) -> None:
    cell = _Cell()
    peak_gbps, tflops = 10.0, 0.05  # a balance of 5 FLOP per byte

    def bound(q_len: int) -> bool:
        v = dataclasses.replace(GQA2, q_len=q_len)
        flops = accounting.flops_per_step(tiny_model, v, 2, 100)
        return flops / 5.0 >= accounting.bytes_per_step(tiny_model, v, "float32", 2, 100)

    expected = _scan(bound)
    assert expected is not None and expected > 1
    assert predicted_crossover(tiny_model, GQA2, cell, peak_gbps, tflops) == expected  # type: ignore[arg-type]
    assert predicted_crossover(tiny_model, GQA2, cell, peak_gbps, 1e-9) == 1  # type: ignore[arg-type]  # slow FLOPs
    assert predicted_crossover(tiny_model, GQA2, cell, peak_gbps, 1e9) is None  # type: ignore[arg-type]  # never


def test_the_measured_crossover_reads_the_flop_rate_from_the_latencies_growth(tiny_model: ModelSpec) -> None:
    cell = _Cell()
    assert measured_crossover(tiny_model, GQA2, cell, {1: 1e-3, 4: 1e-3}) == "> 4"  # type: ignore[arg-type]
    flops = [accounting.flops_per_step(tiny_model, dataclasses.replace(GQA2, q_len=q), 2, 100) for q in (1, 4)]
    rate = 1e9  # FLOP/s: the step's growth from q_len 1 to 4 at this rate
    t_one = 5 * flops[0] / rate  # the one-token step takes as long as five tokens' FLOPs at that rate
    steps = {1: t_one, 4: t_one + (flops[1] - flops[0]) / rate}
    expected = _scan(
        lambda q: accounting.flops_per_step(tiny_model, dataclasses.replace(GQA2, q_len=q), 2, 100) / rate >= t_one
    )
    assert expected is not None and 4 < expected < 8
    assert measured_crossover(tiny_model, GQA2, cell, steps) == str(expected)  # type: ignore[arg-type]
