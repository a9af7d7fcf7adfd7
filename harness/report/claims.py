"""Check the CLA paper's system claims on measured results. Pure functions from a result to verdicts.

Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer Attention"
(arXiv 2405.12981) claim, for a CLA variant against the same attention without sharing:

1. the KV cache shrinks by the sharing factor (§2.2: ceil(L/s) producer layers instead of L);
2. the parameter count shrinks slightly (only the consumers' K/V projections go);
3. so the batch that fits a memory budget grows by about the same factor;
4. core attention costs the same per decode step, since consumers re-read their producer's
   cache (§2.3), while MQA/GQA do cut that cost against MHA.

Each claim is a :class:`~harness.report.pairing.Rule` run by the shared skeleton in
harness/report/pairing.py (pair the variants, gather evidence per cell, conclude); a claim the data
cannot test says why, and one whose evidence rests on cells that failed their self-checks, or on
cells measured differently, is ``inconclusive``. Latency claims use the cold core-attention metric
where it was measured: there every layer, a CLA consumer included, reads its producer's cache from
memory, as the traffic the claim is about; warm, a consumer may find it in the cache its producer
just filled. The report renders the verdicts (harness/report/tables.py).
"""

from __future__ import annotations

from dataclasses import replace

from harness.measure.checks import MEMORY_HOLDS_WEIGHTS_AND_KV
from harness.report.pairing import (
    ClaimCheck,
    Coord,
    Evidence,
    Pair,
    Rule,
    VariantShape,
    check_rule,
    cla_pairs,
    conclude,
    distrust,
    kv_head_pairs,
    measured_differently,
    paired_cells,
    value_range,
    variant_shapes,
    where,
)
from harness.report.scaling_claims import CLAIM_TP, CLAIM_TRAIN_KV, TRAIN_NOTES, judge_tp, judge_train_kv
from harness.results.schema import CellResult, RunResult, Summary

__all__ = [
    "CLAIM_ATTENTION_CLA",
    "CLAIM_ATTENTION_KV_HEADS",
    "CLAIM_KV",
    "CLAIM_MAX_BATCH",
    "CLAIM_PARAMS",
    "CLAIM_TP",
    "CLAIM_TRAIN_KV",
    "TOLERANCE_NOTES",
    "ClaimCheck",
    "Pair",
    "VariantShape",
    "check_attention_cut_by_kv_heads",
    "check_attention_unchanged_by_cla",
    "check_claims",
    "check_kv_cache",
    "check_max_batch",
    "check_params",
    "check_tp",
    "check_train_kv",
    "cla_pairs",
    "kv_head_pairs",
    "variant_shapes",
]

# Measured KV-cache ratio may differ from the exact producer ratio by this much (allocator
# rounding only; the harness allocates exactly the producers' cache, so 1% is generous).
KV_RATIO_TOLERANCE = 0.01
# CLA drops only the consumers' K/V projections: the paper's models lose a few percent.
PARAMS_SHRINK_LIMIT = 0.10
# Max batch = floor((budget - weights - workspace) / KV per sequence). Weights and workspace do
# not shrink by s, the floor quantises small batches, and the measured search stops at the first
# batch that runs out of memory; so the measured ratio only approximates the KV ratio.
MAX_BATCH_TOLERANCE = 0.25
# CLA leaves core-attention traffic unchanged; allow this much timing noise on the median ratio.
ATTENTION_LATENCY_TOLERANCE = 0.10

CLAIM_KV = "KV cache shrinks by the sharing factor"
CLAIM_PARAMS = f"Parameters shrink slightly (< {PARAMS_SHRINK_LIMIT:.0%})"
CLAIM_MAX_BATCH = "Max batch under the budget grows by the KV ratio"
CLAIM_ATTENTION_CLA = "Core attention latency unchanged by CLA"
CLAIM_ATTENTION_KV_HEADS = "MQA/GQA cut core attention latency vs MHA"

