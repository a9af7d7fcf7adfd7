"""How ``attnbench plan --predict`` and ``attnbench explore`` say where a prediction comes from, and its table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.errors import UserError
from harness.hardware import detect_target
from harness.predict.cells import predict_scenario
from harness.predict.predictor import TargetModel, calibration_path, target_model
from harness.predict.vendor import vendor_targets
from harness.scenario import LoadedScenario
from harness.units import format_bytes


def resolve_model(target: str | None, results: str) -> TargetModel:
    """The cost model of ``target`` (default this machine's CPU target): its calibration, else vendor figures."""
    name = target or detect_target("cpu")
    found = target_model(Path(results), name)
    if found is None:
        raise UserError(
            f"no calibration for target {name!r} (run attnbench calibrate {name} after measuring on it) and no "
            f"vendor figures for it (known: {', '.join(vendor_targets())})",
            source=str(calibration_path(Path(results), name)),
        )
    return found


def source_line(model: TargetModel) -> str:
    """One line naming what the predictions rest on; vendor figures are marked as not fitted."""
    if model.calibration is not None:
        c = model.calibration
        commit = c.git.short or "unknown commit"
        return (
            f"predicted for {model.target} from its calibration (fitted {c.fitted_utc} at {commit} on "
            f"{len(c.files)} result files)"
        )
    assert model.vendor is not None
    return (
        f"VENDOR FIGURES, not calibrated: {model.target} has no calibration.json, so these use its data sheet "
        f"({model.vendor.bandwidth_gbps:,.0f} GB/s, {model.vendor.tensor_tflops:,.0f} TFLOP/s dense 16-bit, "
        f"{model.vendor.fp32_tflops:,.0f} float32) with no overheads: a lower bound on latency"
    )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def prediction_rows(rows: list[dict[str, Any]], vendor: bool) -> tuple[list[list[str]], list[str]]:
    """Table rows and headers of predicted cells; every value column says 'vendor' when that is its source."""
    mark = " (vendor)" if vendor else ""
    headers = [
        "variant",
        "batch",
        "context",
        "dtype",
        "backend",
        f"decode ms{mark}",
        f"attention ms{mark}",
        "GB/s",
        "bound",
        "peak memory",
        "max batch",
    ]
    table = [
        [
            r["variant"],
            str(r["batch_size"]),
            str(r["context_len"]),
            r["dtype"],
            r["backend"],
            _ms(r["decode_latency_s"]),
            _ms(r["attention_latency_s"]),
            "-" if r["bandwidth_gbps"] is None else f"{r['bandwidth_gbps']:.1f}",
            r["bound"] or "-",
            format_bytes(r["peak_memory_bytes"]) if r["peak_memory_bytes"] is not None else "-",
            "-" if r["max_batch"] is None else str(r["max_batch"]),
        ]
        for r in rows
    ]
    return table, headers


def print_predictions(model: TargetModel, rows: list[dict[str, Any]]) -> None:
    print(source_line(model))
    table, headers = prediction_rows(rows, vendor=model.calibration is None)
    print(tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))


def run_predict(loaded: LoadedScenario, data: dict[str, Any], args: argparse.Namespace) -> int:
    """``plan --predict``: the predicted cells as a table, or with ``--json`` the plan with a ``predictions``
    list and its ``prediction_source``."""
    model = resolve_model(args.target, args.results)
    rows = predict_scenario(loaded, model)
    if args.json:
        print(json.dumps(data | {"prediction_source": source_line(model), "predictions": rows}, indent=1))
        return 0
    print_predictions(model, rows)
    return 0
