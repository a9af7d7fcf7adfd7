"""The history of one scenario on one target as a PNG a report can show (``history-<scenario>.png``).

One panel per metric (:data:`harness.history.series.METRICS`); every cell is a line over the commit
axis, divided by its own first level so that cells of any size share the panel (1.0: as at its first
commit). Intervals are error bars (divided alike), unstable or check-failing points a red cross, and
each confirmed step a dashed vertical line. Cells with a step are drawn in colour and named in the
legend (at most LEGEND_CELLS of them); the others are grey, so the figure stays readable at any number
of cells.
"""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.history.series import METRICS, Series, TargetHistory
from harness.png import png_bytes

DPI = 110
LEGEND_CELLS = 8


def _first_level(series: Series) -> float | None:
    """The cell's level at its first commit (its stable points' median there): what the line divides by."""
    stable = [p for p in series.points if p.unstable is None] or list(series.points)
    first = min(p.position for p in stable)
    values = sorted(p.value for p in stable if p.position == first)
    level = values[len(values) // 2]
    return level if level else None


def render_figure(history: TargetHistory, scenario: str) -> bytes:
    """The PNG of ``scenario``'s history on ``history.target``."""
    fig = Figure(figsize=(13, 8.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).flatten()
    labels = [c.label for c in history.commits]
    stepped = sorted({s.cell for s in history.series if s.scenario == scenario and any(st.confirmed for st in s.steps)})
    named = stepped[:LEGEND_CELLS]
    colours = {cell: f"C{i % 10}" for i, cell in enumerate(named)}
    for ax, (metric, title, _) in zip(axes, METRICS, strict=True):
        chosen = [s for s in history.series if s.scenario == scenario and s.metric == metric]
        for series in chosen:
            base = _first_level(series)
            if base is None:
                continue
            colour = colours.get(series.cell, "0.7")
            points = sorted(series.points, key=lambda p: p.position)
            xs = [p.position for p in points]
            ys = [p.value / base for p in points]
            ax.plot(
                xs,
                ys,
                color=colour,
                linewidth=1.6 if series.cell in colours else 0.8,
                zorder=2 if series.cell in colours else 1,
            )
            for p in points:
                if p.low is not None and p.high is not None:
                    ax.plot([p.position] * 2, [p.low / base, p.high / base], color=colour, linewidth=1.0)
                if p.unstable is not None:
                    ax.plot(p.position, p.value / base, marker="x", color="#c22", markersize=7, mew=2, zorder=3)
            for step in series.steps:
                if step.confirmed and series.cell in colours:
                    middle = (series.level_positions[step.before] + series.level_positions[step.after]) / 2
                    ax.axvline(middle, color=colour, linestyle="--", linewidth=1.2)
        ax.axhline(1.0, color="0.4", linewidth=0.6)
        ax.set_title(title + ("" if chosen else " (not measured)"), fontsize=10)
        ax.set_ylabel("relative to the cell's first commit")
        ax.set_xlim(-0.5, len(labels) - 0.5)  # every commit of the target, measured in this scenario or not
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    handles = [fig.axes[0].plot([], [], color=colours[c], label=c)[0] for c in named]
    handles.append(fig.axes[0].plot([], [], marker="x", color="#c22", linestyle="", label="unstable / failed check")[0])
    more = f" (+{len(stepped) - len(named)} more with steps)" if len(stepped) > len(named) else ""
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, title=f"cells with a step{more}")
    cells = len({s.cell for s in history.series if s.scenario == scenario})
    fig.suptitle(
        f"{history.target}: {scenario} ({history.models.get(scenario, '')}), history of {cells} cells over "
        f"{len(labels)} commits; dashed: a step that persisted",
        fontsize=11,
    )
    return png_bytes(fig, DPI)
