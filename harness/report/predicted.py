"""The report's *Predicted against measured* section: each cell's recorded prediction (harness/predict/) beside
its measurement, as a plot around the y = x line and a list of the cells far from the model."""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.lines import Line2D
from tabulate import tabulate

from harness.predict.fit import abs_error_quantiles
from harness.report.plots import _figure, _png
from harness.results.schema import RunResult

FAR_FROM_MODEL = 0.25  # |predicted / measured − 1| beyond this: a slow kernel, a broken measurement, or the model
METRICS = (("decode", "decode_latency_s", "decode step"), ("attention", "attention_latency_s", "core attention"))


@dataclass(frozen=True)
class Pair:
    variant: str
    batch_size: int
    context_len: int
    dtype: str
    backend: str
    metric: str  # decode | attention
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        return self.predicted_s / self.measured_s - 1


def pairs(result: RunResult) -> list[Pair]:
    """Every latency of the run with a recorded prediction and a measurement."""
    out = []
    for cell in result.cells:
        prediction, metrics = cell.prediction, cell.metrics
        if prediction is None or metrics is None or cell.status != "ok":
            continue
        for metric, field, _ in METRICS:
            predicted, measured = getattr(prediction, field), getattr(metrics, field)
            if predicted is not None and measured is not None:
                backend = cell.backend_used or cell.backend
                out.append(
                    Pair(
                        cell.variant, cell.batch_size, cell.context_len, cell.dtype, backend, metric,
                        predicted, measured.median,
                    )
                )  # fmt: skip
    return out


def predicted_vs_measured_plot(found: list[Pair]) -> bytes:
    """Log-log scatter of predicted against measured latency per metric, the y = x line and a ±25% band."""
    fig, grid = _figure(1, 1)
    ax = grid[0][0]
    lowest = min(min(p.predicted_s, p.measured_s) for p in found) * 1e3 / 1.3
    highest = max(max(p.predicted_s, p.measured_s) for p in found) * 1e3 * 1.3
    line = [lowest, highest]
    ax.plot(line, line, color="black", linewidth=1)
    ax.plot(line, [v * (1 + FAR_FROM_MODEL) for v in line], color="grey", linestyle=":", linewidth=1)
    ax.plot(line, [v * (1 - FAR_FROM_MODEL) for v in line], color="grey", linestyle=":", linewidth=1)
    handles = [
        Line2D([0], [0], color="black", label="y = x"),
        Line2D([0], [0], color="grey", linestyle=":", label="±25%"),
    ]
    for (metric, _, label), (color, marker) in zip(METRICS, (("tab:blue", "o"), ("tab:orange", "s")), strict=True):
        of = [p for p in found if p.metric == metric]
        if of:
            ax.scatter(
                [p.measured_s * 1e3 for p in of], [p.predicted_s * 1e3 for p in of], color=color, marker=marker, s=18
            )
            handles.append(Line2D([0], [0], color=color, marker=marker, linestyle="", label=label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lowest, highest)
    ax.set_ylim(lowest, highest)
    ax.set_xlabel("measured median latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.legend(handles=handles, loc="upper left")
    return _png(fig)


def far_cells_table(found: list[Pair]) -> str | None:
    """The latencies whose measurement is more than FAR_FROM_MODEL from the prediction, worst first."""
    far = sorted((p for p in found if abs(p.error) > FAR_FROM_MODEL), key=lambda p: -abs(p.error))
    if not far:
        return None
    rows = [
        [p.variant, p.batch_size, p.context_len, p.dtype, p.backend, p.metric,
         f"{p.predicted_s * 1e3:.3f}", f"{p.measured_s * 1e3:.3f}", f"{p.error:+.0%}"]
        for p in far
    ]  # fmt: skip
    headers = ["variant", "batch", "context", "dtype", "backend", "latency", "predicted ms", "measured ms", "error"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def prediction_section(result: RunResult, image_name: str) -> tuple[list[str], dict[str, bytes]]:
    """The section's markdown lines and its PNG by file name; nothing when no cell recorded a prediction."""
    found = pairs(result)
    if not found:
        return [], {}
    sources = sorted({c.prediction.source for c in result.cells if c.prediction is not None})
    lines = ["### Predicted against measured", ""]
    summary = []
    for metric, _, label in METRICS:
        errors = [p.error for p in found if p.metric == metric]
        if errors:
            median, p90 = abs_error_quantiles(errors)
            summary.append(f"{label}: |error| median {median:.1%}, p90 {p90:.1%} over {len(errors)} cells")
    lines += [
        f"Each cell's latency as the target's cost model predicted it before measuring ({' and '.join(sources)}; "
        "docs/metrics.md, *Predicting before measuring*) against its warm median. " + "; ".join(summary) + ".",
        "",
        f"![Predicted against measured latency, {result.scenario.name} on {result.target}]({image_name})",
        "",
    ]
    far = far_cells_table(found)
    if far is None:
        lines += [f"Every latency is within {FAR_FROM_MODEL:.0%} of its prediction.", ""]
    else:
        lines += [
            f"Far from the model (more than {FAR_FROM_MODEL:.0%} off): a slow kernel, a disturbed measurement, or "
            "a cost the model does not have.",
            "",
            far,
            "",
        ]
    return lines, {image_name: predicted_vs_measured_plot(found)}
