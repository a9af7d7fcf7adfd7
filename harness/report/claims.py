"""Check the CLA paper's system claims on measured results. Pure functions from a result to verdicts.

Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer Attention"
(arXiv 2405.12981) claim, for a CLA variant against the same attention without sharing:

1. the KV cache shrinks by the sharing factor (§2.2: ceil(L/s) producer layers instead of L);
2. the parameter count shrinks slightly (only the consumers' K/V projections go);
3. so the batch that fits a memory budget grows by about the same factor;
4. core attention costs the same per decode step, since consumers re-read their producer's
   cache (§2.3), while MQA/GQA do cut that cost against MHA.

Each check returns :class:`ClaimCheck` rows with a verdict and the numbers behind it; a claim the
data cannot test says why. The report renders them (harness/report/tables.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from harness.results.schema import CellResult, RunResult, Summary
from harness.variants import parse_paper_name

Verdict = Literal["holds", "does not hold", "not testable"]

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
    "must have a smaller median than MHA of the same head dim and KV sharing in every cell."
)

# Cells are compared at the same coordinates: batch size, context length, dtype and backend.
Coord = tuple[int, int, str, str]


@dataclass(frozen=True)
class ClaimCheck:
    """One claim tested on one pair of variants (or why it could not be)."""

    claim: str  # which claim (one of the CLAIM_* titles)
    comparison: str  # "H64-MQA-CLA2 vs H64-MQA"
    verdict: Verdict
    evidence: str  # the numbers behind the verdict, or why it is not testable


@dataclass(frozen=True)
class VariantShape:
    """The fields of a variant the claims need, as recorded in its cells."""

    name: str
    head_dim: int
    n_heads: int
    n_kv_heads: int
    n_kv_layers: int  # producer layers, P
    kv_layers: tuple[int, ...]
    params_total: int
    # What a producer caches beyond heads and width: MLA's latent, windows, an 8-bit dtype. Variants
    # are compared only with variants that cache the same kind of thing (see cla_pairs, kv_head_pairs).
    cache_kind: tuple[object, ...] = ()
    uniform_windows: bool = True  # every layer has the same window (or all are global)
    is_mla: bool = False  # one latent for all heads: not MQA

    @property
    def n_layers(self) -> int:
        return len(self.kv_layers)

    @property
    def is_cla(self) -> bool:
        return self.n_kv_layers < self.n_layers

    @property
    def sharing_label(self) -> str:
        """The CLA factor s from the paper name, else the layers-per-producer ratio."""
        parsed = parse_paper_name(self.name)
        if parsed is not None and parsed.kv_sharing > 1:
            return str(parsed.kv_sharing)
        return f"{self.n_layers / self.n_kv_layers:.3g}"


@dataclass(frozen=True)
class Pair:
    """A variant compared with its reference (a CLA variant with its base, or MQA/GQA with MHA)."""

    subject: VariantShape
    reference: VariantShape

    @property
    def label(self) -> str:
        return f"{self.subject.name} vs {self.reference.name}"

    @property
    def kv_ratio(self) -> float:
        """Exact KV-cache ratio reference/subject: kv_bytes_per_token scales with P · n_kv_heads."""
        ref = self.reference.n_kv_layers * self.reference.n_kv_heads
        return ref / (self.subject.n_kv_layers * self.subject.n_kv_heads)


def variant_shapes(result: RunResult) -> list[VariantShape]:
    """One shape per variant, in the order the variants first appear in the cells."""
    shapes: dict[str, VariantShape] = {}
    for cell in result.cells:
        if cell.variant not in shapes:
            shapes[cell.variant] = VariantShape(
                name=cell.variant,
                head_dim=cell.head_dim,
                n_heads=cell.n_heads,
                n_kv_heads=cell.n_kv_heads,
                n_kv_layers=cell.n_kv_layers,
                kv_layers=tuple(cell.kv_layers),
                params_total=cell.params_total,
                cache_kind=(
                    tuple(sorted((cell.mla or {}).items())),
                    tuple(cell.layer_windows or ()),
                    cell.kv_dtype,
                    cell.kv_scale,
                ),
                uniform_windows=len(set(cell.layer_windows or [None])) == 1,
                is_mla=cell.attention == "mla",
            )
    return list(shapes.values())


def cla_pairs(shapes: list[VariantShape]) -> tuple[list[Pair], list[VariantShape]]:
    """Each CLA variant with its base: same head dim, heads, KV heads and cache kind, every layer a producer.

    Returns the pairs and the CLA variants that have no base in the run. A variant whose layers have
    different windows is left out: its cache ratio depends on which layers produce, not on s alone.
    """
    pairs: list[Pair] = []
    unmatched: list[VariantShape] = []
    for cla in (s for s in shapes if s.is_cla and s.uniform_windows):
        base = next(
            (
                s
                for s in shapes
                if not s.is_cla
                and (s.head_dim, s.n_heads, s.n_kv_heads, s.n_layers, s.cache_kind)
                == (cla.head_dim, cla.n_heads, cla.n_kv_heads, cla.n_layers, cla.cache_kind)
            ),
            None,
        )
        if base is None:
            unmatched.append(cla)
        else:
            pairs.append(Pair(cla, base))
    return pairs, unmatched


def kv_head_pairs(shapes: list[VariantShape]) -> tuple[list[Pair], list[VariantShape]]:
    """Each MQA/GQA variant with the MHA variant of the same head dim, heads, KV sharing map and cache kind.

    Returns the pairs and the MQA/GQA variants that have no such MHA variant in the run. MLA variants
    (one latent for all heads) are not MQA and are left out.
    """
    pairs: list[Pair] = []
    unmatched: list[VariantShape] = []
    for reduced in (s for s in shapes if s.n_kv_heads < s.n_heads and not s.is_mla):
        mha = next(
            (
                s
                for s in shapes
                if s.n_kv_heads == s.n_heads
                and (s.head_dim, s.n_heads, s.kv_layers, s.cache_kind)
                == (reduced.head_dim, reduced.n_heads, reduced.kv_layers, reduced.cache_kind)
            ),
            None,
        )
        if mha is None:
            unmatched.append(reduced)
        else:
            pairs.append(Pair(reduced, mha))
    return pairs, unmatched


def _cells(result: RunResult, variant: str) -> dict[Coord, CellResult]:
    """A variant's cells that ran, by coordinates."""
    return {
        (c.batch_size, c.context_len, c.dtype, c.backend): c
        for c in result.cells
        if c.variant == variant and c.status == "ok" and c.metrics is not None
    }


