"""``attnbench plan FILE [--json]``: the accounting of every variant and cell, without measuring."""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from harness.plan import plan
from harness.scenario import load_scenario
from harness.units import format_bytes

DEFAULT_SCENARIO = "scenarios/default.toml"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="show the accounting of a scenario", description=__doc__)
    parser.add_argument("file", nargs="?", default=DEFAULT_SCENARIO, help=f"scenario file (default {DEFAULT_SCENARIO})")
    parser.add_argument("--json", action="store_true", help="print JSON with 'variants' and 'cells' lists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = plan(load_scenario(args.file))
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    m = data["model"]
    print(
        f"scenario {data['scenario']}: d_model {m['d_model']}, {m['n_layers']} layers, d_ff {m['d_ff']}, "
        f"vocab {m['vocab_size']}, {m['dtype']}"
    )
    variant_rows = [
        [
            v["name"],
            v["spelling"],
            v["n_heads"],
            v["n_kv_heads"],
            v["head_dim"],
            v["n_kv_layers"],
            v["kv_bytes_per_token"],
            f"{v['params_total'] / 1e6:.2f}M",
        ]
        for v in data["variants"]
    ]
    print(
        tabulate(
            variant_rows,
            headers=["variant", "spelling", "heads", "kv heads", "head dim", "kv layers", "KV B/token", "params"],
            tablefmt="simple",
        )
    )
    print()
    budget = data["memory_budget_bytes"]
    cell_rows = [
        [
            c["variant"],
            c["batch_size"],
            c["context_len"],
            c["dtype"],
            c["backend"],
            format_bytes(c["kv_cache_bytes"]),
            format_bytes(c["bytes_per_step"]),
            f"{c['flops_per_step'] / 1e9:.2f}",
            "-" if c["predicted_max_batch"] is None else c["predicted_max_batch"],
        ]
        for c in data["cells"]
    ]
    budget_note = f" (budget {format_bytes(budget)})" if budget else ""
    print(
        tabulate(
            cell_rows,
            headers=[
                "variant",
                "batch",
                "context",
                "dtype",
                "backend",
                "KV cache",
                "bytes/step",
                "GFLOP/step",
                f"max batch{budget_note}",
            ],
            tablefmt="simple",
        )
    )
    return 0
