"""Assemble REPORT.md per target and CROSS_TARGET.md from results: text and PNG bytes, no disk writes.

:func:`render_target` returns every file of one target's report folder as data (file name ->
markdown text or PNG bytes), so that the caller writes nothing until the whole report rendered.
Image links are relative to the report, so the folder reads the same on a code-hosting site.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.cellkey import CellKey
from harness.history import PAGE_NAME, figure_name
from harness.measure.window import STEADY_TOLERANCE
from harness.report import paging, plots, predicted, prefill, roofline, savings, tables, tp_section
from harness.report.claims import TOLERANCE_NOTES, check_claims
from harness.report.provenance import banner, missing_evidence, rendered_by, without_evidence
from harness.report.verdict import verdict_section
from harness.results.schema import CellResult, GitInfo, RunResult, Summary
from harness.results.stability import noise_floor

REPORT_NAME = "REPORT.md"
CROSS_TARGET_NAME = "CROSS_TARGET.md"
MISSING_PEAK = "not measured"

# Summary fields of CellMetrics with their section title and what the numbers are.
LATENCY_SECTIONS = (
    ("decode_latency_s", "Decode latency", "One decode step of the whole stack, warm"),
    ("decode_latency_cold_s", "Decode latency, cold caches", "One decode step with caches flushed between samples"),
    ("decode_latency_host_s", "Decode latency, host-inclusive", "One eager decode step including host overhead"),
    (
        "attention_latency_s",
        "Core attention latency",
        "The attention operation alone over the cache, all L layers, warm",
    ),
    ("attention_latency_cold_s", "Core attention latency, cold caches", "Core attention with caches flushed"),
)


@dataclass(frozen=True)
class LoadedResult:
    """A validated result and the file it came from."""

    path: Path
    result: RunResult


def slug(name: str) -> str:
    """A file-name-safe form of a scenario name: ``cla small/v2`` -> ``cla-small-v2``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "scenario"


def _link(path: Path, report_dir: Path) -> str:
    """A markdown link to ``path`` relative to the report's folder (POSIX separators)."""
    try:
        rel = Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        rel = path.as_posix()
    return f"[`{path.name}`]({rel})"


def _sample_counts(result: RunResult) -> tuple[int, int] | None:
    counts = [
        len(summary.samples)
        for cell in result.cells
        if cell.metrics is not None
        for field, _, _ in LATENCY_SECTIONS
        if (summary := getattr(cell.metrics, field)) is not None
    ]
    return (min(counts), max(counts)) if counts else None


def _window_sentences(summaries: list[Summary], measure: dict[str, Any]) -> list[str]:
    """How long the rounds warmed up and how closely each pinned its median down (harness/measure/window.py)."""
    steady = [flag for s in summaries for flag in s.process_warmup_steady if flag is not None]
    widths = sorted(w for s in summaries for w in s.process_ci_half_widths if w is not None)
    out = []
    if steady:
        warmups = sorted(w for s in summaries for w in s.process_warmup_s)
        out.append(
            f"Warm-up went on until the step time was steady (three successive windows within "
            f"{measure.get('target_ci') or STEADY_TOLERANCE:.0%}): {sum(steady)} of {len(steady)} rounds got there, in "
            f"{warmups[0]:.2f}–{warmups[-1]:.2f} s."
        )
    if widths and measure.get("target_ci"):
        reached = sum(w <= measure["target_ci"] for w in widths)
        out.append(
            f"Sampling went on until each round's median was known within ±{measure['target_ci']:.0%} (95% interval): "
            f"{reached} of {len(widths)} rounds got there within the time cap; the median round's interval was "
            f"±{widths[len(widths) // 2]:.1%}."
        )
    return out