def _where(coord: Coord) -> str:
    batch, context, dtype, backend = coord
    return f"B={batch} ctx={context} {dtype} {backend}"


def _range(values: Iterable[float], digits: int = 3) -> str:
    ordered = sorted(values)
    low, high = f"{ordered[0]:.{digits}f}", f"{ordered[-1]:.{digits}f}"
    return low if low == high else f"{low}–{high}"


def _failures(failed: list[str], limit: int = 3) -> str:
    more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
    return "; fails at " + ", ".join(failed[:limit]) + more


def _no_cla(claim: str) -> ClaimCheck:
    return ClaimCheck(claim, "—", "not testable", "no CLA variant (fewer producer layers than layers) in this run")


def _no_base(claim: str, cla: VariantShape) -> ClaimCheck:
    return ClaimCheck(
        claim,
        cla.name,
        "not testable",
        f"no variant without CLA with head_dim {cla.head_dim}, {cla.n_heads} heads and "
        f"{cla.n_kv_heads} KV heads to compare with",
    )


def _paired_cells(
    result: RunResult, pair: Pair, value: Callable[[CellResult], float | None]
) -> list[tuple[Coord, float, float]]:
    """(coordinates, subject value, reference value) for every cell both variants measured."""
    subject, reference = _cells(result, pair.subject.name), _cells(result, pair.reference.name)
    out = []
    for coord in sorted(subject.keys() & reference.keys()):
        a, b = value(subject[coord]), value(reference[coord])
        if a is not None and b is not None:
            out.append((coord, a, b))
    return out


def _kv_cache_bytes(cell: CellResult) -> float | None:
    return None if cell.metrics is None or cell.metrics.kv_cache_bytes is None else float(cell.metrics.kv_cache_bytes)


