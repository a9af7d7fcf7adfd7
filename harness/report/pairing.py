"""The skeleton every claim check shares: pair variants, gather evidence cell by cell, conclude.

A claim compares a *subject* variant with a *reference* (a CLA variant with its base, MQA/GQA with
MHA). :func:`check_rule` runs one :class:`Rule`: it pairs the run's variants, reports variants
without a partner as not testable, and hands each pair to the rule's ``judge``, which computes
the numbers and calls :func:`conclude` with one :class:`Evidence` per cell. :func:`conclude` is
the one place that decides a verdict:

- ``does not hold`` when a trusted cell fails the claim;
- ``inconclusive`` when none does but some evidence comes from cells whose numbers are not
  trusted (failed self-checks, or a pair of cells measured differently), saying how many and why;
- ``holds`` otherwise; ``not testable`` when there is no evidence at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from harness.results.schema import CellResult, RunResult
from harness.variants import parse_paper_name

Verdict = Literal["holds", "does not hold", "inconclusive", "not testable"]
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


Pairing = Callable[[list[VariantShape]], tuple[list[Pair], list[VariantShape]]]


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


def cells_of(result: RunResult, variant: str) -> dict[Coord, CellResult]:
    """A variant's cells that ran, by coordinates."""
    return {
        (c.batch_size, c.context_len, c.dtype, c.backend): c
        for c in result.cells
        if c.variant == variant and c.status == "ok" and c.metrics is not None
    }


def paired_cells(result: RunResult, pair: Pair) -> list[tuple[Coord, CellResult, CellResult]]:
    """(coordinates, subject cell, reference cell) wherever both variants ran, in coordinate order."""
    subject, reference = cells_of(result, pair.subject.name), cells_of(result, pair.reference.name)
    return [(coord, subject[coord], reference[coord]) for coord in sorted(subject.keys() & reference.keys())]


def where(coord: Coord) -> str:
    batch, context, dtype, backend = coord
    return f"B={batch} ctx={context} {dtype} {backend}"


def value_range(values: Iterable[float], digits: int = 3) -> str:
    ordered = sorted(values)
    low, high = f"{ordered[0]:.{digits}f}", f"{ordered[-1]:.{digits}f}"
    return low if low == high else f"{low}–{high}"


def failures(failed: list[str], limit: int = 3) -> str:
    more = f" and {len(failed) - limit} more" if len(failed) > limit else ""
    return "; fails at " + ", ".join(failed[:limit]) + more


# ---------------------------------------------------------------------------------------------
# Trust and verdicts


def distrust(cells: Iterable[CellResult], checks: Collection[str] | None = None, timing: bool = True) -> str | None:
    """Why these cells' numbers are not trusted for a claim, or None: the self-checks they failed (only
    those in ``checks`` when given: a claim on allocated bytes does not rest on timing) and, for a
    claim on timings, whether any of them is unstable (harness/results/stability.py)."""
    cells = list(cells)
    reasons = []
    if timing and any(cell.unstable for cell in cells):
        reasons.append("unstable")
    failed = sorted({name for cell in cells for name in cell.checks_failed if checks is None or name in checks})
    if failed:
        reasons.append(f"failed self-checks ({', '.join(failed)})")
    return ", ".join(reasons) or None


def measured_differently(subject: CellResult, reference: CellResult) -> str | None:
    """Why two cells' latencies are not comparable: they ran different backends or SDPA kernels."""
    backends = (subject.backend_used or subject.backend, reference.backend_used or reference.backend)
    if backends[0] != backends[1]:
        return f"ran different backends ({backends[0]} vs {backends[1]})"
    kernels = tuple(None if c.metrics is None else c.metrics.sdpa_kernel for c in (subject, reference))
    if kernels[0] != kernels[1]:
        return f"ran different SDPA kernels ({kernels[0]} vs {kernels[1]})"
    return None


@dataclass(frozen=True)
class Evidence:
    """One cell's (or one context's) part of a pair's evidence."""

    failure: str | None  # how it fails the claim (shown after "fails at"), None when it supports it
    suspect: str | None = None  # why its numbers are not trusted, None when they are


def conclude(claim: str, comparison: str, summary: str, evidence: list[Evidence]) -> ClaimCheck:
    """The verdict on a pair from its evidence; ``summary`` is the numbers in words (see module doc)."""
    if not evidence:
        return ClaimCheck(claim, comparison, "not testable", summary)
    trusted_failures = [e.failure for e in evidence if e.failure is not None and e.suspect is None]
    if trusted_failures:
        return ClaimCheck(claim, comparison, "does not hold", summary + failures(trusted_failures))
    suspects = [e.suspect for e in evidence if e.suspect is not None]
    if suspects:
        reasons = "; ".join(dict.fromkeys(suspects))
        text = f"{summary}; inconclusive: {len(suspects)} of {len(evidence)} cells not trusted ({reasons})"
        return ClaimCheck(claim, comparison, "inconclusive", text)
    return ClaimCheck(claim, comparison, "holds", summary)


@dataclass(frozen=True)
class Rule:
    """One claim: which variants it pairs, what to say when it cannot, and how to judge a pair."""

    claim: str
    pairing: Pairing
    nothing_to_pair: str  # evidence when the run has no variant the claim is about
    unmatched: Callable[[VariantShape], str]  # evidence for a variant without a partner
    judge: Callable[[RunResult, Pair], list[ClaimCheck]]


def check_rule(result: RunResult, rule: Rule) -> list[ClaimCheck]:
    """Pair, then judge each pair; variants without a partner are not testable."""
    pairs, unmatched = rule.pairing(variant_shapes(result))
    if not pairs and not unmatched:
        return [ClaimCheck(rule.claim, "—", "not testable", rule.nothing_to_pair)]
    checks = [ClaimCheck(rule.claim, shape.name, "not testable", rule.unmatched(shape)) for shape in unmatched]
    for pair in pairs:
        checks += rule.judge(result, pair)
    return checks