def how_measured(result: RunResult) -> str:
    """A paragraph on timing, statistics, bandwidth and memory for this result."""
    measure = result.scenario.measure
    metrics = [c.metrics for c in result.cells if c.metrics is not None]
    summaries = [
        summary
        for m in metrics
        for field, _, _ in LATENCY_SECTIONS
        if field != "decode_latency_host_s" and (summary := getattr(m, field)) is not None
    ]
    parts = []
    if result.device == "cuda":
        graphed = [s.graph_used for s in summaries if s.graph_used is not None]
        if graphed and all(graphed):
            how = "every latency is device time of CUDA-graph replays, each graph checked against the eager step"
        elif any(graphed):
            eager = sum(1 for used in graphed if not used)
            how = (
                f"latencies are device time of CUDA-graph replays, except {eager} sample sets timed as eager calls "
                "because capture failed (their `graph_error` says why)"
            )
        else:
            how = "latencies are device time of eager calls (no CUDA graph was used)"
        parts.append(
            "Steps were timed with CUDA events and one synchronisation per batch of samples at read-out; "
            f"{how}. The host-inclusive eager step is shown beside the decode latency where it was measured."
        )
    else:
        parts.append(
            "Decode steps were timed on the host with `time.perf_counter`, each warm sample calibrated to span many "
            "timer ticks, with garbage collection off while timing."
        )
    inner = sorted({s.inner_reps for s in summaries if s.inner_reps is not None and s.inner_reps > 1})
    if inner:
        parts.append(
            f"A warm sample is the mean of {inner[0]}–{inner[-1]} back-to-back calls (calls per sample are kept per "
            "metric and repeated in later rounds), so its spread is narrower than that of single calls."
        )
    flushes = sorted({s.flush for s in summaries if s.flush})
    if flushes:
        parts.append(
            "Cold samples are single calls right after the caches were emptied of what the step reads, outside the "
            f"timed region ({'; '.join(flushes[:2])}{'; ...' if len(flushes) > 2 else ''}); cold core attention "
            "times each layer on its own and empties the caches again before a layer that re-reads a producer's "
            "cache (CLA consumers), so every layer reads its cache from memory."
        )
    elif any(m.decode_latency_cold_s is not None or m.attention_latency_cold_s is not None for m in metrics):
        parts.append("Warm samples run back to back; cold samples flush the caches between samples.")
    else:
        parts.append("Only warm latencies (caches hot, samples back to back) were measured.")
    counts = _sample_counts(result)
    window = []
    if "warmup_s" in measure:
        window.append(f"after {measure['warmup_s']} s of warm-up")
    if "min_time_s" in measure:
        window.append(f"for at least {measure['min_time_s']} s")
    if counts is not None:
        low, high = counts
        window.append(f"{low} samples" if low == high else f"{low}–{high} samples")
    if window:
        parts.append("Each metric was timed " + ", ".join(window) + " per cell.")
    parts += _window_sentences(summaries, measure)
    floor = noise_floor(result.cells)
    if floor is not None:
        parts.append(
            f"Machine {floor.describe()}: rounds of a cell that differ by about this much differ by the machine, "
            "not the method."
        )
    parts.append(
        "Tables show the median with the 10th–90th percentile range; the claims check also uses the 95% "
        "confidence interval of the median (from order statistics)."
    )
    bases = sorted({m.bandwidth_basis for m in metrics if m.bandwidth_basis is not None})
    basis = " or ".join(bases) if bases else "warm"
    peak = (
        f"the target's measured peak of {result.peak_bandwidth_gbps:.1f} GB/s"
        if result.peak_bandwidth_gbps is not None
        else "the target's peak (not measured in this run, so no fractions are shown)"
    )
    parts.append(
        "Achieved bandwidth is the ideal traffic of one step (every weight once, the KV cache read by each of the "
        "L attention layers, the new K/V written by the producer layers) divided by the "
        f"{basis} median latency, in GB/s (10⁹ bytes/s) and as a fraction of {peak}."
    )
    if result.device == "cuda":
        parts.append("Peak memory is the CUDA allocator's peak allocated bytes after a reset (reserved beside it).")
    else:
        parts.append("Peak memory is the peak resident set of the isolated worker process above its baseline.")
    return " ".join(parts)


