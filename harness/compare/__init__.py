"""Compare two sets of results cell by cell and decide whether HEAD regressed against BASE.

A latency change counts only when it is both significant on the raw samples (two-sided
Mann-Whitney U below ``alpha``, as asv does) and larger than its threshold (as pytest-benchmark's
``--benchmark-compare-fail`` expresses it), and, for results measured in several rounds, larger
than the run-to-run noise (see cells.run_to_run_noise); otherwise it is shown as ``~``. Memory,
KV-cache bytes and measured max batch carry no samples and are gated on their threshold alone;
bandwidth, derived from a latency median, also has to beat that latency's noise.

Thresholds are strings ``METRIC:VALUE``: ``VALUE`` ending in ``%`` is relative to BASE, a plain
number is absolute in the metric's unit (``max_batch:0`` flags any drop, ``kv_cache_bytes:0`` any
growth). ``median`` sets every latency metric at once; naming one latency metric overrides it.

Each side of a comparison is a result file, a folder (its newest result per scenario), or a git
revision (its committed results for the target of the other side; when both sides are revisions,
the one target committed at both, or the ``target`` given). An argument naming an existing path is
read as that path, never as a revision. Cells are matched on
``(scenario, variant, batch_size, context_len, dtype, backend)``; cells found on one side only, or
not ``ok`` on either side, are listed rather than dropped. A cell that ran at BASE but failed
(``oom``, ``killed``, ``error``, ``timeout``) at HEAD counts as a regression.
"""

from harness.compare.changes import (
    MACHINE_NOISE_FACTOR,
    CellComparison,
    MetricChange,
    SkippedCell,
    cell_label,
    compare_cell,
    latency_change,
    machine_noise,
    run_to_run_noise,
)
from harness.compare.comparison import Comparison, compare_sides, percent
from harness.compare.render import format_value, render_markdown, summary_line
from harness.compare.sides import Side, load_sides
from harness.compare.thresholds import (
    DEFAULT_ALPHA,
    DEFAULT_FAIL_ON,
    FAIL_ON_FLAG,
    LATENCY_METRICS,
    MEDIAN,
    PAIRED_FAIL_ON,
    SCALAR_METRICS,
    Threshold,
    Verdict,
    parse_threshold,
    parse_thresholds,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_FAIL_ON",
    "FAIL_ON_FLAG",
    "LATENCY_METRICS",
    "MACHINE_NOISE_FACTOR",
    "MEDIAN",
    "PAIRED_FAIL_ON",
    "SCALAR_METRICS",
    "CellComparison",
    "Comparison",
    "MetricChange",
    "Side",
    "SkippedCell",
    "Threshold",
    "Verdict",
    "cell_label",
    "compare_cell",
    "compare_sides",
    "format_value",
    "latency_change",
    "load_sides",
    "machine_noise",
    "parse_threshold",
    "parse_thresholds",
    "percent",
    "render_markdown",
    "run_to_run_noise",
    "summary_line",
]
