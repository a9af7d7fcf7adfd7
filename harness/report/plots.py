"""PNG plots of one result: latency, bandwidth, memory, max batch, and the KV-bytes/latency front.

Figures are built as plain :class:`matplotlib.figure.Figure` objects drawn by the Agg renderer,
never through pyplot, so no display is needed and no figure outlives the call that rendered it.
Each ``*_figure`` function returns the figure, or None when the result has nothing to plot (tests read
its legend, error bars and marks); the function of the same name without the suffix returns its PNG
bytes, which the report writes to disk.

What the figures share: a title naming the scenario, the target, the model's scale and the dtypes,
wrapped to the figure's width (:func:`_title`); error bars from each median's p10 to p90; a red ring
around every point whose cell is unstable or failed a self-check, with a legend entry saying so
(:func:`_mark_suspect`, artists with gid ``suspect``); and memory at a single batch size drawn as
horizontal bars per series, named on the axis, instead of a column of dots with a legend entry each.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from harness.png import png_bytes
from harness.report.savings import kv_per_sequence
from harness.results.schema import CellMetrics, RunResult, Summary
from harness.units import format_bytes

DPI = 110
MIB = 2**20
FACET_SIZE = (4.6, 3.4)  # inches per facet
SINGLE_SIZE = (7.0, 4.4)  # inches for a one-panel figure
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")  # tell overlapping lines apart
TITLE_CHARS_PER_INCH = 11  # title characters that fit one inch of figure width, for wrapping
SUSPECT_GID = "suspect"  # gid of every mark on a point whose cell is unstable or failed a self-check
SUSPECT_LABEL = "unstable or failed self-check"
SUSPECT_COLOR = "red"
BAR_HEIGHT_IN = 0.22  # inches per bar of a single-batch memory plot


def _series_names(result: RunResult) -> dict[int, str]:
    """Legend name of each cell (by index): the variant, with dtype and backend when those vary."""
    several = len({(c.dtype, c.backend) for c in result.cells}) > 1
    return {i: f"{c.variant} ({c.dtype}, {c.backend})" if several else c.variant for i, c in enumerate(result.cells)}


def _basis(m: CellMetrics) -> Summary | None:
    """The latency the bandwidths divide by (cold or warm, as the cell records)."""
    return m.decode_latency_cold_s if m.bandwidth_basis == "cold" else m.decode_latency_s


def _at(fraction: float | None, latency: Summary | None, quantile: str) -> float | None:
    """A bandwidth fraction at a latency quantile instead of the median: fraction · median / quantile."""
    if fraction is None or latency is None:
        return None
    return float(fraction * latency.median / getattr(latency, quantile))


def cell_frame(result: RunResult) -> pd.DataFrame:
    """One row per cell that ran, with the plotted quantities in plotting units (ms, MiB, fraction)."""
    names = _series_names(result)
    rows: list[dict[str, Any]] = []
    for index, cell in enumerate(result.cells):
        if cell.status != "ok" or cell.metrics is None:
            continue
        m = cell.metrics
        decode, attention = m.decode_latency_s, m.attention_latency_s
        rows.append(
            {
                "series": names[index],
                "variant": cell.variant,
                "dtype": cell.dtype,
                "backend": cell.backend,
                "batch_size": cell.batch_size,
                "context_len": cell.context_len,
                # per cached token at this context: windows and 8-bit caches counted (harness/report/savings.py)
                "kv_bytes_per_token": kv_per_sequence(cell) / (cell.context_len + 1),
                "decode_ms": None if decode is None else decode.median * 1e3,
                "decode_p10_ms": None if decode is None else decode.p10 * 1e3,
                "decode_p90_ms": None if decode is None else decode.p90 * 1e3,
                "attention_ms": None if attention is None else attention.median * 1e3,
                "bandwidth_fraction": m.bandwidth_fraction,
                # bytes over latency: the fraction's p10-p90 comes from the latency's p90-p10
                "bandwidth_fraction_low": _at(m.bandwidth_fraction, _basis(m), "p90"),
                "bandwidth_fraction_high": _at(m.bandwidth_fraction, _basis(m), "p10"),
                "attention_bandwidth_fraction": m.attention_bandwidth_fraction,
                "attention_bandwidth_fraction_low": _at(m.attention_bandwidth_fraction, attention, "p90"),
                "attention_bandwidth_fraction_high": _at(m.attention_bandwidth_fraction, attention, "p10"),
                "kv_cache_mib": None if m.kv_cache_bytes is None else m.kv_cache_bytes / MIB,
                "peak_memory_mib": None if m.peak_memory_bytes is None else m.peak_memory_bytes / MIB,
                "suspect": bool(cell.unstable or cell.checks_failed),
            }
        )
    return pd.DataFrame(rows)


def series_palette(result: RunResult) -> dict[str, Any]:
    """A fixed colour per plotted series, in the order the variants appear, shared by every plot."""
    names = list(dict.fromkeys(_series_names(result).values()))
    return dict(zip(names, sns.color_palette("tab10", max(len(names), 1)), strict=False))


def _markers(palette: dict[str, Any]) -> dict[str, str]:
    """A marker per series, in palette order, so lines that coincide stay distinguishable."""
    return {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(palette)}


def _series_lines(ax: Axes, panel: pd.DataFrame, x: str, y: str, palette: dict[str, Any]) -> None:
    """One line per variant series, in its colour and marker; the figure carries one shared legend."""
    sns.lineplot(
        panel,
        x=x,
        y=y,
        hue="series",
        palette=palette,
        style="series",
        markers=_markers(palette),
        dashes=False,
        legend=False,
        ax=ax,
    )


def _error_bars(ax: Axes, panel: pd.DataFrame, x: str, y: str, low: str, high: str, palette: dict[str, Any]) -> None:
    """A p10-p90 bar at every point that has one, in its series' colour."""
    spans = panel.dropna(subset=[y, low, high])
    for name, group in spans.groupby("series", sort=False):
        ax.errorbar(
            group[x],
            group[y],
            yerr=[(group[y] - group[low]).clip(lower=0), (group[high] - group[y]).clip(lower=0)],
            fmt="none",
            ecolor=palette.get(str(name), "black"),
            elinewidth=1,
            capsize=2,
            alpha=0.8,
        )