def _plot_link(name: str, alt: str) -> str:
    return f"![{alt}]({name})"


def _section(title: str, lead: str, table: str | None, images: Sequence[str] = ()) -> list[str]:
    if table is None and not images:
        return []
    out = [f"### {title}", "", lead, ""]
    if table is not None:
        out += [table, ""]
    for image in images:
        out += [image, ""]
    return out


def render_scenario(loaded: LoadedResult, report_dir: Path, files: dict[str, str | bytes], show_env: bool) -> list[str]:
    """The markdown lines of one scenario's section; adds its PNGs to ``files``."""
    result = loaded.result
    palette = plots.series_palette(result)
    images: dict[str, str] = {}
    for suffix, alt, plot in plots.PLOTS:
        png = plot(result, palette)
        if png is not None:
            name = f"{slug(result.scenario.name)}-{suffix}.png"
            files[name] = png
            images[suffix] = _plot_link(name, f"{alt}, {result.scenario.name} on {result.target}")

    missing = missing_evidence(result)
    lines = [f"## Scenario `{result.scenario.name}`", ""]
    if missing:
        lines += [banner(result, missing), ""]
    lines += verdict_section(result)
    lines += [tables.key_value_table(tables.scenario_rows(result, _link(loaded.path, report_dir))), ""]
    lines += ["### How it was measured", "", how_measured(result), ""]
    lines += ["### Self-checks and stability", "", tables.checks_summary(result), ""]
    for extra in (tables.checks_table(result), tables.stability_summary(result), tables.stability_table(result)):
        if extra is not None:
            lines += [extra, ""]
    lines += [
        "### Claims check",
        "",
        "The system claims of Brandon et al. 2024, *Reducing Transformer Key-Value Cache Size with Cross-Layer "
        "Attention* (arXiv 2405.12981), tested on this run's numbers.",
        "",
        tables.claims_table(without_evidence(check_claims(result), missing)),
        "",
        TOLERANCE_NOTES,
        "",
    ]
    for field, title, what in LATENCY_SECTIONS:
        image = [images["latency-vs-context"]] if field == "decode_latency_s" and "latency-vs-context" in images else []
        lines += _section(
            title,
            f"{what}: median (p10–p90) in ms, per variant and batch size (rows) and context length (columns).",
            tables.latency_table(result, field),
            image,
        )
    lines += _section(
        "Achieved bandwidth",
        "Bytes moved per decode step over the median latency, GB/s (fraction of the measured peak).",
        tables.bandwidth_table(result),
        [images["bandwidth-fraction"]] if "bandwidth-fraction" in images else [],
    )
    lines += _section(
        "Core attention bandwidth",
        "Core attention's bytes (the cache read by all L layers) over its median latency, GB/s (fraction of peak).",
        tables.bandwidth_table(result, attention=True),
        [images["backend-bandwidth"]] if "backend-bandwidth" in images else [],
    )
    lines += _section(
        "SDPA kernels",
        "Backend sdpa: the kernel that ran the decode step's attention (PyTorch's profiler), per variant and dtype, "
        "and whether K/V were read in place or repeated to every query head (a copy per step).",
        tables.sdpa_kernels_table(result),
    )
    lines += _section("Peak memory", "Peak memory of one cell (build plus decode).", tables.peak_memory_table(result))
    lines += _section(
        "Training step memory",
        "One training step of the cell's batch (forward and backward over batch_size sequences of context_len "
        "tokens, the model built inside it): peak memory, and the K/V activations autograd kept for the backward "
        "pass against the accounting. Measured only where measure.metrics lists train_step.",
        tables.train_step_table(result),
    )
    lines += _section(
        "KV cache",
        "Bytes held by the built model's cache tensors, against the accounting "
        "(kv_bytes_per_token · batch_size · (context_len + 1)).",
        tables.kv_cache_table(result),
        [images["memory-vs-batch"]] if "memory-vs-batch" in images else [],
    )
    lines += _section(
        "Max batch under the budget",
        "Predicted: floor((budget − weights − workspace) / (KV bytes per sequence + activations)), the workspace "
        "cuBLAS's on CUDA; measured: the largest batch "
        "whose build plus one decode step fit; error = (predicted − measured) / measured.",
        tables.max_batch_table(result),
        [images["max-batch-vs-context"]] if "max-batch-vs-context" in images else [],
    )
    lines += savings.savings_section(result)
    lines += paging.paging_section(result)
    lines += paging.ragged_section(result)
    lines += paging.multi_token_section(result)
    lines += prefill.prefill_section(result)
    lines += roofline.roofline_section(result)
    lines += tp_section.tp_section(result)
    predicted_lines, predicted_files = predicted.prediction_section(
        result, f"{slug(result.scenario.name)}-predicted-vs-measured.png"
    )
    lines += predicted_lines
    files.update(predicted_files)
    if "kv-bytes-vs-latency" in images:
        lines += _section(
            "Memory against latency",
            "KV cache bytes per token against decode latency: variants toward the lower left are on the front.",
            None,
            [images["kv-bytes-vs-latency"]],
        )
    history = figure_name(result.scenario.name)
    if (report_dir / history).is_file():  # written by `attnbench history` into the same folder
        lines += _section(
            "History across commits",
            "Each cell's decode latency, bandwidth fraction, peak memory and max batch relative to its first commit, "
            f"over every result of this scenario under this folder (`attnbench history`; the page `{PAGE_NAME}` "
            "beside this report has the intervals, unstable points and detected steps).",
            None,
            [_plot_link(history, f"history of {result.scenario.name} on {result.target}")],
        )
    lines += _section(
        "Cells that did not run",
        "Cells that ran out of memory, failed, or whose backend cannot run their variant (unsupported).",
        tables.failed_cells_table(result),
    )
    if show_env:
        lines += ["### Environment of this run", "", tables.key_value_table(tables.environment_rows(result)), ""]
    return lines


