"""How much the timing loop adds: time_cpu's median per step against a bare perf_counter loop.

Times one decode step of a small model (the default scenario's shape, MQA, batch 1, 512 tokens of
context) both with harness.measure.timing.time_cpu (calibrated inner repetitions, GC off) and with
harness.measure.timing.bare_loop_median (single calls, nothing else), alternating a few rounds so
that drift on a shared machine hits both alike, and prints the medians and their ratio.

    python benchmarks/runner_overhead.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
from tabulate import tabulate

from harness.measure.timing import bare_loop_median, time_cpu
from harness.model import build_decoder
from harness.scenario.schema import ModelSpec
from harness.variants import Variant

MODEL = ModelSpec(d_model=512, n_layers=8, d_ff=1376, vocab_size=8192, dtype="float32")
VARIANT = Variant(name="H64-MQA", head_dim=64, n_heads=8, n_kv_heads=1, kv_layers=tuple(range(8)))
CONTEXT_LEN = 512
TOLERANCE = 0.03


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of both loops")
    parser.add_argument("--backend", default="grouped")
    args = parser.parse_args()
    decoder = build_decoder(MODEL, VARIANT, dtype="float32", device="cpu", backend=args.backend)
    cache = decoder.allocate_cache(1, CONTEXT_LEN + 1)
    decoder.fill_cache_synthetic(cache, CONTEXT_LEN)
    tokens = torch.zeros(1, 1, dtype=torch.long)

    def step() -> None:
        decoder.decode_step(tokens, cache, CONTEXT_LEN)

    harness_s, bare_s = [], []
    for _ in range(args.rounds):
        samples = time_cpu(step, warmup_s=0.2, min_time_s=0.5, min_samples=15, max_samples=500)
        harness_s.append(statistics.median(samples))
        bare_s.append(bare_loop_median(step, 200))
    rows = [
        [i, f"{h * 1e6:.1f}", f"{b * 1e6:.1f}", f"{h / b:.3f}"]
        for i, (h, b) in enumerate(zip(harness_s, bare_s, strict=True))
    ]
    harness_median, bare_median = statistics.median(harness_s), statistics.median(bare_s)
    rows.append(
        ["median", f"{harness_median * 1e6:.1f}", f"{bare_median * 1e6:.1f}", f"{harness_median / bare_median:.3f}"]
    )
    print(tabulate(rows, headers=["round", "time_cpu median µs", "bare loop median µs", "ratio"]))
    within = abs(harness_median / bare_median - 1) <= TOLERANCE
    print(f"time_cpu is {'within' if within else 'NOT within'} {TOLERANCE:.0%} of the bare loop")


if __name__ == "__main__":
    main()
