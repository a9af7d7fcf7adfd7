"""The CLA paper's claims beyond one decode step, checked on a run's opt-in measurements. Pure functions.

Brandon et al. 2024 (arXiv 2405.12981, §2.3) also claim that CLA

- shrinks the K/V activations a training step keeps for the backward pass, by the sharing factor
  (consumers compute no K/V of their own): judged on the ``train_step`` metric's K/V activations,
  which autograd's saved tensors measure, with the change of the measured training peak beside it;
- is fully compatible with tensor parallelism: sharding heads over ``tp`` ranks leaves the producer
  ratio intact, so each rank's cache shrinks by the sharing factor at every degree, replicated K/V
  heads included: judged on each rank's measured cache bytes (``sweep.tp``).

Both are :class:`~harness.report.pairing.Rule` s on the shared skeleton; harness/report/claims.py
runs them after the decode claims.
"""

from __future__ import annotations

from harness.measure.checks import TP_KV_AS_ACCOUNTED, TRAIN_KV_AS_ACCOUNTED, TRAIN_PEAK_HOLDS_ACTIVATIONS
from harness.report.pairing import (
    ClaimCheck,
    Coord,
    Evidence,
    Pair,
    conclude,
    distrust,
    paired_cells,
    value_range,
    where,
)
from harness.results.schema import CellResult, RunResult, TPMeasurement, TrainStep
from harness.units import format_bytes

# Measured K/V activation ratio may differ from the exact producer ratio by this much (none is expected:
# the slots are allocated exactly; 1% as for the cache).
TRAIN_KV_RATIO_TOLERANCE = 0.01

CLAIM_TRAIN_KV = "CLA cuts training K/V activations by the sharing factor"
CLAIM_TP = "CLA composes with TP: per-rank KV cache shrinks by the sharing factor at every tp"

TRAIN_NOTES = (
    f"Training K/V activations: the ratio base/CLA of the K/V bytes autograd saved for the backward pass must be "
    f"the producer ratio within ±{TRAIN_KV_RATIO_TOLERANCE:.0%}; the change of the measured training peak is shown "
    "beside it (it also holds the consumers' dropped K/V projections and their gradients). Tensor parallelism: "
    "the ratio base/CLA of one rank's measured cache bytes must be the producer ratio within "
    f"±{TRAIN_KV_RATIO_TOLERANCE:.0%} at every measured tp, K/V heads replicated over ranks included."
)


def _step(step: TrainStep | None) -> TrainStep | None:
    """The training step when it ran and measured its K/V activations."""
    return step if step is not None and step.status == "ok" and step.kv_activation_bytes else None


def _peak_change(steps: list[tuple[TrainStep, TrainStep]]) -> str:
    """The training peak's change, and the K/V activations', in the pair of cells with the most tokens."""
    sub, ref = max(steps, key=lambda pair: pair[0].tokens)
    if sub.peak_memory_bytes is None or ref.peak_memory_bytes is None:
        return ""
    assert sub.kv_activation_bytes is not None and ref.kv_activation_bytes is not None
    drop = ref.peak_memory_bytes - sub.peak_memory_bytes
    kv_drop = ref.kv_activation_bytes - sub.kv_activation_bytes
    return (
        f"; at {sub.tokens} tokens the training peak went {format_bytes(ref.peak_memory_bytes)} → "
        f"{format_bytes(sub.peak_memory_bytes)} ({-drop / ref.peak_memory_bytes:+.1%}) where the K/V activations "
        f"fell by {format_bytes(kv_drop)}"
    )


def judge_train_kv(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """Measured K/V activations of base / CLA equal the producer ratio within 1%, per cell."""
    expected = pair.kv_ratio
    basis = (
        f"expected {pair.reference.n_kv_layers}/{pair.subject.n_kv_layers} producer layers = {expected:.3f} "
        f"(s={pair.subject.sharing_label})"
    )
    found: list[tuple[Coord, float, str | None]] = []
    steps: list[tuple[TrainStep, TrainStep]] = []
    for coord, sub, ref in paired_cells(result, pair):
        sub_step, ref_step = (_step(c.metrics.train_step) if c.metrics else None for c in (sub, ref))
        if sub_step is None or ref_step is None:
            continue
        assert sub_step.kv_activation_bytes is not None and ref_step.kv_activation_bytes is not None
        suspect = distrust([sub, ref], {TRAIN_KV_AS_ACCOUNTED, TRAIN_PEAK_HOLDS_ACTIVATIONS}, timing=False)
        found.append((coord, ref_step.kv_activation_bytes / sub_step.kv_activation_bytes, suspect))
        steps.append((sub_step, ref_step))
    if not found:
        summary = f"{basis}; no cell where both measured train_step (measure.metrics must list it)"
        return [conclude(CLAIM_TRAIN_KV, pair.label, summary, [])]
    evidence = [
        Evidence(f"{where(c)} ({r:.3f})" if abs(r / expected - 1) > TRAIN_KV_RATIO_TOLERANCE else None, suspect)
        for c, r, suspect in found
    ]
    summary = f"{basis}; measured {value_range(r for _, r, _ in found)} in {len(found)} cells" + _peak_change(steps)
    return [conclude(CLAIM_TRAIN_KV, pair.label, summary, evidence)]


def _ranks_measured(cell: CellResult) -> dict[int, TPMeasurement]:
    """The cell's tensor-parallel measurements that ran, by degree."""
    measured = [] if cell.metrics is None else cell.metrics.tp
    return {m.tp: m for m in measured if m.status == "ok" and m.ranks}


def judge_tp(result: RunResult, pair: Pair) -> list[ClaimCheck]:
    """One rank's measured cache, base / CLA, equals the producer ratio within 1% at every tp, per cell."""
    expected = pair.kv_ratio
    basis = (
        f"expected {pair.reference.n_kv_layers}/{pair.subject.n_kv_layers} producer layers = {expected:.3f} "
        f"(s={pair.subject.sharing_label})"
    )
    found: list[tuple[Coord, int, float, str | None]] = []
    for coord, sub, ref in paired_cells(result, pair):
        sub_tp, ref_tp = _ranks_measured(sub), _ranks_measured(ref)
        suspect = distrust([sub, ref], {TP_KV_AS_ACCOUNTED}, timing=False)
        for tp in sorted(sub_tp.keys() & ref_tp.keys()):
            per_rank = [max(r.kv_cache_bytes for r in m.ranks) for m in (sub_tp[tp], ref_tp[tp])]
            found.append((coord, tp, per_rank[1] / per_rank[0], suspect))
    if not found:
        return [conclude(CLAIM_TP, pair.label, f"{basis}; no tp degree measured for both (sweep.tp)", [])]
    evidence = [
        Evidence(f"{where(c)} tp {tp} ({r:.3f})" if abs(r / expected - 1) > TRAIN_KV_RATIO_TOLERANCE else None, s)
        for c, tp, r, s in found
    ]
    degrees = ", ".join(str(tp) for tp in sorted({tp for _, tp, _, _ in found}))
    summary = (
        f"{basis}; per-rank cache ratio {value_range(r for _, _, r, _ in found)} at tp {degrees} ({len(found)} cases)"
    )
    return [conclude(CLAIM_TP, pair.label, summary, evidence)]