def render_target(
    loaded: Sequence[LoadedResult], report_dir: Path, renderer: GitInfo | None = None
) -> dict[str, str | bytes]:
    """Every file of one target's report folder: REPORT.md and its PNGs, by file name.

    ``renderer``: the attnbench commit rendering it, named under the title (left out when None).
    """
    ordered = sorted(loaded, key=lambda item: item.result.scenario.name)
    first = ordered[0].result
    files: dict[str, str | bytes] = {}
    scenarios = ", ".join(f"`{item.result.scenario.name}`" for item in ordered)
    lines = [
        f"# attnbench report: `{first.target}`",
        "",
        f"Newest result per scenario for this hardware target: {scenarios}. Written by `attnbench report`. "
        "Each scenario opens with its verdict; the environment closes the report.",
        "",
    ]
    if renderer is not None:
        lines += [rendered_by(renderer), ""]
    suspect = [item.result for item in ordered if any(c.checks_failed or c.unstable for c in item.result.cells)]
    if suspect:
        names = ", ".join(f"`{r.scenario.name}`" for r in suspect)
        lines += [
            f"> ⚠ Cells of {names} failed self-checks or are unstable: see each scenario's *Self-checks and "
            "stability* section before trusting their numbers.",
            "",
        ]
    for item in ordered:
        result = item.result
        same_env = result.environment == first.environment and result.peak_bandwidth_gbps == first.peak_bandwidth_gbps
        lines += render_scenario(item, report_dir, files, show_env=not same_env)
    lines += [
        "## Environment",
        "",
        tables.key_value_table(tables.environment_rows(first)),
        "",
    ]
    files[REPORT_NAME] = "\n".join(lines).rstrip() + "\n"
    return files


def device_label(result: RunResult) -> str:
    """The most specific device name the environment gives."""
    env = result.environment
    for key in ("device_name", "gpu_name", "cpu_model"):
        if env.get(key):
            return str(env[key])
    return result.device