def check_kv_cache(result: RunResult) -> list[ClaimCheck]:
    """Claim 1: measured KV cache of base / CLA equals L/ceil(L/s) (the producer ratio) within 1%."""
    pairs, unmatched = cla_pairs(variant_shapes(result))
    checks = [_no_base(CLAIM_KV, cla) for cla in unmatched]
    if not pairs and not unmatched:
        return [_no_cla(CLAIM_KV)]
    for pair in pairs:
        expected = pair.kv_ratio
        basis = (
            f"expected {pair.reference.n_kv_layers}/{pair.subject.n_kv_layers} producer layers = {expected:.3f} "
            f"(s={pair.subject.sharing_label})"
        )
        cells = _paired_cells(result, pair, _kv_cache_bytes)
        if not cells:
            checks.append(
                ClaimCheck(CLAIM_KV, pair.label, "not testable", f"{basis}; no cell where both measured kv_cache_bytes")
            )
            continue
        ratios = [(coord, ref / sub) for coord, sub, ref in cells]
        failed = [f"{_where(c)} ({r:.3f})" for c, r in ratios if abs(r / expected - 1) > KV_RATIO_TOLERANCE]
        evidence = f"{basis}; measured {_range(r for _, r in ratios)} in {len(ratios)} cells"
        if failed:
            checks.append(ClaimCheck(CLAIM_KV, pair.label, "does not hold", evidence + _failures(failed)))
        else:
            checks.append(ClaimCheck(CLAIM_KV, pair.label, "holds", evidence))
    return checks


def check_params(result: RunResult) -> list[ClaimCheck]:
    """Claim 2: the CLA variant has fewer parameters than its base, by less than 10%."""
    pairs, unmatched = cla_pairs(variant_shapes(result))
    checks = [_no_base(CLAIM_PARAMS, cla) for cla in unmatched]
    if not pairs and not unmatched:
        return [_no_cla(CLAIM_PARAMS)]
    for pair in pairs:
        sub, ref = pair.subject.params_total, pair.reference.params_total
        change = sub / ref - 1
        evidence = f"{sub / 1e6:.3f} M vs {ref / 1e6:.3f} M params ({change:+.2%})"
        holds = sub < ref and -change < PARAMS_SHRINK_LIMIT
        if not holds:
            evidence += "; not smaller" if sub >= ref else f"; shrinks by {PARAMS_SHRINK_LIMIT:.0%} or more"
        checks.append(ClaimCheck(CLAIM_PARAMS, pair.label, "holds" if holds else "does not hold", evidence))
    return checks


def _measured_max_batch(result: RunResult, variant: str) -> dict[tuple[int, str, str], int]:
    """Measured max batch by (context_len, dtype, backend); any cell of that context may carry it."""
    out: dict[tuple[int, str, str], int] = {}
    for cell in result.cells:
        if cell.variant != variant or cell.metrics is None or cell.metrics.max_batch is None:
            continue
        measured = cell.metrics.max_batch.measured
        if measured is not None:
            out.setdefault((cell.context_len, cell.dtype, cell.backend), measured)
    return out


def check_max_batch(result: RunResult) -> list[ClaimCheck]:
    """Claim 3: measured max batch of CLA / base is within ±25% of the KV ratio, at each context."""
    pairs, unmatched = cla_pairs(variant_shapes(result))
    checks = [_no_base(CLAIM_MAX_BATCH, cla) for cla in unmatched]
    if not pairs and not unmatched:
        return [_no_cla(CLAIM_MAX_BATCH)]
    for pair in pairs:
        expected = pair.kv_ratio
        subject = _measured_max_batch(result, pair.subject.name)
        reference = _measured_max_batch(result, pair.reference.name)
        common = sorted(k for k in subject.keys() & reference.keys() if reference[k] > 0)
        if not common:
            checks.append(
                ClaimCheck(
                    CLAIM_MAX_BATCH,
                    pair.label,
                    "not testable",
                    f"expected ≈{expected:.3f}; max batch not measured (above zero) for both at any context",
                )
            )
            continue
        parts, failed = [], []
        for key in common:
            ratio = subject[key] / reference[key]
            off = ratio / expected - 1
            text = f"ctx {key[0]}: {reference[key]} → {subject[key]} ({ratio:.2f}, {off:+.0%})"
            parts.append(text)
            if abs(off) > MAX_BATCH_TOLERANCE:
                failed.append(f"ctx {key[0]}")
        evidence = f"expected ≈{expected:.3f}; " + ", ".join(parts)
        if failed:
            checks.append(ClaimCheck(CLAIM_MAX_BATCH, pair.label, "does not hold", evidence + _failures(failed)))
        else:
            checks.append(ClaimCheck(CLAIM_MAX_BATCH, pair.label, "holds", evidence))
    return checks


def _attention_summary(cell: CellResult) -> Summary | None:
    return None if cell.metrics is None else cell.metrics.attention_latency_s


def _paired_summaries(result: RunResult, pair: Pair) -> list[tuple[Coord, Summary, Summary]]:
    subject, reference = _cells(result, pair.subject.name), _cells(result, pair.reference.name)
    out = []
    for coord in sorted(subject.keys() & reference.keys()):
        a, b = _attention_summary(subject[coord]), _attention_summary(reference[coord])
        if a is not None and b is not None:
            out.append((coord, a, b))
    return out


