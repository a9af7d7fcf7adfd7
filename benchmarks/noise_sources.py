"""Which process settings make a CPU measurement reproducible between processes: measured, not assumed.

Each candidate setting (torch's intra-op threads, transparent huge pages for torch's large
allocations) runs in ``--processes`` fresh processes, interleaved in a random order so that the
machine's drift hits every setting alike. Every process builds the default scenario's decoder for
one cell, then takes three medians: the harness's own timing (harness.measure.timing.time_cpu with
the default scenario's steady warm-up and ±2% target), a bare loop of the same step (0.3 s warm-up,
60 single calls), and the bare reference loop every worker records (harness/measure/reference.py).
For each setting it prints how far those medians spread across processes: ``(max - min) / min`` and
``(p90 - p10) / median``. A setting that narrows the spread of the bare loop and the reference is
the machine's; one that narrows only the harness's is the method's.

    python benchmarks/noise_sources.py                       # decode, H64-MQA b4 ctx2048 (about 2 minutes)
    python benchmarks/noise_sources.py --metric attention --processes 8

Run it on a quiet machine (check ``uptime`` first) and quote the load beside its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
# The fixed glibc thresholds the workers start with (harness/run/worker.py MALLOC_ENV): every
# allocation above 128 KiB is a fresh mmap, so a step's temporaries fault their pages in on every call.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
# (label, torch threads (0: torch's default), environment of the process)
SETTINGS: list[tuple[str, int, dict[str, str]]] = [
    ("threads default, 4 KiB pages", 0, {"THP_MEM_ALLOC_ENABLE": "0"}),
    ("threads default, huge pages", 0, {"THP_MEM_ALLOC_ENABLE": "1"}),
    ("1 thread, 4 KiB pages", 1, {"THP_MEM_ALLOC_ENABLE": "0"}),
    ("1 thread, huge pages", 1, {"THP_MEM_ALLOC_ENABLE": "1"}),
    ("1 thread, fixed malloc thresholds", 1, {"THP_MEM_ALLOC_ENABLE": "0", **FIXED_MALLOC}),
    ("threads default, fixed malloc thresholds", 0, {"THP_MEM_ALLOC_ENABLE": "0", **FIXED_MALLOC}),
]
BARE_WARMUP_S = 0.3
BARE_CALLS = 60


def child(variant_name: str, batch_size: int, context_len: int, metric: str, threads: int) -> dict[str, float]:
    """One process's three medians (seconds), the way a measuring worker would take them."""
    import gc
    import time

    import torch

    from harness.measure.reference import reference_loop
    from harness.measure.timing import time_cpu
    from harness.model import build_decoder
    from harness.scenario.load import load_scenario

    if threads:
        torch.set_num_threads(threads)
    loaded = load_scenario(ROOT / "scenarios" / "default.toml")
    scenario = loaded.scenario
    variant = next(v for v in loaded.variants if v.name == variant_name)
    measure = scenario.measure
    with torch.inference_mode():
        decoder = build_decoder(
            scenario.model, variant, dtype="float32", device="cpu", backend="sdpa", weights="synthetic"
        )
        cache = decoder.allocate_cache(batch_size, context_len + 1)
        decoder.fill_cache_synthetic(cache, context_len, torch.Generator().manual_seed(0))
        tokens = torch.zeros(batch_size, 1, dtype=torch.long)
        q = torch.randn(decoder.core_query_shape(batch_size), dtype=decoder.dtype)

        def step() -> object:
            if metric == "decode":
                return decoder.decode_step(tokens, cache, context_len)
            return decoder.core_attention(q, cache, context_len)

        reference = reference_loop()["reference_s"]
        harness = time_cpu(
            step,
            warmup_s=measure.warmup_s,
            warmup_max_s=measure.warmup_cap_s,
            min_time_s=measure.min_time_s,
            target_ci=measure.target_ci,
            max_time_s=measure.time_cap_s,
            min_samples=measure.min_samples,
            max_samples=measure.max_samples,
        )
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        while time.perf_counter() - start < BARE_WARMUP_S:
            step()
        bare = []
        for _ in range(BARE_CALLS):
            before = time.perf_counter()
            step()
            bare.append(time.perf_counter() - before)
    return {
        "harness_s": statistics.median(harness.seconds),
        "bare_s": statistics.median(bare),
        "reference_s": reference,
        "threads": torch.get_num_threads(),
    }


def spread(values: list[float]) -> tuple[float, float]:
    """((max - min) / min, (p90 - p10) / median) of ``values``."""
    ordered = sorted(values)
    if len(ordered) < 2:
        return 0.0, 0.0
    deciles = statistics.quantiles(ordered, n=10, method="inclusive")
    return (ordered[-1] - ordered[0]) / ordered[0], (deciles[-1] - deciles[0]) / statistics.median(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=6, help="fresh processes per setting (at least 2)")
    parser.add_argument("--variant", default="H64-MQA")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--context-len", type=int, default=2048)
    parser.add_argument("--metric", choices=("decode", "attention"), default="decode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    parser.add_argument(
        "--settings",
        default=",".join(str(i) for i in range(len(SETTINGS))),
        help=f"which settings, by index (0-{len(SETTINGS) - 1})",
    )
    parser.add_argument("--json", type=Path, help="also write every process's medians here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.variant, args.batch_size, args.context_len, args.metric, int(args.child))))
        return
    chosen = [int(index) for index in args.settings.split(",")]
    order = [index for index in chosen for _ in range(args.processes)]
    random.Random(args.seed).shuffle(order)
    readings: dict[int, list[dict[str, float]]] = {index: [] for index in chosen}
    for done, index in enumerate(order, start=1):
        _label, threads, setting_env = SETTINGS[index]
        command = [sys.executable, __file__, "--child", str(threads), "--variant", args.variant]
        command += [
            "--batch-size",
            str(args.batch_size),
            "--context-len",
            str(args.context_len),
            "--metric",
            args.metric,
        ]
        unset = ("THP_MEM_ALLOC_ENABLE", *FIXED_MALLOC)
        env = {k: v for k, v in os.environ.items() if k not in unset} | setting_env
        out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        readings[index].append(json.loads(out.stdout))
        print(f"\r{done}/{len(order)} processes", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    rows = []
    for index in chosen:
        label, got = SETTINGS[index][0], readings[index]
        row = [label, got[0]["threads"]]
        for key in ("harness_s", "bare_s", "reference_s"):
            values = [r[key] for r in got]
            full, deciles = spread(values)
            row.append(f"{statistics.median(values) * 1e3:.3f} ms  {full:.1%} / {deciles:.1%}")
        rows.append(row)
    headers = ["setting", "threads", "harness median  max/min-1 / p10-p90", "bare loop", "reference loop"]
    print(f"{args.variant} b{args.batch_size} ctx{args.context_len} {args.metric}, {args.processes} processes each")
    print(tabulate(rows, headers=headers))
    if args.json is not None:
        args.json.write_text(json.dumps({SETTINGS[i][0]: readings[i] for i in readings}, indent=1))


if __name__ == "__main__":
    main()
