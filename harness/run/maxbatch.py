"""The largest batch that fits a memory budget, found from the accounting's prediction in a few probes.

A probe builds the model and cache for one batch size and runs one decode step in an isolated
worker (harness/measure/cell_worker.py:probe_batch). The search keeps the largest batch known to fit
(``lo``) and the smallest known not to (``hi``) and stops when ``hi == lo + 1``: the answer is
then proven both ways, it fits and one more does not. The next guess comes from a straight
line through the peaks measured so far (memory grows linearly with the batch: weights plus
per-sequence cache and activations), falling back to doubling or bisection; so a good
prediction is confirmed in two probes and a poor one corrected in a handful.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

LINE_PROBES = 8  # probes guided by the memory line before falling back to bisection
# How far a CPU resident set at one batch size moves between runs, which repeating a probe within one
# run does not show: two runs of one commit (an A/A `attnbench ab` of the default scenario) measured
# the same batch 0.73 MiB apart while each run's two probes of it agreed to the byte.
RESIDENT_SET_NOISE_BYTES = 1 << 20
# Two probes whose peaks differ by this much give a slope to trust over the accounting's prior: the
# resident set's noise (above) is then at most a quarter of the rise. A prior far off (a transient the
# accounting overstates) made the line creep a sequence or two per probe: a chunked step's search took
# 18 probes to move from 186 to 194 sequences, each peak 2 MiB above the last.
SLOPE_MIN_RISE_BYTES = 4 * RESIDENT_SET_NOISE_BYTES


@dataclass(frozen=True)
class Probe:
    """One probed batch size."""

    batch_size: int
    fits: bool
    peak_bytes: int | None  # None when the probe ran out of memory or failed
    status: str  # "ok", "oom", "killed: ..." (does not fit), "error: ..." or "timeout: ..."


@dataclass(frozen=True)
class SearchResult:
    measured: int | None  # None when the search could not finish (a probe failed, or too many probes)
    probes: tuple[Probe, ...]
    note: str | None = None


def _slope(probes: list[Probe], lo: int, hi: int, prior_bytes_per_sequence: int) -> float:
    """Bytes per extra sequence near the budget.

    Across the bracket when both of its ends were measured (a secant, as in regula falsi);
    otherwise from the two measured probes farthest apart, if they are far enough apart that
    the resident set's noise cannot dominate (a quarter of the batch, or peaks SLOPE_MIN_RISE_BYTES
    apart); else the accounting's per-sequence bytes.
    """
    peaks = {p.batch_size: p.peak_bytes for p in probes if p.peak_bytes is not None}
    if lo in peaks and hi in peaks and peaks[hi] > peaks[lo]:
        return (peaks[hi] - peaks[lo]) / (hi - lo)
    measured = sorted(peaks.items())
    if len(measured) >= 2:
        (b1, m1), (b2, m2) = measured[0], measured[-1]
        if m2 > m1 and (b2 - b1 >= max(2, b2 // 4) or m2 - m1 >= SLOPE_MIN_RISE_BYTES):
            return (m2 - m1) / (b2 - b1)
    return float(prior_bytes_per_sequence)


def search_max_batch(
    probe: Callable[[int], Probe],
    predicted: int,
    budget_bytes: int,
    prior_bytes_per_sequence: int,
    *,
    max_probes: int = 24,
    max_batch: int = 1 << 20,
) -> SearchResult:
    """Find the largest batch for which ``probe(batch).fits``, starting at ``predicted``."""
    probes: list[Probe] = []
    lo, hi = 0, max_batch + 1  # lo fits (0 trivially), hi does not
    guess = max(1, min(predicted, max_batch))
    while True:
        if len(probes) == max_probes:
            return SearchResult(None, tuple(probes), f"no answer after {max_probes} probes (between {lo} and {hi})")
        result = probe(guess)
        probes.append(result)
        if result.status.startswith(("error", "timeout")):
            return SearchResult(None, tuple(probes), f"probe at batch {guess} failed: {result.status}")
        if result.fits:
            lo = guess
        else:
            hi = guess
        if hi - lo <= 1:
            return SearchResult(lo, tuple(probes))
        guess = _next_guess(probes, lo, hi, budget_bytes, _slope(probes, lo, hi, prior_bytes_per_sequence), max_batch)


def _next_guess(probes: list[Probe], lo: int, hi: int, budget_bytes: int, slope: float, max_batch: int) -> int:
    """Where the budget line crosses, kept strictly inside (lo, hi); bisect or double if already probed.

    The line gets the first LINE_PROBES guesses; if they have not closed the bracket the memory
    is not behaving linearly, and bisection (doubling while no upper bound is known) takes over,
    which needs at most log2 of the bracket more probes.
    """
    probed = {p.batch_size for p in probes}
    measured = [p for p in probes if p.peak_bytes is not None]
    # the measured probe whose peak is nearest the budget anchors the line
    anchor = min(measured, key=lambda p: abs(budget_bytes - (p.peak_bytes or 0)), default=None)
    if len(probes) < LINE_PROBES and anchor is not None and anchor.peak_bytes is not None and slope > 0:
        estimate = anchor.batch_size + int((budget_bytes - anchor.peak_bytes) // slope)
        guess = min(max(estimate, lo + 1), hi - 1)
        if guess not in probed:
            return guess
    if hi > max_batch:
        return min(max_batch, max(2 * lo, lo + 1))
    return (lo + hi) // 2


def boundary_uncertainty(
    probes: list[Probe], measured: int, bytes_per_sequence: int, budget_bytes: int | None = None, margin_bytes: int = 0
) -> int:
    """± sequences a measured max batch moves between identical probes, from probes repeated at the boundary.

    The largest spread of peaks measured at one batch size (``measured`` or ``measured + 1``), in
    sequences of ``bytes_per_sequence`` (rounded up); at least 1 when the boundary's two probes did not
    agree on whether it fits. With ``budget_bytes``: also at least ``margin_bytes`` in sequences (rounded
    up) when a boundary peak lies within ``margin_bytes`` of the budget, the amount a resident set moves
    between runs that the repeats of one run do not show (their forkserver is the same).
    """
    spread = 0
    flipped = False
    near = False
    for batch in (measured, measured + 1):
        at = [p for p in probes if p.batch_size == batch and p.status == "ok"]
        peaks = [p.peak_bytes for p in at if p.peak_bytes is not None]
        if len(peaks) >= 2:
            spread = max(spread, max(peaks) - min(peaks))
        flipped = flipped or len({p.fits for p in at}) > 1
        if budget_bytes is not None and margin_bytes > 0:
            near = near or any(abs(peak - budget_bytes) < margin_bytes for peak in peaks)
    if near:
        spread = max(spread, margin_bytes)
    sequences = math.ceil(spread / bytes_per_sequence) if bytes_per_sequence > 0 else 0
    return max(sequences, 1 if flipped else 0)
