"""Does a forkserver give all of its workers a constant of their own? Measured, not assumed.

Every measuring worker is a fork of its run's one forkserver (harness/run/worker.py), so the
workers of one run share whatever that forkserver's process state gives them: the physical pages of
everything it loaded and allocated (shared copy-on-write), its address-space layout, its heap. If
that state makes their timings differ by a constant, two runs (or the two sides of ``ab``) differ by
it in every round, which no number of rounds or random order within a round cancels.

This starts ``--servers`` driver processes, each with a forkserver of its own (an IsolatedRunner, as
the runner makes one), and asks them in a random order, round by round, to time the same work in a
fresh worker: the bare reference loop every worker records (harness/measure/reference.py), a bare
core-attention loop over a KV cache, and the same attention cold (eight layers over four caches
shared by pairs of layers, each call after the caches' lines were flushed as cold cells flush them).
Per metric it prints each forkserver's median over its workers, the spread between forkservers'
medians, the spread a forkserver's workers show among themselves, and a one-way analysis of variance
on the log medians (Kruskal-Wallis beside it): a small p says the forkservers differ by more than
their workers' own spread explains, i.e. a per-forkserver constant.

    python benchmarks/forkserver_effect.py                    # 6 forkservers x 20 workers, about 2 minutes
    python benchmarks/forkserver_effect.py --servers 4 --rounds 30 --json out.json

Run it on a quiet machine (check ``uptime`` first) and quote the load beside its figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("reference_s", "attention_s", "attention_cold_s")


def work(payload: dict[str, Any]) -> dict[str, Any]:
    """One worker: the reference loop, then a bare core-attention loop (median seconds per call)."""
    import time

    import torch

    from harness.measure.reference import reference_loop

    torch.set_num_threads(payload["threads"])
    out: dict[str, Any] = dict(reference_loop())
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, head_dim = 4, 8, 1, 2048, 64
    query = torch.randn(batch, heads, 1, head_dim, generator=generator)
    keys = torch.randn(batch, kv_heads, length, head_dim, generator=generator)
    values = torch.randn(batch, kv_heads, length, head_dim, generator=generator)

    def step() -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(query, keys, values, enable_gqa=True)

    warm_until = time.perf_counter() + payload["warmup_s"]
    while time.perf_counter() < warm_until:
        step()
    seconds = []
    for _ in range(payload["calls"]):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    out["attention_s"] = statistics.median(seconds)

    from harness.measure.flush import cpu_flusher

    layers, cached = 8, 4  # K/V shared by pairs of adjacent layers, as in a CLA2 stack
    caches = [
        (
            torch.randn(batch, heads, 512, head_dim, generator=generator),
            torch.randn(batch, heads, 512, head_dim, generator=generator),
        )
        for _ in range(cached)
    ]
    queries = torch.randn(batch, heads, 1, head_dim, generator=generator)
    flush, _ = cpu_flusher([t for kv in caches for t in kv])

    def cold_step() -> None:
        for layer in range(layers):
            k, v = caches[layer // (layers // cached)]
            torch.nn.functional.scaled_dot_product_attention(queries, k, v)

    cold_step()
    seconds = []
    for _ in range(payload["cold_calls"]):
        flush()
        start = time.perf_counter()
        cold_step()
        seconds.append(time.perf_counter() - start)
    out["attention_cold_s"] = statistics.median(seconds)
    return out


def driver() -> None:
    """A process with a forkserver of its own: one fresh worker per line read from stdin."""
    sys.path.insert(0, str(ROOT))
    from harness.run.worker import IsolatedRunner

    runner = IsolatedRunner()
    for line in sys.stdin:
        outcome = runner.call(work, json.loads(line))
        print(json.dumps({"status": outcome.status, "value": outcome.value, "error": outcome.error}), flush=True)


def spread(values: list[float]) -> float:
    """(p90 - p10) / median of ``values``, the figure the other noise benchmarks print."""
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=10, method="inclusive")
    return (q[-1] - q[0]) / statistics.median(ordered)


def analyse(medians: dict[int, list[float]]) -> dict[str, Any]:
    """Per-forkserver medians, the between- and within-forkserver spreads and the tests' p-values."""
    from scipy import stats

    logs = [[math.log(v) for v in values] for values in medians.values()]
    per_server = {server: statistics.median(values) for server, values in medians.items()}
    overall = statistics.median(per_server.values())
    within_sd = math.sqrt(statistics.fmean(statistics.variance(group) for group in logs))
    means = [statistics.fmean(group) for group in logs]
    n = statistics.fmean(len(group) for group in logs)
    # one-way random effects: the variance of the forkservers' means beyond what their workers' own
    # spread gives a mean of n of them
    between_sd = math.sqrt(max(0.0, statistics.variance(means) - within_sd**2 / n))
    return {
        "per_server_vs_overall": {s: v / overall - 1 for s, v in per_server.items()},
        "server_range": max(per_server.values()) / min(per_server.values()) - 1,
        "within_sd": within_sd,
        "between_sd": between_sd,
        "anova_p": float(stats.f_oneway(*logs).pvalue),
        "kruskal_p": float(stats.kruskal(*logs).pvalue),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=6, help="forkservers, each in a driver process of its own")
    parser.add_argument("--rounds", type=int, default=20, help="workers per forkserver, one per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each worker")
    parser.add_argument("--calls", type=int, default=60, help="timed attention calls per worker")
    parser.add_argument("--cold-calls", type=int, default=30, help="timed cold attention calls per worker")
    parser.add_argument("--warmup-s", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every worker's figures here")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver()
        return 0
    if args.servers < 2 or args.rounds < 3:
        parser.error("--servers must be at least 2 and --rounds at least 3")
    rng = random.Random(args.seed)
    payload = {"threads": args.threads, "calls": args.calls, "cold_calls": args.cold_calls, "warmup_s": args.warmup_s}
    drivers = [
        subprocess.Popen(
            [sys.executable, __file__, "--driver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
        )
        for _ in range(args.servers)
    ]
    figures: dict[str, dict[int, list[float]]] = {metric: {s: [] for s in range(args.servers)} for metric in METRICS}
    try:
        for round_index in range(args.rounds):
            order = list(range(args.servers))
            rng.shuffle(order)
            for server in order:
                process = drivers[server]
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(json.dumps(payload) + "\n")
                process.stdin.flush()
                answer = json.loads(process.stdout.readline())
                if answer["status"] != "ok":
                    print(f"forkserver {server}, round {round_index}: {answer['error']}", file=sys.stderr)
                    return 1
                for metric in METRICS:
                    figures[metric][server].append(answer["value"][metric])
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr, flush=True)
    finally:
        for process in drivers:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=60)
    load = os.getloadavg()[0]
    print(f"{args.servers} forkservers x {args.rounds} workers, {args.threads} torch thread(s), load {load:.2f}")
    for metric in METRICS:
        result = analyse(figures[metric])
        offsets = " ".join(f"{v:+.1%}" for v in result["per_server_vs_overall"].values())
        print(
            f"{metric}: forkservers' medians vs their median: {offsets}; range {result['server_range']:.1%}; "
            f"sd of log between forkservers {result['between_sd']:.3f}, within one {result['within_sd']:.3f}; "
            f"ANOVA p={result['anova_p']:.2g}, Kruskal-Wallis p={result['kruskal_p']:.2g}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