def _median(cell: CellResult | None) -> Summary | None:
    return None if cell is None or cell.metrics is None else cell.metrics.decode_latency_s


def _cross_scenario(name: str, items: Sequence[LoadedResult]) -> list[str]:
    results = [item.result for item in items]
    targets = [r.target for r in results]
    by_target = [{c.key: c for c in r.cells} for r in results]
    keys = list(dict.fromkeys(c.key for r in results for c in r.cells))
    several = len({(k.dtype, k.backend) for k in keys}) > 1
    lines = [f"## Scenario `{name}`", ""]
    if len({r.scenario.sha256 for r in results}) > 1:
        lines += ["Note: the targets ran different versions of this scenario file (sha256 differs).", ""]
    overview = [
        [
            f"`{r.target}`",
            device_label(r),
            MISSING_PEAK if r.peak_bandwidth_gbps is None else f"{r.peak_bandwidth_gbps:.1f}",
            r.git.short or "unknown",
            r.started_utc,
        ]
        for r in results
    ]
    headers = ["target", "device", "peak GB/s", "commit", "started (UTC)"]
    lines += [tabulate(overview, headers=headers, tablefmt=tables.TABLEFMT, disable_numparse=True), ""]

    def coords(key: CellKey) -> list[str]:
        return [key.variant, *([key.dtype, key.backend] if several else []), str(key.batch_size), str(key.context_len)]

    coord_headers = ["variant", *(["dtype", "backend"] if several else []), "batch", "context"]
    latency_rows, fraction_rows = [], []
    for key in keys:
        cells = [cells_of.get(key) for cells_of in by_target]
        latency: list[str] = []
        for cell in cells:
            summary = _median(cell)
            if cell is not None and cell.status != "ok":
                latency.append(cell.status)
            else:
                latency.append(tables.MISSING if summary is None else tables.fmt_ms(summary.median))
        first = _median(cells[0])
        ratios = []
        for cell in cells[1:]:
            other = _median(cell)
            ratios.append(tables.MISSING if first is None or other is None else f"×{other.median / first.median:.2f}")
        latency_rows.append([*coords(key), *latency, *ratios])
        fractions = []
        for cell in cells:
            fraction = None if cell is None or cell.metrics is None else cell.metrics.bandwidth_fraction
            fractions.append(tables.MISSING if fraction is None else f"{fraction:.0%}")
        fraction_rows.append([*coords(key), *fractions])
    ratio_headers = [f"{t} / {targets[0]}" for t in targets[1:]]
    lines += [
        "### Decode latency",
        "",
        "Median ms per decode step (warm); the ratio columns divide by the first target.",
        "",
        tabulate(
            latency_rows,
            headers=[*coord_headers, *targets, *ratio_headers],
            tablefmt=tables.TABLEFMT,
            disable_numparse=True,
        ),
        "",
        "### Bandwidth fraction",
        "",
        "Achieved bandwidth of the decode step as a fraction of each target's own measured peak.",
        "",
        tabulate(fraction_rows, headers=[*coord_headers, *targets], tablefmt=tables.TABLEFMT, disable_numparse=True),
        "",
    ]
    return lines


def render_cross_target(loaded: Sequence[LoadedResult]) -> str | None:
    """CROSS_TARGET.md: per scenario run on two or more targets, latency and bandwidth side by side."""
    by_scenario: dict[str, list[LoadedResult]] = {}
    for item in sorted(loaded, key=lambda i: i.result.target):
        by_scenario.setdefault(item.result.scenario.name, []).append(item)
    shared = {name: items for name, items in sorted(by_scenario.items()) if len(items) > 1}
    if not shared:
        return None
    lines = [
        "# attnbench: cross-target comparison",
        "",
        "The same scenario on different hardware targets. Absolute numbers differ by design; compare the shape "
        "(which variant wins, how close each runs to its own peak) rather than single values.",
        "",
    ]
    for name, items in shared.items():
        lines += _cross_scenario(name, items)
    return "\n".join(lines).rstrip() + "\n"