def _mark_suspect(ax: Axes, panel: pd.DataFrame, x: str, y: str) -> bool:
    """A red ring around every point whose cell is unstable or failed a self-check; whether any was marked."""
    suspect = panel[panel["suspect"].eq(True)].dropna(subset=[x, y]) if "suspect" in panel else panel.iloc[0:0]
    if suspect.empty:
        return False
    ax.scatter(
        suspect[x], suspect[y], s=150, facecolors="none", edgecolors=SUSPECT_COLOR, linewidths=1.5, zorder=5
    ).set_gid(SUSPECT_GID)
    return True


def _suspect_handle() -> Line2D:
    handle = Line2D([0], [0], linestyle="none", marker="o", markersize=10, label=SUSPECT_LABEL)
    handle.set_markerfacecolor("none")
    handle.set_markeredgecolor(SUSPECT_COLOR)
    return handle


def _figure(
    n_rows: int, n_cols: int, sharey: bool = False, size: tuple[float, float] | None = None
) -> tuple[Figure, list[list[Axes]]]:
    if size is None:
        size = SINGLE_SIZE if n_rows == n_cols == 1 else (FACET_SIZE[0] * n_cols + 1.8, FACET_SIZE[1] * n_rows + 0.6)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.subplots(n_rows, n_cols, squeeze=False, sharey=sharey)
    return fig, [list(row) for row in grid]


def _png(fig: Figure) -> bytes:
    return png_bytes(fig, DPI)


def _png_or_none(fig: Figure | None) -> bytes | None:
    return None if fig is None else _png(fig)


def model_scale(result: RunResult) -> str:
    """The model's scale and dtypes, for titles: ``d_model 512, 8 layers, 17.0–25.4 M params, float32``."""
    model = result.scenario.model
    parts = []
    if "d_model" in model:
        parts.append(f"d_model {model['d_model']}")
    if "n_layers" in model:
        parts.append(f"{model['n_layers']} layers")
    params = sorted({c.params_total for c in result.cells})
    if params:
        low, high = (f"{p / 1e9:.2f} B" if params[-1] >= 1e9 else f"{p / 1e6:.1f} M" for p in (params[0], params[-1]))
        parts.append(f"{low if low == high else f'{low.split()[0]}–{high}'} params")
    parts.append(", ".join(dict.fromkeys(c.dtype for c in result.cells)) or str(model.get("dtype", "")))
    return ", ".join(part for part in parts if part)


