"""How well a target's cost model predicts cells it was not fitted on, and how fast it ranks a design space.

Leave-one-out over the committed measured cells of one target (default: this machine's CPU target): for
each distinct cell (scenario, variant, batch, context, dtype, backend) the model is fitted on every other
cell, its measurements in every result file left out together, and predicts the cell's warm decode
latency (and core attention's) in each file it was measured in. Max batch leaves out every cell that
shares the max-batch search (scenario, variant, context, dtype), fits the memory model on the rest and
predicts the measured max batch; the accounting's own prediction, recorded in each cell, is beside it.
Last, the time to predict, rank and take the frontier of at least 10,000 configurations of the default
scenario (generated layouts x batch sizes x contexts).

    python benchmarks/predict_error.py [--target T] [--results DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from tabulate import tabulate

from harness.hardware import detect_target
from harness.predict.calibration import (
    Calibration,
    fit_observations,
    predict_latency,
    target_observations,
)
from harness.predict.explore import design_space, frontier, rank
from harness.predict.features import Observation
from harness.predict.fit import abs_error_quantiles
from harness.predict.predictor import TargetModel, target_model
from harness.results.schema import GitInfo
from harness.scenario import load_scenario

EXPLORE_BATCH_SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
EXPLORE_CONTEXTS = [128 * k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384)]
EXPLORE_MIN_CONFIGURATIONS = 10_000


def _calibration(target: str, found: list[Observation]) -> Calibration | None:
    fits, memory = fit_observations(found)
    if not fits:
        return None
    return Calibration(
        target=target,
        fitted_utc="",
        git=GitInfo(commit=None, short=None, dirty=None),
        files=[],
        latency=fits,
        memory=memory,
    )


def leave_one_out_latency(target: str, found: list[Observation], metric: str) -> list[tuple[Observation, float]]:
    """(observation, predicted / measured − 1) for every measurement, predicted by a fit without its cell."""
    out = []
    for key in sorted({o.key for o in found}):
        held = [o for o in found if o.key == key]
        calibration = _calibration(target, [o for o in found if o.key != key])
        if calibration is None:
            continue
        for o in held:
            measured = o.decode_latency_s if metric == "decode" else o.attention_latency_s
            fit = calibration.latency_model(metric, o.group[0], o.group[1])
            if measured is None or fit is None:
                continue
            out.append((o, predict_latency(fit.model, o.features, metric) / measured - 1))
    return out


def leave_one_out_max_batch(found: list[Observation]) -> list[tuple[Observation, int, int]]:
    """(observation, predicted, measured) per cell with a measured max batch, the memory model fitted without
    any cell of its max-batch search."""
    out = []

    def search(o: Observation) -> tuple[str, str, int, str]:
        scenario, variant, _, context, dtype, _ = o.key
        return (scenario, variant, context, dtype)

    for group in sorted({search(o) for o in found}):
        held = [o for o in found if search(o) == group and o.max_batch_measured is not None and o.budget_bytes]
        if not held:
            continue
        _, memory = fit_observations([o for o in found if search(o) != group])
        if memory is None:
            continue
        for o in held:
            assert o.budget_bytes is not None and o.max_batch_measured is not None
            predicted = memory.model.max_batch(o.budget_bytes, o.features.static_bytes, o.features.bytes_per_sequence)
            out.append((o, predicted, o.max_batch_measured))
    return out


def explore_seconds(model: TargetModel) -> tuple[int, float]:
    """Configurations of the default scenario's design space and the seconds to build, predict, rank and take
    its frontier."""
    loaded = load_scenario("scenarios/default.toml")
    scenario = loaded.scenario.model_copy(
        update={"sweep": loaded.scenario.sweep.model_copy(update={"dtype": ["float32", "bfloat16"]})}
    )
    loaded = dataclasses.replace(loaded, scenario=scenario)
    started = time.perf_counter()
    cells = design_space(loaded, generate=True, batch_sizes=EXPLORE_BATCH_SIZES, contexts=EXPLORE_CONTEXTS)
    assert len(cells) >= EXPLORE_MIN_CONFIGURATIONS, len(cells)
    ranked = rank(loaded, cells, model, 8 * 2**30, "throughput")
    frontier(ranked, "throughput")
    return len(cells), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="default: this machine's CPU target")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--worst", type=int, default=5, help="cells furthest from the model to list")
    args = parser.parse_args()
    target = args.target or detect_target("cpu")
    files, found = target_observations(args.results / target)
    print(f"target {target}: {len(found)} measurements of {len({o.key for o in found})} cells in {len(files)} files")
    rows = []
    worst: list[tuple[Observation, float, str]] = []
    for metric in ("decode", "attention"):
        errors = leave_one_out_latency(target, found, metric)
        if errors:
            median, p90 = abs_error_quantiles([e for _, e in errors])
            rows.append([f"{metric} latency", len(errors), f"{median:.1%}", f"{p90:.1%}"])
            worst += [(o, e, metric) for o, e in errors]
    batches = leave_one_out_max_batch(found)
    if batches:
        batch_errors = [p / m - 1 for _, p, m in batches if m > 0]
        median, p90 = abs_error_quantiles(batch_errors)
        rows.append(["max batch (memory fit)", len(batch_errors), f"{median:.1%}", f"{p90:.1%}"])
        within = sum(abs(e) <= 0.05 for e in batch_errors)
        print(f"max batch within 5%: {within} of {len(batch_errors)} cells (leave-one-search-out)")
    recorded = []
    for o, _, measured in batches:
        predicted_then = _recorded_prediction(args.results / target, o)
        if predicted_then is not None and measured > 0:
            recorded.append(predicted_then / measured - 1)
    if recorded:
        median, p90 = abs_error_quantiles(recorded)
        rows.append(["max batch (accounting, recorded)", len(recorded), f"{median:.1%}", f"{p90:.1%}"])
    print(tabulate(rows, headers=["leave-one-out", "cells", "|err| median", "|err| p90"], tablefmt="simple"))
    for metric in ("decode", "attention"):
        of = sorted((item for item in worst if item[2] == metric), key=lambda item: -abs(item[1]))
        if of:
            print()
            print(f"{metric} latency, furthest from the model ({args.worst}):")
            for o, error, _ in of[: args.worst]:
                print(f"  {o.file} {' '.join(str(part) for part in o.key)}: {error:+.1%}")
    model = target_model(args.results, target)
    if model is not None:
        count, seconds = explore_seconds(model)
        print()
        print(f"explore: {count:,} configurations predicted, ranked and frontier taken in {seconds:.2f} s")


def _recorded_prediction(folder: Path, o: Observation) -> int | None:
    """The accounting's max-batch prediction recorded in the cell's result file."""
    from harness.results.store import load_result

    result = load_result(folder / o.file)
    for cell in result.cells:
        if (result.scenario.name, *cell.key) == o.key and cell.metrics is not None and cell.metrics.max_batch:
            return cell.metrics.max_batch.predicted
    return None


if __name__ == "__main__":
    main()
