"""Regenerate the golden files in this folder: ``python tests/data/compare/make_golden.py``.

base.json / head.json are one scenario on one CPU target, 20 lognormal samples (3% sigma) per
latency. HEAD against BASE: H128-MHA decodes 10% slower; H128-MQA has the same latency
distribution but 5% more peak memory; H128-MQA-CLA2 is 15% faster but its measured max batch
dropped; H128-GQA4 ran out of memory; H64-MQA is new. base_other_target.json is BASE on another
target. base_vs_head.md is what ``attnbench compare base.json head.json`` prints from this folder.
Review the diff of base_vs_head.md by eye before committing a regenerated one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for helpers_results

from helpers_results import lognormal_samples, make_cell, make_run  # noqa: E402

from harness import compare  # noqa: E402
from harness.results.store import save_result  # noqa: E402

BASE_COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
HEAD_COMMIT = "f0e1d2c3b4a5968778695a4b3c2d1e0f98765432"


def samples(median_s: float, seed: int) -> list[float]:
    return [round(x, 9) for x in lognormal_samples(median_s, 0.03, 20, seed)]


def main() -> None:
    base_cells = [
        make_cell(
            "H128-MHA",
            8,
            2048,
            decode_samples=samples(0.010, 1),
            attention_samples=samples(0.002, 2),
            peak_memory_bytes=400_000_000,
            kv_cache_bytes=67_108_864,
            max_batch_measured=24,
            bandwidth_gbps=21.5,
        ),
        make_cell(
            "H128-MQA",
            8,
            2048,
            decode_samples=samples(0.008, 3),
            peak_memory_bytes=300_000_000,
            kv_cache_bytes=8_388_608,
            max_batch_measured=96,
            bandwidth_gbps=20.1,
        ),
        make_cell(
            "H128-MQA-CLA2",
            8,
            2048,
            decode_samples=samples(0.007, 4),
            peak_memory_bytes=290_000_000,
            kv_cache_bytes=4_194_304,
            max_batch_measured=48,
            bandwidth_gbps=19.8,
        ),
        make_cell(
            "H128-GQA4",
            16,
            4096,
            decode_samples=samples(0.020, 5),
            peak_memory_bytes=700_000_000,
            kv_cache_bytes=134_217_728,
            max_batch_measured=20,
            bandwidth_gbps=22.0,
        ),
    ]
    head_cells = [
        make_cell(
            "H128-MHA",
            8,
            2048,
            decode_samples=samples(0.011, 11),
            attention_samples=samples(0.002, 12),
            peak_memory_bytes=400_000_000,
            kv_cache_bytes=67_108_864,
            max_batch_measured=24,
            bandwidth_gbps=19.6,
        ),
        make_cell(
            "H128-MQA",
            8,
            2048,
            decode_samples=samples(0.008, 13),
            peak_memory_bytes=315_000_000,
            kv_cache_bytes=8_388_608,
            max_batch_measured=96,
            bandwidth_gbps=20.0,
        ),
        make_cell(
            "H128-MQA-CLA2",
            8,
            2048,
            decode_samples=samples(0.00595, 14),
            peak_memory_bytes=290_000_000,
            kv_cache_bytes=4_194_304,
            max_batch_measured=40,
            bandwidth_gbps=23.3,
        ),
        make_cell("H128-GQA4", 16, 4096, status="oom"),
        make_cell("H64-MQA", 8, 2048, decode_samples=samples(0.006, 15)),
    ]
    base = make_run(base_cells, commit=BASE_COMMIT, started_utc="2026-01-05T10:00:00Z")
    head = make_run(head_cells, commit=HEAD_COMMIT, started_utc="2026-01-06T10:00:00Z")
    other = make_run(base_cells, target="nvidia-h100-80gb-hbm3", commit=BASE_COMMIT, started_utc="2026-01-05T10:00:00Z")
    save_result(base, HERE / "base.json")
    save_result(head, HERE / "head.json")
    save_result(other, HERE / "base_other_target.json")
    os.chdir(HERE)
    sides = compare.load_sides("base.json", "head.json")
    (HERE / "base_vs_head.md").write_text(compare.render_markdown(compare.compare_sides(*sides)), encoding="utf-8")


if __name__ == "__main__":
    main()
