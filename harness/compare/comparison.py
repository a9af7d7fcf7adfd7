"""The whole comparison: match the cells of both sides, compare each pair, list the rest."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.compare.changes import (
    MACHINE_NOISE_FACTOR,
    CellComparison,
    SkippedCell,
    cell_label,
    compare_cell,
    index_cells,
    machine_noise,
)
from harness.compare.comparable import hardware_differences, setting_differences, why_not_compared
from harness.compare.sides import Side
from harness.compare.thresholds import DEFAULT_ALPHA, Threshold, Verdict, parse_thresholds
from harness.errors import UserError
from harness.results.schema import CellResult
from harness.stats.paired import PAIRED_CONFIDENCE


@dataclass(frozen=True)
class Comparison:
    base: Side
    head: Side
    thresholds: dict[str, Threshold]
    alpha: float
    cells: tuple[CellComparison, ...]
    skipped: tuple[SkippedCell, ...]
    notes: tuple[str, ...] = field(default=())
    paired: bool = False  # the sides are one interleaved comparison, decided on per-round ratios
    confidence: float = PAIRED_CONFIDENCE  # paired: each median-ratio interval's confidence

    def count(self, verdict: Verdict) -> int:
        return sum(c.verdict == verdict for cell in self.cells for c in cell.changes)

    @property
    def regressions(self) -> int:
        return self.count("regression") + sum(s.is_regression for s in self.skipped)

    @property
    def exit_code(self) -> int:
        """1 when anything regressed, else 0."""
        return 1 if self.regressions else 0


def _status_reason(base: CellResult | None, head: CellResult | None) -> str:
    """Why a cell missing or not ``ok`` on a side was not compared."""
    if base is None or head is None:
        return "only at head" if base is None else "only at base"
    not_ok = [f"{cell.status} at {side}" for side, cell in (("base", base), ("head", head)) if cell.status != "ok"]
    return ", ".join(not_ok)


def is_paired(base: Side, head: Side) -> bool:
    """Both sides are the two halves of one interleaved comparison (the same pairing session)."""
    sessions = {(r.pairing.session, r.pairing.role) for r in (*base.results, *head.results) if r.pairing is not None}
    every = all(r.pairing is not None for r in (*base.results, *head.results))
    return every and len({session for session, _ in sessions}) == 1 and len(sessions) == 2


def paired_confidence(base: Side, head: Side) -> float:
    """The confidence an interleaved comparison's intervals were planned for: the strictest its files
    record, or PAIRED_CONFIDENCE for files that record none."""
    recorded = [r.pairing.confidence for r in (*base.results, *head.results) if r.pairing is not None]
    return max((c for c in recorded if c is not None), default=PAIRED_CONFIDENCE)


def percent(confidence: float) -> str:
    """``0.99975`` -> ``"99.975%"``, ``0.95`` -> ``"95%"``."""
    return f"{confidence * 100:.6g}%"


def _scenario_settings(base: Side, head: Side) -> dict[str, str]:
    """Per scenario run on both sides: why its two runs measured different things (absent when they did not)."""
    heads = {result.scenario.name: result for result in head.results}
    out = {}
    for result in base.results:
        other = heads.get(result.scenario.name)
        reason = None if other is None else setting_differences(result, other)
        if reason is not None:
            out[result.scenario.name] = reason
    return out


def compare_sides(
    base: Side,
    head: Side,
    thresholds: dict[str, Threshold] | None = None,
    alpha: float = DEFAULT_ALPHA,
    allow_cross_target: bool = False,
) -> Comparison:
    """Match cells of both sides and compare each matched pair; refuse different targets unless allowed."""
    if not 0 < alpha < 1:
        raise UserError(f"must lie between 0 and 1, got {alpha}", source="--alpha")
    notes: list[str] = []
    if base.target != head.target:
        if not allow_cross_target:
            raise UserError(
                f"results come from different hardware targets (base: {base.target}, head: {head.target}); "
                "timings and memory are only comparable on one target. Pass --allow-cross-target to compare anyway"
            )
        notes.append(
            f"targets differ ({base.target} vs {head.target}); compared because --allow-cross-target was given"
        )
    differences = sorted({d for b in base.results for h in head.results for d in hardware_differences(b, h)})
    if differences and base.target == head.target:
        if not allow_cross_target:
            raise UserError(
                f"both sides say target {base.target}, but their hardware differs in what decides speed "
                f"({'; '.join(differences)}); pass --allow-cross-target to compare anyway"
            )
        notes.append(f"hardware differs ({'; '.join(differences)}); compared because --allow-cross-target was given")
    settings = _scenario_settings(base, head)
    paired = is_paired(base, head)
    confidence = paired_confidence(base, head) if paired else PAIRED_CONFIDENCE
    if paired:
        notes.append(
            f"interleaved comparison: each latency is decided on its per-round ratios HEAD/BASE (their "
            f"{percent(confidence)} Wilcoxon signed-rank interval must exclude 1 and their Hodges-Lehmann ratio "
            "must pass the threshold; "
            "Mann-Whitney U on the pooled samples is shown, not required); a cell stops early once no latency of "
            "it is likely to show a change, and only a host busy while timing makes a cell unstable"
        )
    thresholds = thresholds if thresholds is not None else parse_thresholds()
    machine = None if paired else machine_noise([*base.results, *head.results])
    if machine is not None:
        notes.append(
            f"run-to-run noise: process medians of one cell spread {machine:.1%} (median over cells); "
            f"a latency change must also exceed {MACHINE_NOISE_FACTOR:g}x that, or its own cell's spread if larger"
        )
    base_cells, head_cells = index_cells(base.results, base.spec), index_cells(head.results, head.spec)
    compared: list[CellComparison] = []
    skipped: list[SkippedCell] = []
    for key in [*base_cells, *(k for k in head_cells if k not in base_cells)]:
        scenario, some_cell = base_cells.get(key) or head_cells[key]
        base_cell = base_cells.get(key, (scenario, None))[1]
        head_cell = head_cells.get(key, (scenario, None))[1]
        both_ok = base_cell is not None and head_cell is not None and base_cell.status == head_cell.status == "ok"
        excluded = None
        if both_ok and base_cell is not None and head_cell is not None:
            setting = settings.get(scenario)
            excluded = ("not comparable", setting) if setting else why_not_compared(base_cell, head_cell, paired)
        if both_ok and excluded is None and base_cell is not None and head_cell is not None:
            decided_at = confidence if paired else None
            compared.append(compare_cell(scenario, base_cell, head_cell, thresholds, alpha, machine, decided_at))
        else:
            skipped.append(
                SkippedCell(
                    scenario,
                    cell_label(some_cell),
                    None if base_cell is None else base_cell.status,
                    None if head_cell is None else head_cell.status,
                    *(excluded or ("", _status_reason(base_cell, head_cell))),
                )
            )
    return Comparison(base, head, thresholds, alpha, tuple(compared), tuple(skipped), tuple(notes), paired, confidence)
