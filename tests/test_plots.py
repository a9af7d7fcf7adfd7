"""Report figures: legends a reader can use, p10-p90 error bars, marks on unstable cells, informative titles.

Each test reads the matplotlib Figure a plot function builds (its legend entries, error-bar containers,
artists and title), not its pixels.
"""

from __future__ import annotations

from helpers_results import lognormal_samples, make_cell, make_run
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from harness.report import plots
from harness.results.schema import CellResult, RunResult, Stability

VARIANTS = ("H128-MHA", "H128-GQA2", "H128-MQA")


def _run(batches=(1, 4), contexts=(1024, 4096), dtypes=("bfloat16",), backends=("sdpa",)) -> RunResult:
    cells = [
        make_cell(
            variant,
            batch_size=batch,
            context_len=context,
            dtype=dtype,
            backend=backend,
            decode_samples=lognormal_samples(0.001 * batch * context / 1024 * (i + 1), sigma=0.05, seed=i),
        )
        for i, variant in enumerate(VARIANTS)
        for dtype in dtypes
        for backend in backends
        for context in contexts
        for batch in batches
    ]
    with_fraction = [
        c.model_copy(update={"metrics": c.metrics.model_copy(update={"bandwidth_fraction": 0.5})})
        for c in cells
        if c.metrics is not None
    ]
    return make_run(with_fraction)


def _unstable(result: RunResult, variant: str = "H128-GQA2") -> RunResult:
    def mark(cell: CellResult) -> CellResult:
        if cell.variant != variant:
            return cell
        return cell.model_copy(update={"stability": Stability(unstable=True, reasons=["rounds disagreed"])})

    return result.model_copy(update={"cells": [mark(c) for c in result.cells]})


def _legend_labels(fig: Figure) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def _suspect_marks(fig: Figure) -> list[object]:
    return [artist for ax in fig.axes for artist in ax.get_children() if artist.get_gid() == plots.SUSPECT_GID]


def test_latency_plot_has_a_p10_p90_error_bar_per_series_in_every_panel() -> None:
    result = _run()
    fig = plots.latency_vs_context_figure(result, plots.series_palette(result))
    assert fig is not None
    for ax in fig.axes:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == len(VARIANTS)


def test_the_bandwidth_plot_has_error_bars_from_the_latency_spread() -> None:
    result = _run()
    fig = plots.bandwidth_fraction_figure(result, plots.series_palette(result))
    assert fig is not None
    bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(VARIANTS) * 2  # a panel per batch size


def test_the_kv_bytes_against_latency_front_carries_error_bars() -> None:
    result = _run()
    fig = plots.kv_bytes_vs_latency_figure(result, plots.series_palette(result))
    assert fig is not None
    assert any(isinstance(c, ErrorbarContainer) for c in fig.axes[0].containers)


def test_unstable_cells_are_ringed_and_the_legend_says_what_the_ring_means() -> None:
    result = _unstable(_run())
    palette = plots.series_palette(result)
    for build in (plots.latency_vs_context_figure, plots.kv_bytes_vs_latency_figure, plots.memory_vs_batch_figure):
        fig = build(result, palette)
        assert fig is not None
        assert _suspect_marks(fig), build.__name__
        assert plots.SUSPECT_LABEL in _legend_labels(fig), build.__name__


def test_a_run_without_unstable_cells_has_no_marks_and_no_legend_entry_for_them() -> None:
    result = _run()
    fig = plots.latency_vs_context_figure(result, plots.series_palette(result))
    assert fig is not None
    assert not _suspect_marks(fig)
    assert _legend_labels(fig) == list(VARIANTS)


def test_many_series_at_one_batch_size_are_bars_named_on_the_axis_not_a_legend() -> None:
    # 3 variants x 3 dtypes x 5 backends = 45 series at a single batch size and context
    result = _run(
        batches=(1,),
        contexts=(131072,),
        dtypes=("float32", "bfloat16", "float16"),
        backends=("eager", "sdpa", "grouped", "native", "auto"),
    )
    fig = plots.memory_vs_batch_figure(result, plots.series_palette(result))
    assert fig is not None
    assert _legend_labels(fig) == []
    for ax in fig.axes:
        assert len(ax.patches) == 45
        assert [t.get_text() for t in ax.get_yticklabels()] == list(dict.fromkeys(plots.cell_frame(result)["series"]))


def test_single_batch_memory_bars_mark_an_unstable_cell() -> None:
    result = _unstable(_run(batches=(1,)))
    fig = plots.memory_vs_batch_figure(result, plots.series_palette(result))
    assert fig is not None
    assert _suspect_marks(fig) and _legend_labels(fig) == [plots.SUSPECT_LABEL]


def test_titles_name_the_target_the_model_scale_and_the_dtype_and_fit_the_figure() -> None:
    result = _run()
    palette = plots.series_palette(result)
    for build in (
        plots.latency_vs_context_figure,
        plots.bandwidth_fraction_figure,
        plots.memory_vs_batch_figure,
        plots.max_batch_vs_context_figure,
        plots.kv_bytes_vs_latency_figure,
    ):
        fig = build(result, palette)
        assert fig is not None and fig._suptitle is not None, build.__name__
        title = fig._suptitle.get_text()
        flat = " ".join(title.split())
        assert result.target in flat and "d_model 1024, 4 layers, 50.0 M params" in flat and "bfloat16" in flat
        width = int(fig.get_figwidth() * plots.TITLE_CHARS_PER_INCH)
        assert all(len(line) <= width for line in title.splitlines()), build.__name__


def test_the_backend_bars_carry_error_bars_and_ring_an_unstable_cell() -> None:
    cells = []
    for backend in ("sdpa", "grouped"):
        for variant in VARIANTS:
            cell = make_cell(
                variant,
                batch_size=1,
                backend=backend,
                attention_samples=lognormal_samples(0.0005, sigma=0.05),
            )
            assert cell.metrics is not None
            metrics = cell.metrics.model_copy(update={"attention_bandwidth_fraction": 0.4})
            cells.append(cell.model_copy(update={"metrics": metrics}))
    result = _unstable(make_run(cells), "H128-MQA")
    fig = plots.backend_bandwidth_figure(result, plots.series_palette(result))
    assert fig is not None
    (ax,) = fig.axes
    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == 2  # one per backend
    assert len(ax.patches) == 2 * len(VARIANTS)
    assert _suspect_marks(fig) and plots.SUSPECT_LABEL in _legend_labels(fig)