def _title(fig: Figure, result: RunResult, what: str) -> None:
    """The figure's title: what it shows, then the scenario, target, model scale and dtypes, wrapped to its width."""
    width = max(30, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH))
    lines = [what, f"{result.scenario.name} on {result.target} ({model_scale(result)})"]
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=10)


def _series_legend(
    fig: Figure, palette: dict[str, Any], names: Sequence[str], extra: Sequence[Line2D] = (), suspect: bool = False
) -> None:
    markers = _markers(palette)
    handles = [Line2D([0], [0], color=palette[n], marker=markers[n], label=n) for n in names]
    fig.legend(
        handles=[*handles, *extra, *([_suspect_handle()] if suspect else [])],
        title="variant",
        loc="outside right center",
    )


def _context_axis(ax: Axes, contexts: Sequence[int]) -> None:
    """Context length on a log2 axis when it spans a factor of 4 or more, ticks at the measured values."""
    if len(contexts) > 1 and max(contexts) >= 4 * min(contexts):
        ax.set_xscale("log", base=2)
    ax.set_xticks(list(contexts))
    ax.set_xticklabels([str(c) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")


def _fraction_axis(ax: Axes, largest: float, label: str) -> None:
    """A y axis of fractions of the peak, in percent, from 0 to past both the peak line and the largest value."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0%}"))
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, max(1.05, largest * 1.05))
    ax.set_ylabel(label)


def _peak_label(result: RunResult) -> str:
    return f"{result.peak_bandwidth_gbps:.1f} GB/s" if result.peak_bandwidth_gbps else "unknown"


def latency_vs_context_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """Decode step latency against context length, a line per variant, a panel per batch size."""
    frame = cell_frame(result)
    if frame.empty or frame["decode_ms"].isna().all():
        return None
    frame = frame.dropna(subset=["decode_ms"])
    batches = sorted(frame["batch_size"].unique())
    contexts = sorted(frame["context_len"].unique())
    fig, grid = _figure(1, len(batches))
    suspect = False
    for ax, batch in zip(grid[0], batches, strict=True):
        panel = frame[frame["batch_size"] == batch].sort_values("context_len")
        _series_lines(ax, panel, "context_len", "decode_ms", palette)
        _error_bars(ax, panel, "context_len", "decode_ms", "decode_p10_ms", "decode_p90_ms", palette)
        suspect = _mark_suspect(ax, panel, "context_len", "decode_ms") or suspect
        _context_axis(ax, contexts)
        ax.set_ylabel("decode step latency (ms)")
        ax.set_title(f"batch size {batch}")
    _title(fig, result, "Decode latency: median, bars p10–p90")
    _series_legend(fig, palette, list(dict.fromkeys(frame["series"])), suspect=suspect)
    return fig


def latency_vs_context(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(latency_vs_context_figure(result, palette))


def bandwidth_fraction_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """Achieved bandwidth as a fraction of the measured peak against context length: whole decode step
    and core attention, a line per series; None with a single context length."""
    frame = cell_frame(result)
    metrics = [
        (col, title)
        for col, title in (
            ("bandwidth_fraction", "decode step"),
            ("attention_bandwidth_fraction", "core attention"),
        )
        if not frame.empty and frame[col].notna().any()
    ]
    contexts = sorted(frame["context_len"].unique()) if not frame.empty else []
    if not metrics or len(contexts) < 2:  # one context is no line: the tables (and backend bars) show it
        return None
    batches = sorted(frame["batch_size"].unique())
    fig, grid = _figure(len(metrics), len(batches))
    suspect = False
    for row, (col, title) in zip(grid, metrics, strict=True):
        for ax, batch in zip(row, batches, strict=True):
            panel = frame[(frame["batch_size"] == batch) & frame[col].notna()].sort_values("context_len")
            _series_lines(ax, panel, "context_len", col, palette)
            _error_bars(ax, panel, "context_len", col, f"{col}_low", f"{col}_high", palette)
            suspect = _mark_suspect(ax, panel, "context_len", col) or suspect
            _context_axis(ax, contexts)
            _fraction_axis(ax, float(frame[col].max()), f"{title}: % of peak")
            ax.set_title(f"{title}, batch size {batch}")
    _title(
        fig,
        result,
        f"Achieved bandwidth, fraction of the measured peak ({_peak_label(result)}); bars from latency p10–p90",
    )
    _series_legend(fig, palette, list(dict.fromkeys(frame["series"])), suspect=suspect)
    return fig


def bandwidth_fraction(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(bandwidth_fraction_figure(result, palette))


MEMORY_METRICS = (("kv_cache_mib", "KV cache (MiB)"), ("peak_memory_mib", "peak memory (MiB)"))


def memory_vs_batch_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """KV cache bytes and peak memory against batch size, a panel per context length; with one batch size,
    a horizontal bar per series instead (a line needs two points)."""
    frame = cell_frame(result)
    metrics = [(col, label) for col, label in MEMORY_METRICS if not frame.empty and frame[col].notna().any()]
    if not metrics:
        return None
    contexts = sorted(frame["context_len"].unique())
    batches = sorted(frame["batch_size"].unique())
    if len(batches) == 1:
        return _memory_bars(result, frame, metrics, contexts, int(batches[0]), palette)
    fig, grid = _figure(len(metrics), len(contexts))
    suspect = False
    for row, (col, label) in zip(grid, metrics, strict=True):
        for ax, context in zip(row, contexts, strict=True):
            panel = frame[(frame["context_len"] == context) & frame[col].notna()].sort_values("batch_size")
            _series_lines(ax, panel, "batch_size", col, palette)
            suspect = _mark_suspect(ax, panel, "batch_size", col) or suspect
            ax.set_xticks(batches)
            ax.set_xlabel("batch size (sequences)")
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{label.split(' (')[0]}, context {context}")
    _title(fig, result, "Memory against batch size")
    _series_legend(fig, palette, list(dict.fromkeys(frame["series"])), suspect=suspect)
    return fig


def _memory_bars(
    result: RunResult,
    frame: pd.DataFrame,
    metrics: list[tuple[str, str]],
    contexts: list[int],
    batch: int,
    palette: dict[str, Any],
) -> Figure:
    """One batch size: a bar per series (named on the axis, so no legend), a panel per metric and context."""
    series = list(dict.fromkeys(frame["series"]))
    width = max(SINGLE_SIZE[0], 3.4 * len(contexts) + 2.8)
    height = max(SINGLE_SIZE[1], (BAR_HEIGHT_IN * len(series) + 1.0) * len(metrics) + 0.8)
    fig, grid = _figure(len(metrics), len(contexts), sharey=True, size=(width, height))
    suspect = False
    for row, (col, label) in zip(grid, metrics, strict=True):
        for ax, context in zip(row, contexts, strict=True):
            panel = frame[(frame["context_len"] == context) & frame[col].notna()].set_index("series").reindex(series)
            ax.barh(series, panel[col].fillna(0.0), color=[palette.get(name, "grey") for name in series])
            marked = panel[panel["suspect"].eq(True)]
            if not marked.empty:
                suspect = True
                ax.scatter(
                    marked[col], list(marked.index), marker="X", s=60, color=SUSPECT_COLOR, zorder=5, gid=SUSPECT_GID
                )
            ax.set_xlabel(label)
            ax.set_xlim(left=0)
            ax.set_title(f"{label.split(' (')[0]}, context {context}")
    grid[0][0].invert_yaxis()  # shared by every panel: the first series on top, in run order
    _title(fig, result, f"Memory at batch size {batch}")
    if suspect:
        fig.legend(handles=[_suspect_handle()], loc="outside lower center")
    return fig


def memory_vs_batch(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(memory_vs_batch_figure(result, palette))


def max_batch_frame(result: RunResult) -> pd.DataFrame:
    """Predicted and measured max batch per series and context (first cell that carries it)."""
    names = _series_names(result)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for index, cell in enumerate(result.cells):
        if cell.metrics is None or cell.metrics.max_batch is None:
            continue
        series = names[index]
        mb = cell.metrics.max_batch
        key = (series, cell.context_len)
        if key not in rows or rows[key]["measured"] is None:
            rows[key] = {
                "series": series,
                "context_len": cell.context_len,
                "budget_bytes": mb.budget_bytes,
                "predicted": mb.predicted,
                "measured": mb.measured,
            }
    return pd.DataFrame(list(rows.values()))


def max_batch_vs_context_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """Max batch under the budget against context length: predicted dashed, measured solid."""
    frame = max_batch_frame(result)
    if frame.empty:
        return None
    contexts = sorted(frame["context_len"].unique())
    fig, grid = _figure(1, 1)
    ax = grid[0][0]
    for name, group in frame.groupby("series", sort=False):
        group = group.sort_values("context_len")
        color, marker = palette.get(str(name), "black"), _markers(palette).get(str(name), "o")
        ax.plot(
            group["context_len"], group["predicted"], linestyle="--", marker=marker, markerfacecolor="none", color=color
        )
        measured = group.dropna(subset=["measured"])
        ax.plot(measured["context_len"], measured["measured"], linestyle="-", marker=marker, color=color)
    _context_axis(ax, contexts)
    values = pd.concat([frame["predicted"], frame["measured"].dropna()])
    if values.min() > 0 and values.max() >= 20 * values.min():
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_ylabel("max batch (sequences)")
    budgets = sorted({format_bytes(b) for b in frame["budget_bytes"]})
    ax.set_title(f"budget {', '.join(budgets)}")
    _title(fig, result, "Max batch under the memory budget")
    styles = [
        Line2D([0], [0], color="grey", linestyle="--", marker="o", markerfacecolor="none", label="predicted"),
        Line2D([0], [0], color="grey", linestyle="-", marker="o", label="measured"),
    ]
    _series_legend(fig, palette, list(dict.fromkeys(frame["series"])), styles)
    return fig


def max_batch_vs_context(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(max_batch_vs_context_figure(result, palette))


def reference_cell(frame: pd.DataFrame) -> tuple[int, int] | None:
    """(batch, context) where the most variants have a decode latency; ties go to the largest context, then batch."""
    timed = frame.dropna(subset=["decode_ms"]) if not frame.empty else frame
    if timed.empty:
        return None
    counts = timed.groupby(["batch_size", "context_len"]).size()
    best = max(counts.index, key=lambda k: (counts[k], k[1], k[0]))
    return int(best[0]), int(best[1])


def _label_points(ax: Axes, panel: pd.DataFrame, x: str, y: str) -> None:
    """Name each point beside it, moving a label down while it would overlap one already placed."""
    placed: list[tuple[float, float]] = []  # label anchors in display pixels
    points = sorted(zip(panel[x], panel[y], panel["series"], strict=True), key=lambda p: -p[1])
    for px, py, name in points:
        sx, sy = ax.transData.transform((px, py))
        offset = 4.0
        while any(abs(sx - qx) < 110 and abs(sy + offset - qy) < 11 for qx, qy in placed):
            offset -= 11
        placed.append((sx, sy + offset))
        ax.annotate(str(name), (px, py), textcoords="offset pixels", xytext=(7, offset), fontsize=8, va="center")


def kv_bytes_vs_latency_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """The memory/latency front: KV bytes per token against decode latency at one reference cell."""
    frame = cell_frame(result)
    ref = reference_cell(frame)
    if ref is None:
        return None
    batch, context = ref
    panel = frame[(frame["batch_size"] == batch) & (frame["context_len"] == context)].dropna(subset=["decode_ms"])
    panel = panel.assign(kv_kib_per_token=panel["kv_bytes_per_token"] / 1024)
    fig, grid = _figure(1, 1)
    ax = grid[0][0]
    sns.scatterplot(
        panel,
        x="kv_kib_per_token",
        y="decode_ms",
        hue="series",
        palette=palette,
        style="series",
        markers=_markers(palette),
        s=70,
        legend=False,
        ax=ax,
    )
    _error_bars(ax, panel, "kv_kib_per_token", "decode_ms", "decode_p10_ms", "decode_p90_ms", palette)
    suspect = _mark_suspect(ax, panel, "kv_kib_per_token", "decode_ms")
    ax.set_xlabel("KV cache per cached token at this context (KiB)")
    ax.set_ylabel("decode step latency (ms, median, bars p10–p90)")
    ax.set_xlim(left=0, right=float(panel["kv_kib_per_token"].max()) * 1.25)
    _label_points(ax, panel, "kv_kib_per_token", "decode_ms")
    ax.set_title(f"batch size {batch}, context {context}")
    _title(fig, result, "KV bytes per token against decode latency")
    _series_legend(fig, palette, list(dict.fromkeys(panel["series"])), suspect=suspect)
    return fig


def kv_bytes_vs_latency(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(kv_bytes_vs_latency_figure(result, palette))


def backend_bandwidth_figure(result: RunResult, palette: dict[str, Any]) -> Figure | None:
    """Core-attention bandwidth as a fraction of peak, a bar per backend with its p10-p90, grouped by variant.

    A panel per dtype and batch size, at the longest context measured. Only for runs with more than
    one backend: this is the plot that ranks them.
    """
    frame = cell_frame(result)
    if frame.empty or frame["backend"].nunique() < 2 or frame["attention_bandwidth_fraction"].isna().all():
        return None
    frame = frame[frame["attention_bandwidth_fraction"].notna()]
    longest = int(frame["context_len"].max())
    frame = frame[frame["context_len"] == longest]
    panels = list(dict.fromkeys(zip(frame["dtype"], frame["batch_size"], strict=True)))
    backends = list(dict.fromkeys(frame["backend"]))
    colours = dict(zip(backends, sns.color_palette("tab10", len(backends)), strict=False))
    fig, grid = _figure(1, len(panels), sharey=True)
    variants = list(dict.fromkeys(frame["variant"]))
    width = 0.8 / len(backends)
    suspect = False
    for ax, (dtype, batch) in zip(grid[0], panels, strict=True):
        panel = frame[(frame["dtype"] == dtype) & (frame["batch_size"] == batch)]
        for i, backend in enumerate(backends):
            bars = panel[panel["backend"] == backend].set_index("variant").reindex(variants)
            x = [v + (i - (len(backends) - 1) / 2) * width for v in range(len(variants))]
            y = bars["attention_bandwidth_fraction"]
            ax.bar(x, y.fillna(0.0), width=width, color=colours[backend])
            spans = bars.assign(x=x).dropna(subset=["attention_bandwidth_fraction_low"])
            ax.errorbar(
                spans["x"],
                spans["attention_bandwidth_fraction"],
                yerr=[
                    (spans["attention_bandwidth_fraction"] - spans["attention_bandwidth_fraction_low"]).clip(lower=0),
                    (spans["attention_bandwidth_fraction_high"] - spans["attention_bandwidth_fraction"]).clip(lower=0),
                ],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=1.5,
            )
            suspect = _mark_suspect(ax, bars.assign(x=x).reset_index(), "x", "attention_bandwidth_fraction") or suspect
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=30, ha="right")
        _fraction_axis(ax, float(frame["attention_bandwidth_fraction"].max()), "core attention: % of peak")
        ax.set_xlabel("")
        ax.set_title(f"{dtype}, batch size {batch}")
    _title(
        fig, result, f"Core attention by backend, context {longest}, fraction of measured peak ({_peak_label(result)})"
    )
    handles = [Line2D([0], [0], color=colours[b], linewidth=8, label=b) for b in backends]
    fig.legend(
        handles=[*handles, *([_suspect_handle()] if suspect else [])], title="backend", loc="outside right center"
    )
    return fig


def backend_bandwidth(result: RunResult, palette: dict[str, Any]) -> bytes | None:
    return _png_or_none(backend_bandwidth_figure(result, palette))


# File name suffix, alt text and function of each plot, in report order.
PLOTS = (
    ("latency-vs-context", "Decode latency against context length", latency_vs_context),
    ("bandwidth-fraction", "Achieved bandwidth as a fraction of peak", bandwidth_fraction),
    ("memory-vs-batch", "KV cache and peak memory against batch size", memory_vs_batch),
    ("max-batch-vs-context", "Max batch under the budget against context length", max_batch_vs_context),
    ("kv-bytes-vs-latency", "KV bytes per token against decode latency", kv_bytes_vs_latency),
    ("backend-bandwidth", "Core attention bandwidth by backend", backend_bandwidth),
)
