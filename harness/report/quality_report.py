"""The report of a quality run: validation loss and perplexity per variant with intervals across seeds,
conversions beside training from scratch, the accuracy claims, and the KV-bytes/perplexity figure (the CLA
paper's Figure 1 at this run's scale). Pure functions from a result to markdown and PNG bytes."""

from __future__ import annotations

import math
import statistics

from tabulate import tabulate

from harness.hardware import slug
from harness.report.plots import _figure, _png
from harness.report.quality_claims import quality_claims
from harness.report.tables import MISSING, TABLEFMT
from harness.results.quality import QualityResult, VariantQuality
from harness.stats.seeds import mean_ci


def scale_label(result: QualityResult) -> str:
    """What scale the numbers come from, for every title: model, tokens, seeds, corpus."""
    model, settings = result.model, result.settings
    runs = [run for v in result.variants for run in v.runs]
    tokens = runs[0].tokens_seen if runs else 0
    quick = ", --quick" if result.quick else ""
    return (
        f"toy scale: d_model {model['d_model']}, {model['n_layers']} layers, {tokens:,} training bytes per run, "
        f"{len(settings['seeds'])} seeds, byte-level {result.corpus.name}{quick}"
    )


def _ppl(loss: float | None) -> str:
    return MISSING if loss is None else f"{math.exp(loss):.3f}"


def _variant_row(entry: VariantQuality) -> list[str]:
    if entry.status != "ok" or not entry.runs:
        shape = [entry.variant, f"{entry.kv_bytes_per_token:,}", f"{entry.params_total:,}"]
        return [*shape, "0", MISSING, entry.status + (f": {entry.error}" if entry.error else ""), MISSING, MISSING]
    losses = mean_ci([r.validation_loss for r in entry.runs])
    interval = "" if losses.low is None else f" [{losses.low:.4f}, {losses.high:.4f}]"
    ppl_interval = "" if losses.low is None else f" [{_ppl(losses.low)}, {_ppl(losses.high)}]"
    return [
        entry.variant,
        f"{entry.kv_bytes_per_token:,}",
        f"{entry.params_total:,}",
        str(len(entry.runs)),
        f"{losses.mean:.4f}{interval}",
        f"{_ppl(losses.mean)}{ppl_interval}",
        f"{statistics.fmean(r.train_time_s for r in entry.runs):.1f}",
        f"{entry.runs[0].tokens_seen:,}",
    ]


def _conversion_rows(result: QualityResult) -> list[list[str]]:
    scratch = {v.variant: v for v in result.variants if v.runs}
    rows = []
    for conversion in result.conversions:
        runs = conversion.runs
        if not runs:
            rows.append([f"{conversion.source} → {conversion.target}", MISSING, MISSING, MISSING, MISSING, MISSING])
            continue
        mean = {
            key: statistics.fmean(getattr(r, key) for r in runs)
            for key in ("source_validation_loss", "validation_loss_before", "validation_loss_after")
        }
        from_scratch = scratch.get(conversion.target)
        scratch_loss = None if from_scratch is None else statistics.fmean(r.validation_loss for r in from_scratch.runs)
        rows.append(
            [
                f"{conversion.source} → {conversion.target}",
                f"{mean['source_validation_loss']:.4f}",
                f"{mean['validation_loss_before']:.4f}",
                f"{mean['validation_loss_after']:.4f} ({runs[0].uptrain_steps} steps, {conversion.uptrain_fraction:g})",
                MISSING if scratch_loss is None else f"{scratch_loss:.4f}",
                str(len(runs)),
            ]
        )
    return rows


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points no other point beats in both KV bytes and perplexity (fewer bytes, lower perplexity), by bytes."""
    front: list[tuple[int, float]] = []
    for kv, ppl in sorted(points):
        if not front or ppl < front[-1][1]:
            front.append((kv, ppl))
    return front


def pareto_plot(result: QualityResult) -> bytes | None:
    """Validation perplexity (mean over seeds, 95% interval) against KV bytes per token, the front drawn."""
    entries = [v for v in result.variants if v.runs]
    if not entries:
        return None
    fig, grid = _figure(1, 1)
    ax = grid[0][0]
    points = []
    for entry in entries:
        losses = mean_ci([r.validation_loss for r in entry.runs])
        ppl = math.exp(losses.mean)
        if losses.low is not None and losses.high is not None:
            below, above = ppl - math.exp(losses.low), math.exp(losses.high) - ppl
            ax.errorbar([entry.kv_bytes_per_token], [ppl], yerr=[[below], [above]], fmt="o", capsize=3)
        else:
            ax.plot([entry.kv_bytes_per_token], [ppl], "o")
        ax.annotate(entry.variant, (entry.kv_bytes_per_token, ppl), textcoords="offset points", xytext=(4, 4))
        points.append((entry.kv_bytes_per_token, ppl))
    front = pareto_front(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", label="Pareto front")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("KV bytes per token")
    ax.set_ylabel("validation perplexity (per byte)")
    ax.legend(loc="best")
    fig.suptitle(f"KV bytes per token vs validation perplexity\n{scale_label(result)}", fontsize=9)
    return _png(fig)


def render_quality(result: QualityResult, result_link: str) -> dict[str, str | bytes]:
    """``QUALITY-<scenario>.md`` and its figure, by file name."""
    name = slug(result.scenario)
    scale = scale_label(result)
    files: dict[str, str | bytes] = {}
    lines = [
        f"# Quality at toy scale: {result.scenario} on {result.target}",
        "",
        f"Result file: {result_link}. Every number below is at {scale}; none is extrapolated to larger models. "
        "Intervals are 95% across seeds (Student's t); perplexity is exp(validation loss), per byte.",
        "",
        f"### Validation loss per variant ({scale})",
        "",
    ]
    headers = ["variant", "KV bytes/token", "params", "seeds", "val loss [95% CI]", "perplexity [95% CI]"]
    headers += ["train s (mean)", "tokens seen"]
    rows = [_variant_row(v) for v in result.variants]
    lines += [tabulate(rows, headers=headers, tablefmt=TABLEFMT, disable_numparse=True), ""]
    figure = pareto_plot(result)
    if figure is not None:
        files[f"{name}-quality-pareto.png"] = figure
        lines += [f"![KV bytes per token vs validation perplexity]({name}-quality-pareto.png)", ""]
    if result.conversions:
        lines += [f"### Conversions ({scale})", ""]
        conv_headers = ["conversion", "source loss", "converted", "after uptraining", "from scratch", "seeds"]
        lines += [tabulate(_conversion_rows(result), headers=conv_headers, tablefmt=TABLEFMT, disable_numparse=True)]
        lines += [""]
    claims = [[c.claim, c.comparison, c.verdict, c.evidence] for c in quality_claims(result)]
    lines += [f"### Accuracy claims ({scale})", ""]
    lines += [tabulate(claims, headers=["claim", "comparison", "verdict", "evidence"], tablefmt=TABLEFMT), ""]
    files[f"QUALITY-{name}.md"] = "\n".join(lines)
    return files