TOLERANCE_NOTES = (
    f"Tolerances: KV cache ratio within ±{KV_RATIO_TOLERANCE:.0%} of the exact producer-layer ratio "
    "L/ceil(L/s) (which is s only when s divides L); parameters smaller by less than "
    f"{PARAMS_SHRINK_LIMIT:.0%}; measured max-batch ratio within ±{MAX_BATCH_TOLERANCE:.0%} of the KV ratio, "
    "because weights and workspace take the same room in both variants and the batch is a whole number "
    "(small batches quantise coarsely); core attention median ratio CLA/base within "
    f"±{ATTENTION_LATENCY_TOLERANCE:.0%} or the two 95% confidence intervals of the median overlap; MQA/GQA "
    "must have a smaller median than MHA of the same head dim and KV sharing in every cell. Latency claims use "
    "cold core attention where it was measured (every layer, CLA consumers included, reads its producer's "
    "cache from memory). A claim is inconclusive when none of its trusted cells contradicts it but some of its "
    "evidence comes from cells that failed self-checks or were measured differently (another backend or SDPA "
    "kernel). " + TRAIN_NOTES
)


NO_CLA = "no CLA variant (fewer producer layers than layers) in this run"


def _no_base(cla: VariantShape) -> str:
    return (
        f"no variant without CLA with head_dim {cla.head_dim}, {cla.n_heads} heads and "
        f"{cla.n_kv_heads} KV heads to compare with"
    )


def _no_mha(reduced: VariantShape) -> str:
    return (
        f"no MHA variant with head_dim {reduced.head_dim}, {reduced.n_heads} heads, the same KV sharing and the "
        "same cache kind (windows, KV dtype)"
    )


# ---------------------------------------------------------------------------------------------
# 1. KV cache


