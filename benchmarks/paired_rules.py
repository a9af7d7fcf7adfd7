"""How many rounds and how much power does a stopping rule of ``attnbench ab`` give? Simulated on measured noise.

``attnbench ab`` measures a cell round after round and stops it early once a change has little chance
left to show (harness/stats/paired.py). How many rounds an unchanged cell then costs, and how often a
slowed one is still caught, depends on the noise of the round ratios. This replays that decision on
noise this machine produced: the decode latency's round ratios of the A/A comparisons recorded by
``benchmarks/compare_power.py`` (``benchmarks/figures/compare-power_*.json``), made symmetric (an
A/A log ratio is as likely to be +x as -x) and shifted by a slowdown. One latency per simulated cell;
a real cell goes on while any of its latencies does, so it runs more rounds than this shows.

Rules compared: ``ab``'s own (the signed-rank interval with its plan and futility stop, called from
harness.stats.paired) and the sign test it replaced (the median's interval from binomial order
statistics, 23 rounds at a 5% family-wise error, a Beta-binomial predictive stop below 20%),
optionally with other plans.

    python benchmarks/paired_rules.py [--cells 300] [--shifts 0,0.065,0.14] [--rounds 21,27,33] [--futility 0.2,0.3]

The shifts are log ratios: 0.14 and 0.065 are what the 10% and 5% busy-wait commits of
compare_power.py measured on average here (the busy-wait adds its share to the decode step's own time).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import betabinom
from tabulate import tabulate

from harness.stats import paired
from harness.stats.order import median_ci_indices

FIGURES = Path(__file__).resolve().parent / "figures"
LATENCIES = 80  # the default scenario's family


def measured_noise(folder: Path) -> list[float]:
    """Every recorded A/A decode log ratio, and each negated."""
    logs = []
    for path in sorted(folder.glob("compare-power_*.json")):
        for comparison in json.loads(path.read_text()).get("aa", []):
            for ratios in (comparison.get("decode_ratios") or {}).values():
                logs.extend(math.log(r) for r in ratios)
    return logs + [-x for x in logs]


Rule = Callable[[Sequence[float]], bool]  # ratios so far -> worth another round
Final = Callable[[Sequence[float]], bool]  # all ratios -> a change shows


def signed_rank_rule(rounds: int, futility: float, confidence: float) -> tuple[Rule, Final]:
    def goes_on(ratios: Sequence[float]) -> bool:
        return paired.worth_another_round(ratios, rounds, confidence, futility)

    def shows(ratios: Sequence[float]) -> bool:
        _, low, high, covered = paired.ratio_interval(ratios, confidence)
        return covered and (low > 1 or high < 1)

    return goes_on, shows


def sign_rule(rounds: int, futility: float, confidence: float) -> tuple[Rule, Final]:
    """The rule ab used before the signed-rank test: at most k ratios on the wrong side of 1."""
    indices = median_ci_indices(rounds, confidence)
    k = -1 if indices is None else indices[0]

    def chance(ratios: Sequence[float]) -> float:
        left, out = rounds - len(ratios), []
        for wrong, agreeing in ((sum(r <= 1 for r in ratios), sum(r > 1 for r in ratios)),
                                (sum(r >= 1 for r in ratios), sum(r < 1 for r in ratios))):  # fmt: skip
            room = k - wrong
            out.append(0.0 if room < 0 else float(betabinom.cdf(room, left, 1 + wrong, 1 + agreeing)))
        return max(out)

    def goes_on(ratios: Sequence[float]) -> bool:
        if len(ratios) >= rounds or k < 0:
            return False
        one_sided = all(r > 1 for r in ratios) or all(r < 1 for r in ratios)
        c = chance(ratios)
        return c > 0 and (one_sided or c >= futility)

    def shows(ratios: Sequence[float]) -> bool:
        return k >= 0 and min(sum(r <= 1 for r in ratios), sum(r >= 1 for r in ratios)) <= k

    return goes_on, shows


def simulate(
    rule: tuple[Rule, Final], rounds: int, shift: float, noise: list[float], cells: int, seed: int
) -> tuple[float, float]:
    """(mean rounds per cell, share of cells whose change shows) over ``cells`` simulated cells."""
    goes_on, shows = rule
    rng = random.Random(seed)
    spent = caught = 0
    for _ in range(cells):
        ratios: list[float] = []
        while True:
            ratios.append(math.exp(rng.choice(noise) + shift))
            if len(ratios) >= rounds or not goes_on(ratios):
                break
        spent += len(ratios)
        caught += len(ratios) == rounds and shows(ratios)
    return spent / cells, caught / cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300, help="simulated cells per rule and shift")
    parser.add_argument("--shifts", default="0,0.065,0.14", help="log-ratio shifts (0: A/A)")
    parser.add_argument("--rounds", default="", help="signed-rank plans to try besides ab's own (comma-separated)")
    parser.add_argument("--futility", default="", help="futility thresholds to try besides ab's own")
    parser.add_argument("--family-alpha", type=float, default=paired.FAMILY_ALPHA, help="family-wise error rate")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    noise = measured_noise(FIGURES)
    if not noise:
        raise SystemExit(f"no recorded A/A ratios under {FIGURES}")
    confidence = paired.family_confidence(LATENCIES, args.family_alpha)
    own = paired.rounds_tolerating(paired.TOLERATED_CONTRARY, confidence)
    plans = sorted({own, *(int(x) for x in args.rounds.split(",") if x)})
    thresholds = sorted({paired.FUTILITY, *(float(x) for x in args.futility.split(",") if x)})
    before = paired.family_confidence(LATENCIES, 0.05)  # the old rule's own family-wise 5%
    rules = [("sign test (before, 5% family-wise)", 23, 0.2, sign_rule(23, 0.2, before))]
    rules += [(f"signed rank{' (ab)' if (n, f) == (own, paired.FUTILITY) else ''}", n, f,
               signed_rank_rule(n, f, confidence)) for n in plans for f in thresholds]  # fmt: skip
    shifts = [float(x) for x in args.shifts.split(",")]
    spread = float(np.std(noise))
    print(
        f"noise: {len(noise) // 2} recorded A/A decode log ratios (spread {spread:.3f}), made symmetric; "
        f"{LATENCIES} latencies at {confidence:.4%} each"
    )
    rows = []
    for name, n, futility, rule in rules:
        row: list[object] = [name, n, futility]
        for shift in shifts:
            spent, caught = simulate(rule, n, shift, noise, args.cells, args.seed)
            row += [f"{spent:.1f}", f"{caught:.0%}"]
        rows.append(row)
    headers = ["rule", "rounds", "futility"] + [h for s in shifts for h in (f"rounds @{s:g}", f"caught @{s:g}")]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