def _overlap(a: Summary, b: Summary) -> bool:
    return a.ci_low <= b.ci_high and b.ci_low <= a.ci_high


def check_attention_unchanged_by_cla(result: RunResult) -> list[ClaimCheck]:
    """Claim 4a: core attention median CLA/base within ±10%, or the medians' 95% CIs overlap, per cell."""
    pairs, unmatched = cla_pairs(variant_shapes(result))
    checks = [_no_base(CLAIM_ATTENTION_CLA, cla) for cla in unmatched]
    if not pairs and not unmatched:
        return [_no_cla(CLAIM_ATTENTION_CLA)]
    for pair in pairs:
        cells = _paired_summaries(result, pair)
        if not cells:
            checks.append(
                ClaimCheck(
                    CLAIM_ATTENTION_CLA, pair.label, "not testable", "core attention latency not measured for both"
                )
            )
            continue
        ratios, failed = [], []
        for coord, sub, ref in cells:
            ratio = sub.median / ref.median
            ratios.append(ratio)
            if abs(ratio - 1) > ATTENTION_LATENCY_TOLERANCE and not _overlap(sub, ref):
                failed.append(f"{_where(coord)} ({ratio:.2f}, CIs disjoint)")
        evidence = (
            f"median ratio CLA/base {_range(ratios, 2)} over {len(ratios)} cells; "
            f"{len(ratios) - len(failed)}/{len(ratios)} within ±{ATTENTION_LATENCY_TOLERANCE:.0%} or CI overlap"
        )
        if failed:
            checks.append(ClaimCheck(CLAIM_ATTENTION_CLA, pair.label, "does not hold", evidence + _failures(failed)))
        else:
            checks.append(ClaimCheck(CLAIM_ATTENTION_CLA, pair.label, "holds", evidence))
    return checks


def check_attention_cut_by_kv_heads(result: RunResult) -> list[ClaimCheck]:
    """Claim 4b: MQA/GQA have a smaller core attention median than MHA of the same head dim, per cell;
    one verdict per backend when the run timed several."""
    pairs, unmatched = kv_head_pairs(variant_shapes(result))
    checks = [
        ClaimCheck(
            CLAIM_ATTENTION_KV_HEADS,
            reduced.name,
            "not testable",
            f"no MHA variant with head_dim {reduced.head_dim}, {reduced.n_heads} heads, the same KV sharing and the "
            "same cache kind (windows, KV dtype)",
        )
        for reduced in unmatched
    ]
    if not pairs and not unmatched:
        return [ClaimCheck(CLAIM_ATTENTION_KV_HEADS, "—", "not testable", "no MQA or GQA variant in this run")]
    for pair in pairs:
        cells = _paired_summaries(result, pair)
        if not cells:
            checks.append(
                ClaimCheck(
                    CLAIM_ATTENTION_KV_HEADS, pair.label, "not testable", "core attention latency not measured for both"
                )
            )
            continue
        # A verdict per backend: one that expands K/V to every query head (eager) reads as much for MQA
        # as for MHA, and says so about itself, not about the backends that read the shared cache once.
        backends = sorted({backend for (_, _, _, backend), _, _ in cells})
        for backend in backends:
            ours = [(coord, sub, ref) for coord, sub, ref in cells if coord[3] == backend]
            comparison = pair.label if len(backends) == 1 else f"{pair.label}, {backend}"
            ratios = [sub.median / ref.median for _, sub, ref in ours]
            failed = [
                f"{_where(coord)} ({sub.median / ref.median:.2f})"
                for coord, sub, ref in ours
                if sub.median >= ref.median
            ]
            evidence = (
                f"median ratio {pair.subject.name}/MHA {_range(ratios, 2)} over {len(ratios)} cells; "
                f"smaller in {len(ratios) - len(failed)}/{len(ratios)}"
            )
            if failed:
                checks.append(
                    ClaimCheck(CLAIM_ATTENTION_KV_HEADS, comparison, "does not hold", evidence + _failures(failed))
                )
            else:
                checks.append(ClaimCheck(CLAIM_ATTENTION_KV_HEADS, comparison, "holds", evidence))
    return checks


def check_claims(result: RunResult) -> list[ClaimCheck]:
    """All claims, in the order the paper makes them."""
    return [
        *check_kv_cache(result),
        *check_params(result),
        *check_max_batch(result),
        *check_attention_unchanged_by_cla(result),
        *check_attention_cut_by_kv_heads(result),
    ]
