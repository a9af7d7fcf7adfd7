"""Do the default scenario's rounds disagree because of the method or the machine? Both, side by side.

The stability rule flags a cell whose two rounds' medians differ by more than 10% with disjoint 95%
intervals (harness/results/stability.py). This script applies that rule to two kinds of run of the
default scenario's 20 cells, taken one after the other on the same machine:

- **bare**: two rounds over the cells, each round in a fresh random order, each cell in a fresh
  Python process that builds the cell's decoder the way a worker does (sdpa, one torch thread, the
  workers' malloc thresholds, synthetic weights and a filled cache) and times its decode step and its
  core attention as plain loops: 0.3 s of warm-up, then 60 single calls each. No harness timing code.
- **harness**: ``attnbench run scenarios/default.toml`` (its two rounds, every cell in a worker).

For each run it prints how many cells the round rule flags, the median and largest round-to-round
disagreement of the decode and core-attention medians, the reference loop's spread across processes
(the noise floor every worker records), how often a cell's disagreement came with its reference loop
moving as much between the same two processes (the rank correlation of the two, and how many flagged
cells had their reference move by more than 10%), and the wall time. If the bare loops disagree as often as the
harness, the rounds' disagreement is the machine's; if they agree and the harness does not, it is
the method's. ``--repeats N`` alternates the two N times (bare first on odd repetitions) so that the
machine's drift falls on both alike.

    python benchmarks/bare_rounds.py                  # one of each, about 5 minutes on 2 cores
    python benchmarks/bare_rounds.py --repeats 2 --json bare-rounds.json

Run it on a quiet machine (``uptime`` first) and quote the load beside its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "default.toml"
# the fixed glibc thresholds every worker starts with (harness/run/worker.py MALLOC_ENV)
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
BARE_WARMUP_S = 0.3
BARE_CALLS = 60
METRICS = ("decode_latency_s", "attention_latency_s")


def child(variant_name: str, batch_size: int, context_len: int) -> dict[str, Any]:
    """One fresh process: the cell's decode step and core attention as bare loops, and the reference loop."""
    import gc

    import torch

    from harness.measure.reference import reference_loop
    from harness.model import build_decoder
    from harness.scenario.load import load_scenario

    torch.set_num_threads(1)
    loaded = load_scenario(SCENARIO)
    variant = next(v for v in loaded.variants if v.name == variant_name)
    samples: dict[str, list[float]] = {}
    with torch.inference_mode():
        decoder = build_decoder(
            loaded.scenario.model, variant, dtype="float32", device="cpu", backend="sdpa", weights="synthetic"
        )
        cache = decoder.allocate_cache(batch_size, context_len + 1)
        decoder.fill_cache_synthetic(cache, context_len, torch.Generator().manual_seed(0))
        tokens = torch.zeros(batch_size, 1, dtype=torch.long)
        q = torch.randn(decoder.core_query_shape(batch_size), dtype=decoder.dtype)
        reference = reference_loop()["reference_s"]
        steps = {
            "decode_latency_s": lambda: decoder.decode_step(tokens, cache, context_len),
            "attention_latency_s": lambda: decoder.core_attention(q, cache, context_len),
        }
        gc.collect()
        gc.disable()
        for metric, step in steps.items():
            start = time.perf_counter()
            while time.perf_counter() - start < BARE_WARMUP_S:
                step()
            timed = []
            for _ in range(BARE_CALLS):
                before = time.perf_counter()
                step()
                timed.append(time.perf_counter() - before)
            samples[metric] = timed
    return {"samples": samples, "reference_s": reference}


def cells() -> list[tuple[str, int, int]]:
    from harness.scenario.load import load_scenario

    loaded = load_scenario(SCENARIO)
    sweep = loaded.scenario.sweep
    return [(v.name, b, c) for v in loaded.variants for b in sweep.batch_size for c in sweep.context_len]


def bare_run(seed: int) -> dict[str, Any]:
    """Two rounds over every cell, each cell a fresh process: per cell and metric, each round's samples."""
    started = time.perf_counter()
    env = os.environ | WORKER_MALLOC
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    grid = cells()
    rounds: dict[str, dict[str, list[list[float]]]] = {}
    references = []
    cell_references: dict[str, list[float]] = {}
    rng = random.Random(seed)
    for round_index in range(2):
        order = list(grid)
        rng.shuffle(order)
        for done, (variant, batch, context) in enumerate(order, start=1):
            command = [sys.executable, __file__, "--child", variant, str(batch), str(context)]
            out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            reading = json.loads(out.stdout)
            key = f"{variant} b{batch} ctx{context}"
            references.append(reading["reference_s"])
            cell_references.setdefault(key, []).append(reading["reference_s"])
            for metric, timed in reading["samples"].items():
                rounds.setdefault(key, {}).setdefault(metric, []).append(timed)
            print(f"\rbare round {round_index + 1}: {done}/{len(order)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {
        "rounds": rounds,
        "references": references,
        "cell_references": cell_references,
        "wall_s": time.perf_counter() - started,
    }


