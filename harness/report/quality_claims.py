"""The accuracy claims, judged on a quality result's per-seed numbers (harness/results/quality.py).

- Matched KV bytes (Brandon et al. 2024, §3, Figure 1): a CLA variant against every variant without
  sharing whose KV bytes per token are the same (MQA-CLA2 with the larger head dim against MQA, GQA-CLA2
  against GQA): the CLA variant should reach the lower validation loss.
- Conversion (Ainslie et al. 2023, §2.2, and Brandon et al. 2024, §2.2): a trained checkpoint converted by
  mean-pooling K/V heads or dropping consumers' K/V, then uptrained for a small fraction of the original
  steps, improves: its loss after uptraining below its loss right after the conversion. That alone does not
  say it recovers, so a second claim asks whether it reaches the loss of the same variant trained from
  scratch (when the scenario trains one): a conversion that improves yet stays worse does not.

A verdict is ``holds`` or ``does not hold`` only when the 95% interval of the difference excludes zero
(harness/stats/seeds.py: Welch's across variants, Student's over the paired per-seed differences of a
conversion); otherwise it is ``inconclusive at this scale``: the difference is inside the seed spread. The
numbers never say more than the toy scale they come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from harness.results.quality import QualityResult, VariantQuality
from harness.stats.seeds import mean_ci, welch_difference_ci

QualityVerdict = Literal["holds", "does not hold", "inconclusive at this scale", "not testable"]
INCONCLUSIVE: QualityVerdict = "inconclusive at this scale"

CLAIM_MATCHED_KV = "At matched KV bytes per token, CLA reaches a lower validation perplexity"
CLAIM_UPTRAIN = "Uptraining on a small fraction of the original steps lowers a converted checkpoint's loss"
CLAIM_UPTRAIN_SCRATCH = "An uptrained conversion reaches the loss of training the variant from scratch"


@dataclass(frozen=True)
class QualityClaim:
    claim: str
    comparison: str
    verdict: QualityVerdict
    evidence: str


def _losses(entry: VariantQuality) -> list[float]:
    return [run.validation_loss for run in entry.runs]


def _is_cla(entry: VariantQuality, n_layers: int) -> bool:
    return entry.n_kv_layers < n_layers


def _verdict(low: float, high: float) -> QualityVerdict:
    """Lower is better: a difference (subject - reference) wholly below zero holds, wholly above does not."""
    if high < 0:
        return "holds"
    if low > 0:
        return "does not hold"
    return INCONCLUSIVE


def matched_kv_claims(result: QualityResult) -> list[QualityClaim]:
    """One claim per CLA variant and non-CLA variant with the same KV bytes per token."""
    n_layers = int(result.model["n_layers"])
    trained = [v for v in result.variants if v.status == "ok" and v.runs]
    out = []
    for subject in (v for v in trained if _is_cla(v, n_layers)):
        for reference in trained:
            if _is_cla(reference, n_layers) or reference.kv_bytes_per_token != subject.kv_bytes_per_token:
                continue
            comparison = f"{subject.variant} vs {reference.variant}"
            a, b = _losses(subject), _losses(reference)
            means = (
                f"validation perplexity {math.exp(mean_ci(a).mean):.3f} vs {math.exp(mean_ci(b).mean):.3f} "
                f"at {subject.kv_bytes_per_token:,} KV bytes per token"
            )
            if len(a) < 2 or len(b) < 2:
                out.append(QualityClaim(CLAIM_MATCHED_KV, comparison, INCONCLUSIVE, f"{means}; one seed: no spread"))
                continue
            diff = welch_difference_ci(a, b)
            evidence = (
                f"{means}; loss difference {diff.difference:+.4f} nats, 95% CI [{diff.low:+.4f}, {diff.high:+.4f}] "
                f"over {len(a)} and {len(b)} seeds"
            )
            out.append(QualityClaim(CLAIM_MATCHED_KV, comparison, _verdict(diff.low, diff.high), evidence))
    if not out:
        why = "no CLA variant with a non-CLA variant of the same KV bytes per token was trained"
        out.append(QualityClaim(CLAIM_MATCHED_KV, "—", "not testable", why))
    return out


def uptrain_claims(result: QualityResult) -> list[QualityClaim]:
    """One claim per conversion, on the per-seed differences after - before uptraining."""
    out = []
    scratch = {v.variant: _losses(v) for v in result.variants if v.runs}
    for conversion in result.conversions:
        comparison = f"{conversion.source} -> {conversion.target}"
        if not conversion.runs:
            out.append(QualityClaim(CLAIM_UPTRAIN, comparison, "not testable", conversion.error or "no run"))
            continue
        runs = conversion.runs
        before = mean_ci([r.validation_loss_before for r in runs]).mean
        after = mean_ci([r.validation_loss_after for r in runs]).mean
        steps = runs[0].uptrain_steps
        evidence = f"loss {before:.4f} converted, {after:.4f} after {steps} uptraining steps"
        if conversion.target in scratch:
            evidence += f" ({mean_ci(scratch[conversion.target]).mean:.4f} trained from scratch)"
        change = mean_ci([r.validation_loss_after - r.validation_loss_before for r in runs])
        if change.low is None or change.high is None:
            out.append(QualityClaim(CLAIM_UPTRAIN, comparison, INCONCLUSIVE, f"{evidence}; one seed: no spread"))
            continue
        evidence += f"; change 95% CI [{change.low:+.4f}, {change.high:+.4f}] over {change.n} seeds"
        out.append(QualityClaim(CLAIM_UPTRAIN, comparison, _verdict(change.low, change.high), evidence))
        if conversion.target in scratch:
            out.append(
                _against_scratch(comparison, [r.validation_loss_after for r in runs], scratch[conversion.target])
            )
    if not out:
        out.append(QualityClaim(CLAIM_UPTRAIN, "—", "not testable", "no conversion in this run (quality.convert_to)"))
    return out


def _against_scratch(comparison: str, after: list[float], scratch: list[float]) -> QualityClaim:
    """The uptrained conversion's loss against the variant trained from scratch: holds when lower beyond the
    spread, does not hold when it stays higher beyond it (Welch's interval of the difference after - scratch)."""
    evidence = f"loss {mean_ci(after).mean:.4f} after uptraining vs {mean_ci(scratch).mean:.4f} trained from scratch"
    if len(after) < 2 or len(scratch) < 2:
        return QualityClaim(CLAIM_UPTRAIN_SCRATCH, comparison, INCONCLUSIVE, f"{evidence}; one seed: no spread")
    diff = welch_difference_ci(after, scratch)
    verdict = _verdict(diff.low, diff.high)
    evidence += (
        f"; difference {diff.difference:+.4f} nats, 95% CI [{diff.low:+.4f}, {diff.high:+.4f}] over {len(after)} "
        f"and {len(scratch)} seeds"
    )
    if verdict == "does not hold":
        evidence += "; it stays worse than training from scratch"
    return QualityClaim(CLAIM_UPTRAIN_SCRATCH, comparison, verdict, evidence)


def quality_claims(result: QualityResult) -> list[QualityClaim]:
    return matched_kv_claims(result) + uptrain_claims(result)
