"""``attnbench explore [SCENARIO] [--budget B] [--objective O] [--target T] [--measure FILE.toml]``: rank a design
space by the target's cost model, print the frontier, and optionally measure only the frontier.

The space is the scenario's variants, batch sizes, contexts, dtypes and backends, with every MHA/GQA/MQA
layout at its head dims and CLA sharing 1-4 (unless ``--no-generate``), and ``--batch-sizes`` and
``--contexts`` in place of the sweep's. Nothing is measured unless ``--measure FILE.toml`` names a new
scenario file: the frontier's variants and sweep are written there, and only the frontier's cells are
measured, as ``attnbench run`` would, into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.cli import predict_view
from harness.cli.notes import print_warnings
from harness.errors import UserError
from harness.predict.explore import OBJECTIVES, Candidate, design_space, frontier, rank
from harness.predict.frontier_scenario import frontier_scenario_toml
from harness.results.store import check_file_writable, write_text_atomic
from harness.scenario import LoadedScenario, load_scenario
from harness.signals import Interrupted
from harness.units import format_bytes, parse_bytes

DEFAULT_SCENARIO = "scenarios/default.toml"


def _sizes(flag: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: expected comma-separated whole numbers, got {text!r}") from None
        if not values or min(values) < 1 or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{flag}: expected distinct positive numbers, got {text!r}")
        return values

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explore", help="rank a design space by the cost model; measure the frontier", description=__doc__
    )
    parser.add_argument("file", nargs="?", default=DEFAULT_SCENARIO, help=f"scenario file (default {DEFAULT_SCENARIO})")
    parser.add_argument("--budget", help="memory budget, e.g. 40GiB (default: the scenario's measure.memory_budget)")
    parser.add_argument("--objective", choices=sorted(OBJECTIVES), default="throughput", help="what to rank by")
    parser.add_argument("--target", help="target id whose cost model predicts (default: this machine's CPU target)")
    parser.add_argument("--results", default="results", help="folder holding <target>/calibration.json")
    parser.add_argument("--no-generate", action="store_true", help="only the scenario's own variants")
    parser.add_argument("--batch-sizes", type=_sizes("--batch-sizes"), help="e.g. 1,4,16 (default: the sweep's)")
    parser.add_argument("--contexts", type=_sizes("--contexts"), help="e.g. 512,2048 (default: the sweep's)")
    parser.add_argument("--top", type=int, default=10, help="best configurations to list (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON: counts, seconds, frontier and top")
    parser.add_argument(
        "--measure", type=Path, metavar="FILE.toml", help="write the frontier scenario here and measure it"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="results folder for --measure (default results)"
    )
    parser.add_argument("--device", default="auto", help="device for --measure (default auto)")
    parser.set_defaults(func=run)


def _budget(args: argparse.Namespace, scenario_budget: int | None) -> int:
    if args.budget is None:
        if scenario_budget is None:
            raise UserError("no memory budget: give --budget or set measure.memory_budget", source=args.file)
        return scenario_budget
    try:
        return parse_bytes(args.budget)
    except ValueError as exc:
        raise UserError(str(exc), source="--budget") from None


def _row(c: Candidate) -> dict[str, Any]:
    return {
        "variant": c.cell.variant.name,
        "batch_size": c.cell.batch_size,
        "context_len": c.cell.context_len,
        "dtype": c.cell.dtype,
        "backend": c.cell.backend,
        "kv_bytes_per_token": c.kv_bytes_per_token,
        "decode_latency_s": c.decode_latency_s,
        "tokens_per_s": c.tokens_per_s,
        "peak_memory_bytes": c.peak_memory_bytes,
        "max_batch": c.max_batch,
        "bound": c.bound,
    }


def _table(candidates: list[Candidate]) -> str:
    rows = [
        [
            c.cell.variant.name, c.cell.batch_size, c.cell.context_len, c.cell.dtype, c.cell.backend,
            f"{c.kv_bytes_per_token:,}", f"{c.decode_latency_s * 1e3:.3f}", f"{c.tokens_per_s:,.1f}",
            format_bytes(c.peak_memory_bytes), c.max_batch, c.bound,
        ]
        for c in candidates
    ]  # fmt: skip
    headers = [
        "variant",
        "batch",
        "context",
        "dtype",
        "backend",
        "KV B/token",
        "decode ms",
        "tokens/s",
        "peak",
        "max batch",
        "bound",
    ]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise UserError(f"must be 0 or more, got {args.top}", source="--top")
    loaded = load_scenario(args.file)
    print_warnings("explore", loaded.warnings)
    budget = _budget(args, loaded.scenario.measure.memory_budget)
    model = predict_view.resolve_model(args.target, args.results)
    if args.measure is not None:
        if args.measure.exists():
            raise UserError("exists already; name a new scenario file", source=str(args.measure))
        check_file_writable(args.measure)
    started = time.perf_counter()
    cells = design_space(loaded, generate=not args.no_generate, batch_sizes=args.batch_sizes, contexts=args.contexts)
    ranked = rank(loaded, cells, model, budget, args.objective)
    front = frontier(ranked, args.objective)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "prediction_source": predict_view.source_line(model),
                    "objective": args.objective,
                    "budget_bytes": budget,
                    "configurations": len(cells),
                    "within_budget": len(ranked),
                    "seconds": seconds,
                    "frontier": [_row(c) for c in front],
                    "top": [_row(c) for c in ranked[: args.top]],
                },
                indent=1,
            )
        )
    else:
        print(predict_view.source_line(model))
        print(
            f"{len(cells):,} configurations ranked in {seconds:.2f} s; {len(ranked):,} fit {format_bytes(budget)}; "
            f"objective {args.objective}: {OBJECTIVES[args.objective]}"
        )
        print()
        print("Frontier per context (no other keeps as much KV per token and does better):")
        print(_table(front))
        if args.top:
            print()
            print(f"Best {min(args.top, len(ranked))} overall:")
            print(_table(ranked[: args.top]))
    if args.measure is not None and front:
        return _measure_frontier(args, loaded, front, budget)
    return 0


def _measure_frontier(args: argparse.Namespace, loaded: LoadedScenario, front: list[Candidate], budget: int) -> int:
    """Write the frontier's scenario and measure only its cells with the runner, as attnbench run does."""
    from harness.run.runner import Runner, RunOptions

    write_text_atomic(args.measure, frontier_scenario_toml(loaded, front, budget))
    print(f"\nwrote {args.measure}; measuring its {len(front)} frontier cells")
    runner = Runner(RunOptions(scenario=str(args.measure), device=args.device, out_dir=args.out))
    keys = {c.cell.key for c in front}
    try:
        cells = runner.begin()
        runner.sweep([cell for cell in cells if cell.key in keys])
        outcome = runner.finish()
    except Interrupted as stop:
        runner.record_interruption(stop)
        raise
    finally:
        runner.close()
    result = outcome.result
    measured = [c for c in result.cells if c.prediction is not None and c.prediction.decode_error_fraction is not None]
    errors = ", ".join(
        f"{c.variant} b{c.batch_size} ctx{c.context_len} {c.prediction.decode_error_fraction:+.0%}"
        for c in measured
        if c.prediction is not None and c.prediction.decode_error_fraction is not None
    )
    print(f"{outcome.path}  ({sum(c.status == 'ok' for c in result.cells)} of {len(result.cells)} cells ok)")
    if errors:
        print(f"decode latency, predicted against measured: {errors}")
    for failed in outcome.failed_cells:
        print(
            f"error in {failed.variant} b{failed.batch_size} ctx{failed.context_len}: {failed.error}", file=sys.stderr
        )
    return outcome.exit_code