def harness_run() -> dict[str, Any]:
    """``attnbench run`` of the default scenario into a scratch folder: per cell and metric, each round's samples."""
    from harness.results.stability import rounds_of
    from harness.results.store import load_result

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bare-rounds-") as scratch:
        subprocess.run(
            [sys.executable, "-m", "harness", "run", str(SCENARIO), "--out", scratch, "--quiet"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (path,) = Path(scratch).glob("*/*.json")
        result = load_result(path)
    wall = time.perf_counter() - started
    rounds: dict[str, dict[str, list[list[float]]]] = {}
    references = []
    cell_references: dict[str, list[float]] = {}
    unstable = 0
    for cell in result.cells:
        if cell.metrics is None:
            continue
        key = f"{cell.variant} b{cell.batch_size} ctx{cell.context_len}"
        unstable += cell.stability is not None and cell.stability.unstable
        per_round = [load.reference_s for load in cell.host_load if load.reference_s is not None]
        references += per_round
        cell_references[key] = per_round
        for metric in METRICS:
            summary = getattr(cell.metrics, metric)
            if summary is not None:
                rounds.setdefault(key, {})[metric] = rounds_of(summary)
    return {
        "rounds": rounds,
        "references": references,
        "cell_references": cell_references,
        "wall_s": wall,
        "unstable_any_rule": unstable,
    }


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n (ties share their mean rank)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of x and y (None with fewer than 3 pairs or a constant side)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(ranks(x), ranks(y))


def assess(run: dict[str, Any]) -> dict[str, Any]:
    """The round rule per cell, and the round-to-round disagreement of each metric's medians."""
    from harness.results.stability import ROUND_DISAGREEMENT
    from harness.stats.order import median_ci

    flagged = 0
    flagged_with_reference = 0
    disagreements: dict[str, list[float]] = {metric: [] for metric in METRICS}
    cell_worst: list[float] = []
    cell_reference_moves: list[float] = []
    for key, by_metric in run["rounds"].items():
        cell_flagged = False
        worst = 0.0
        for metric, rounds in by_metric.items():
            rounds = [r for r in rounds if r]
            if len(rounds) < 2:
                continue
            (m1, lo1, hi1), (m2, lo2, hi2) = ((statistics.median(r), *median_ci(r)) for r in rounds[:2])
            difference = abs(m1 - m2) / min(m1, m2)
            disagreements[metric].append(difference)
            worst = max(worst, difference)
            cell_flagged |= difference > ROUND_DISAGREEMENT and (hi1 < lo2 or hi2 < lo1)
        flagged += cell_flagged
        refs = run["cell_references"].get(key, [])
        if len(refs) >= 2:
            moved = abs(refs[0] - refs[1]) / min(refs[0], refs[1])
            cell_worst.append(worst)
            cell_reference_moves.append(moved)
            flagged_with_reference += cell_flagged and moved > ROUND_DISAGREEMENT
    references = sorted(run["references"])
    deciles = statistics.quantiles(references, n=10, method="inclusive") if len(references) >= 2 else [0.0, 0.0]
    return {
        "cells": len(run["rounds"]),
        "flagged_by_round_rule": flagged,
        "median_disagreement": {m: statistics.median(d) for m, d in disagreements.items() if d},
        "max_disagreement": {m: max(d) for m, d in disagreements.items() if d},
        "reference_p10_p90": (deciles[-1] - deciles[0]) / statistics.median(references) if references else None,
        "flagged_with_reference_moved": flagged_with_reference,
        "disagreement_reference_rank_correlation": rank_correlation(cell_worst, cell_reference_moves),
        "wall_s": run["wall_s"],
        "unstable_any_rule": run.get("unstable_any_rule"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="bare and harness runs each (alternating)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bare rounds' orders")
    parser.add_argument("--json", type=Path, help="also write every run's assessment and samples here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        variant, batch, context = args.child
        print(json.dumps(child(variant, int(batch), int(context))))
        return
    rows, runs = [], []
    for repeat in range(args.repeats):
        kinds = ("bare", "harness") if repeat % 2 == 0 else ("harness", "bare")
        for kind in kinds:
            load = os.getloadavg()[0]
            run = bare_run(args.seed + repeat) if kind == "bare" else harness_run()
            found = assess(run)
            runs.append({"kind": kind, "load_before": load, **found, "rounds": run["rounds"]})
            rows.append(
                [
                    f"{repeat + 1} {kind}",
                    f"{load:.2f}",
                    f"{found['flagged_by_round_rule']} of {found['cells']}",
                    "-" if found["unstable_any_rule"] is None else f"{found['unstable_any_rule']} of {found['cells']}",
                    *(
                        f"{found['median_disagreement'].get(m, 0):.1%} / {found['max_disagreement'].get(m, 0):.0%}"
                        for m in METRICS
                    ),
                    f"{found['reference_p10_p90']:.1%}" if found["reference_p10_p90"] is not None else "-",
                    f"{found['flagged_with_reference_moved']}",
                    "-"
                    if found["disagreement_reference_rank_correlation"] is None
                    else f"{found['disagreement_reference_rank_correlation']:+.2f}",
                    f"{found['wall_s']:.0f} s",
                ]
            )
    headers = [
        "run",
        "load before",
        "round rule flags",
        "unstable (all rules)",
        "decode: median / max disagreement",
        "attention: median / max",
        "reference p10-p90",
        "flagged with reference moved >10%",
        "rank corr. disagreement / reference move",
        "wall",
    ]
    print(tabulate(rows, headers=headers))
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
