"""The machine's own noise at run time: one fixed bare loop, timed in every measuring worker.

When a cell's rounds disagree, was it the machine or the method? Every CPU worker that times a cell
first times the same reference: a sum over a fixed ``REFERENCE_BYTES`` float32 tensor (larger than the
last-level caches of the machines this runs on, so it reads memory, as a decode step does), with the
worker's own thread settings, a few untimed calls and then ``REFERENCE_CALLS`` calls each between
two ``perf_counter`` reads: no calibration, no statistics beyond a median. Its median differs from
one worker to the next only by what the machine does (frequency, memory contention, neighbours,
where the pages landed): the run's **noise floor** (harness/results/stability.py, ``noise_floor``) is
how far those medians spread over the run. Cells whose rounds disagree by much more than that were
disturbed by something the reference did not see; cells that move with it, by the machine.

The loop takes about 20-35 ms on a 2-core VM (64 MiB at 25-50 GB/s, 12 calls, and the first write).
"""

from __future__ import annotations

import time

from harness.stats.order import percentile

REFERENCE_BYTES = 64 * 2**20
REFERENCE_WARMUP_CALLS = 2
REFERENCE_CALLS = 10


def reference_loop() -> dict[str, float]:
    """The reference loop's median seconds per call and its p10-p90 width relative to that median."""
    import torch

    data = torch.ones(REFERENCE_BYTES // 4, dtype=torch.float32)  # written once: every page is touched
    for _ in range(REFERENCE_WARMUP_CALLS):
        data.sum()
    seconds = []
    for _ in range(REFERENCE_CALLS):
        start = time.perf_counter()
        data.sum()
        seconds.append(time.perf_counter() - start)
    median = percentile(seconds, 0.5)
    return {
        "reference_s": median,
        "reference_spread": (percentile(seconds, 0.9) - percentile(seconds, 0.1)) / median,
    }
