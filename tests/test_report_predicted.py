"""The report's predicted-against-measured section, from the predictions cells recorded."""

from __future__ import annotations

from pathlib import Path

from helpers_predict import modelled_run

from harness.report.predicted import pairs, prediction_section
from harness.report.render import LoadedResult, render_target
from harness.results.schema import CellPrediction, RunResult


def _predicted(run: RunResult, off: dict[str, float]) -> RunResult:
    """Each cell predicted at its measured decode median times ``off.get(variant, 1.0)``."""
    cells = []
    for cell in run.cells:
        assert cell.metrics is not None and cell.metrics.decode_latency_s is not None
        measured = cell.metrics.decode_latency_s.median
        predicted = measured * off.get(cell.variant, 1.0)
        cells.append(
            cell.model_copy(
                update={
                    "prediction": CellPrediction(
                        source="calibration", decode_latency_s=predicted, decode_error_fraction=predicted / measured - 1
                    )
                }
            )
        )
    return run.model_copy(update={"cells": cells})


def test_section_plots_every_predicted_latency_and_lists_only_cells_far_from_the_model():
    run = _predicted(modelled_run(), {"H64-MQA": 1.6, "H64-GQA2": 1.1})
    lines, files = prediction_section(run, "x.png")
    text = "\n".join(lines)
    assert len(pairs(run)) == 20
    assert files["x.png"].startswith(b"\x89PNG")
    assert "Far from the model" in text
    far_rows = [line for line in text.splitlines() if line.startswith("| H64")]
    assert len(far_rows) == 4 and all("H64-MQA " in row and "+60%" in row for row in far_rows)


def test_section_says_every_latency_is_close_when_none_is_far():
    lines, _ = prediction_section(_predicted(modelled_run(), {"H64-MQA": 1.1}), "x.png")
    assert "Every latency is within 25% of its prediction." in lines


def test_a_run_without_predictions_has_no_section(tmp_path: Path):
    lines, files = prediction_section(modelled_run(), "x.png")
    assert (lines, files) == ([], {})
    rendered = render_target([LoadedResult(tmp_path / "r.json", modelled_run())], tmp_path)
    assert "Predicted against measured" not in rendered["REPORT.md"]


def test_the_target_report_links_the_predicted_plot(tmp_path: Path):
    rendered = render_target([LoadedResult(tmp_path / "r.json", _predicted(modelled_run(), {}))], tmp_path)
    assert "### Predicted against measured" in rendered["REPORT.md"]
    assert "(default-predicted-vs-measured.png)" in rendered["REPORT.md"]
    assert "default-predicted-vs-measured.png" in rendered