def _judge_kv_cache(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """Measured KV cache of base / CLA equals L/ceil(L/s) (the producer ratio) within 1%, per cell.

    Allocated bytes do not depend on timing, so no self-check makes this evidence suspect.
    """
    expected = pair.kv_ratio
    basis = (
        f"expected {pair.reference.n_kv_layers}/{pair.subject.n_kv_layers} producer layers = {expected:.3f} "
        f"(s={pair.subject.sharing_label})"
    )
    ratios: list[tuple[Coord, float]] = []
    for coord, sub, ref in paired_cells(result, pair):
        sub_bytes, ref_bytes = (None if c.metrics is None else c.metrics.kv_cache_bytes for c in (sub, ref))
        if sub_bytes is not None and ref_bytes is not None:
            ratios.append((coord, ref_bytes / sub_bytes))
    if not ratios:
        return [conclude(CLAIM_KV, pair.label, f"{basis}; no cell where both measured kv_cache_bytes", [])]
    evidence = [
        Evidence(f"{where(c)} ({r:.3f})" if abs(r / expected - 1) > KV_RATIO_TOLERANCE else None) for c, r in ratios
    ]
    summary = f"{basis}; measured {value_range(r for _, r in ratios)} in {len(ratios)} cells"
    return [conclude(CLAIM_KV, pair.label, summary, evidence)]


# ---------------------------------------------------------------------------------------------
# 2. Parameters


def _judge_params(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """The CLA variant has fewer parameters than its base, by less than 10% (from the accounting)."""
    sub, ref = pair.subject.params_total, pair.reference.params_total
    change = sub / ref - 1
    evidence = f"{sub / 1e6:.3f} M vs {ref / 1e6:.3f} M params ({change:+.2%})"
    holds = sub < ref and -change < PARAMS_SHRINK_LIMIT
    if not holds:
        evidence += "; not smaller" if sub >= ref else f"; shrinks by {PARAMS_SHRINK_LIMIT:.0%} or more"
    return [ClaimCheck(CLAIM_PARAMS, pair.label, "holds" if holds else "does not hold", evidence)]


# ---------------------------------------------------------------------------------------------
# 3. Max batch


def _measured_max_batch(result: RunResult, variant: str) -> dict[tuple[int, str, str], tuple[int, list[CellResult]]]:
    """Measured max batch by (context_len, dtype, backend), with the variant's cells of that context."""
    out: dict[tuple[int, str, str], tuple[int, list[CellResult]]] = {}
    for cell in result.cells:
        if cell.variant != variant or cell.metrics is None or cell.metrics.max_batch is None:
            continue
        measured = cell.metrics.max_batch.measured
        if measured is not None:
            key = (cell.context_len, cell.dtype, cell.backend)
            out.setdefault(key, (measured, []))[1].append(cell)
    return out


def _judge_max_batch(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """Measured max batch of CLA / base is within ±25% of the KV ratio, at each context; a context
    whose cells failed the memory self-check is not trusted."""
    expected = pair.kv_ratio
    subject = _measured_max_batch(result, pair.subject.name)
    reference = _measured_max_batch(result, pair.reference.name)
    common = sorted(k for k in subject.keys() & reference.keys() if reference[k][0] > 0)
    if not common:
        summary = f"expected ≈{expected:.3f}; max batch not measured (above zero) for both at any context"
        return [conclude(CLAIM_MAX_BATCH, pair.label, summary, [])]
    parts, evidence = [], []
    for key in common:
        (sub, sub_cells), (ref, ref_cells) = subject[key], reference[key]
        ratio = sub / ref
        off = ratio / expected - 1
        parts.append(f"ctx {key[0]}: {ref} → {sub} ({ratio:.2f}, {off:+.0%})")
        suspect = distrust([*sub_cells, *ref_cells], {MEMORY_HOLDS_WEIGHTS_AND_KV}, timing=False)
        evidence.append(Evidence(f"ctx {key[0]}" if abs(off) > MAX_BATCH_TOLERANCE else None, suspect))
    summary = f"expected ≈{expected:.3f}; " + ", ".join(parts)
    return [conclude(CLAIM_MAX_BATCH, pair.label, summary, evidence)]


# ---------------------------------------------------------------------------------------------
# 4. Core attention latency


def _attention_summary(cell: CellResult, cold: bool) -> Summary | None:
    if cell.metrics is None:
        return None
    return cell.metrics.attention_latency_cold_s if cold else cell.metrics.attention_latency_s


def _paired_attention(result: RunResult, pair: Pair) -> tuple[bool, list[tuple[Coord, Summary, Summary, str | None]]]:
    """Whether the cold metric is used (it is wherever both variants have it everywhere), and per cell
    (coordinates, subject and reference attention latency, why the pair of cells is not trusted)."""
    cells = paired_cells(result, pair)
    cold = bool(cells) and all(
        _attention_summary(sub, True) is not None and _attention_summary(ref, True) is not None for _, sub, ref in cells
    )
    out = []
    for coord, sub, ref in cells:
        a, b = _attention_summary(sub, cold), _attention_summary(ref, cold)
        if a is not None and b is not None:
            out.append((coord, a, b, distrust([sub, ref]) or measured_differently(sub, ref)))
    return cold, out


def _overlap(a: Summary, b: Summary) -> bool:
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def _judge_attention_unchanged(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """Core attention median CLA/base within ±10%, or the medians' 95% CIs overlap, per cell."""
    cold, cells = _paired_attention(result, pair)
    if not cells:
        return [conclude(CLAIM_ATTENTION_CLA, pair.label, "core attention latency not measured for both", [])]
    ratios, evidence = [], []
    for coord, sub, ref, suspect in cells:
        ratio = sub.median / ref.median
        ratios.append(ratio)
        failed = abs(ratio - 1) > ATTENTION_LATENCY_TOLERANCE and not _overlap(sub, ref)
        evidence.append(Evidence(f"{where(coord)} ({ratio:.2f}, CIs disjoint)" if failed else None, suspect))
    within = sum(1 for e in evidence if e.failure is None)
    summary = (
        f"{'cold ' if cold else ''}median ratio CLA/base {value_range(ratios, 2)} over {len(ratios)} cells; "
        f"{within}/{len(ratios)} within ±{ATTENTION_LATENCY_TOLERANCE:.0%} or CI overlap"
    )
    return [conclude(CLAIM_ATTENTION_CLA, pair.label, summary, evidence)]


def _cells_of(result: RunResult, pair: Pair, backend: str) -> list[tuple[CellResult, CellResult]]:
    return [(sub, ref) for coord, sub, ref in paired_cells(result, pair) if coord[3] == backend]


def _kv_copy_cause(result: RunResult, backend: str, subject_cells: list[CellResult]) -> str | None:
    """Why a backend reads as many K/V bytes for MQA/GQA as for MHA, when it does: it copied K/V per query head."""
    if backend == "eager":
        return "eager expands K/V to every query head, so it reads as much for MQA/GQA as for MHA"
    if backend != "sdpa":
        return None
    copied = [c.metrics.sdpa_kv_copied for c in subject_cells if c.metrics is not None]
    if any(copied):
        return (
            "sdpa repeated K/V to every query head before its kernel (a copy per step; the SDPA kernels section "
            "names the kernel), so it reads as much for MQA/GQA as for MHA"
        )
    if result.device == "cpu" and all(flag is None for flag in copied):
        return (
            "likely the K/V copy: on CPU, sdpa repeats K/V to every query head before a kernel that cannot read "
            "shared KV heads (a copy per step, then as much traffic for MQA/GQA as for MHA); this result predates "
            "the record of whether it did"
        )
    return None


def _judge_attention_cut(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """MQA/GQA have a smaller core attention median than MHA of the same head dim, per cell; one
    verdict per backend when the run timed several."""
    cold, cells = _paired_attention(result, pair)
    if not cells:
        return [conclude(CLAIM_ATTENTION_KV_HEADS, pair.label, "core attention latency not measured for both", [])]
    # A verdict per backend: one that expands K/V to every query head (eager) reads as much for MQA
    # as for MHA, and says so about itself, not about the backends that read the shared cache once.
    backends = sorted({coord[3] for coord, *_ in cells})
    checks = []
    for backend in backends:
        ours = [(coord, sub, ref, suspect) for coord, sub, ref, suspect in cells if coord[3] == backend]
        comparison = pair.label if len(backends) == 1 else f"{pair.label}, {backend}"
        ratios = [sub.median / ref.median for _, sub, ref, _ in ours]
        evidence = [
            Evidence(f"{where(coord)} ({sub.median / ref.median:.2f})" if sub.median >= ref.median else None, suspect)
            for coord, sub, ref, suspect in ours
        ]
        smaller = sum(1 for e in evidence if e.failure is None)
        summary = (
            f"{'cold ' if cold else ''}median ratio {pair.subject.name}/MHA {value_range(ratios, 2)} over "
            f"{len(ratios)} cells; smaller in {smaller}/{len(ratios)}"
        )
        check = conclude(CLAIM_ATTENTION_KV_HEADS, comparison, summary, evidence)
        cause = _kv_copy_cause(result, backend, [sub for sub, _ in _cells_of(result, pair, backend)])
        if smaller < len(ratios) and cause is not None:
            check = replace(check, evidence=f"{check.evidence}; cause: {cause}")
        checks.append(check)
    return checks


# ---------------------------------------------------------------------------------------------
# The claims, in the order the paper makes them

RULES = (
    Rule(CLAIM_KV, cla_pairs, NO_CLA, _no_base, _judge_kv_cache),
    Rule(CLAIM_PARAMS, cla_pairs, NO_CLA, _no_base, _judge_params),
    Rule(CLAIM_MAX_BATCH, cla_pairs, NO_CLA, _no_base, _judge_max_batch),
    Rule(CLAIM_ATTENTION_CLA, cla_pairs, NO_CLA, _no_base, _judge_attention_unchanged),
    Rule(CLAIM_ATTENTION_KV_HEADS, kv_head_pairs, "no MQA or GQA variant in this run", _no_mha, _judge_attention_cut),
    Rule(CLAIM_TRAIN_KV, cla_pairs, NO_CLA, _no_base, judge_train_kv),
    Rule(CLAIM_TP, cla_pairs, NO_CLA, _no_base, judge_tp),
)


def check_kv_cache(result: RunResult) -> list[ClaimCheck]:
    """Claim 1: measured KV cache of base / CLA equals L/ceil(L/s) within 1%."""
    return check_rule(result, RULES[0])


def check_params(result: RunResult) -> list[ClaimCheck]:
    """Claim 2: the CLA variant has fewer parameters than its base, by less than 10%."""
    return check_rule(result, RULES[1])


def check_max_batch(result: RunResult) -> list[ClaimCheck]:
    """Claim 3: measured max batch of CLA / base is within ±25% of the KV ratio, at each context."""
    return check_rule(result, RULES[2])


def check_attention_unchanged_by_cla(result: RunResult) -> list[ClaimCheck]:
    """Claim 4a: core attention median CLA/base within ±10%, or the medians' 95% CIs overlap, per cell."""
    return check_rule(result, RULES[3])


def check_attention_cut_by_kv_heads(result: RunResult) -> list[ClaimCheck]:
    """Claim 4b: MQA/GQA have a smaller core attention median than MHA of the same head dim, per cell."""
    return check_rule(result, RULES[4])


def check_train_kv(result: RunResult) -> list[ClaimCheck]:
    """Claim 5: measured training K/V activations of base / CLA equal the producer ratio within 1%."""
    return check_rule(result, RULES[5])


def check_tp(result: RunResult) -> list[ClaimCheck]:
    """Claim 6: one rank's measured cache, base / CLA, equals the producer ratio within 1% at every tp."""
    return check_rule(result, RULES[6])


def check_claims(result: RunResult) -> list[ClaimCheck]:
    """All claims, in the order the paper makes them."""
    return [check for rule in RULES for check in check_rule(result, rule)]
