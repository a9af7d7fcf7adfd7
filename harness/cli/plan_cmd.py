"""``attnbench plan FILE [--json] [--predict [--target T] [--results DIR]]``: the accounting of every variant and
cell, without measuring; with ``--predict``, each cell's latency, bandwidth, memory and max batch as the target's
cost model predicts them (its calibration.json, else vendor figures, marked as such)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tabulate import tabulate

from harness.cli import predict_view
from harness.cli.notes import print_warnings
from harness.plan import plan
from harness.scenario import load_scenario
from harness.units import format_bytes

DEFAULT_SCENARIO = "scenarios/default.toml"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="show the accounting of a scenario", description=__doc__)
    parser.add_argument("file", nargs="?", default=DEFAULT_SCENARIO, help=f"scenario file (default {DEFAULT_SCENARIO})")
    parser.add_argument("--json", action="store_true", help="print JSON with 'variants' and 'cells' lists")
    parser.add_argument("--predict", action="store_true", help="predict every cell with the target's cost model")
    parser.add_argument("--target", help="target id to predict for (default: this machine's CPU target)")
    parser.add_argument("--results", default="results", help="folder holding <target>/calibration.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_scenario(args.file)
    print_warnings("plan", loaded.warnings)
    data = plan(loaded)
    if args.predict:
        return predict_view.run_predict(loaded, data, args)
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
    print("KV cache per sequence at the scenario's contexts (windowed layers hold at most their window):")
    print(tabulate(kv_rows(data), headers=kv_headers(data), tablefmt="simple", disable_numparse=True))
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
    if any(v["tp"] for v in data["variants"]):
        print()
        print("Tensor parallelism (sweep.tp): K/V heads and cache bytes per token on one rank, replication over ranks:")
        print(tabulate(tp_rows(data), headers=tp_headers(data), tablefmt="simple", disable_numparse=True))
    unsupported = {(c["variant"], c["backend"]): c["unsupported"] for c in data["cells"] if c["unsupported"]}
    for (variant, backend), reason in unsupported.items():
        print(f"{variant} with backend {backend}: not run ({reason})")
    return 0


def _windows(layer_windows: list[int | None]) -> str:
    sizes = sorted({w for w in layer_windows if w is not None})
    if not sizes:
        return "global"
    local = sum(1 for w in layer_windows if w is not None)
    return f"{'/'.join(str(w) for w in sizes)} on {local}/{len(layer_windows)} layers"


def kv_headers(data: dict[str, Any]) -> list[str]:
    contexts = [entry["context_len"] for entry in data["variants"][0]["kv_at_context"]]
    return ["variant", "attention", "windows", "KV dtype", "KV B/token", *(f"ctx {c}" for c in contexts)]


def kv_rows(data: dict[str, Any]) -> list[list[str]]:
    """Per variant: what it caches, and per context the bytes per sequence and per cached token."""
    rows = []
    for v in data["variants"]:
        kind = v["attention"] + (f" d_c {v['mla']['kv_lora_rank']}+{v['mla']['qk_rope_head_dim']}" if v["mla"] else "")
        kv_dtype = v["kv_dtype"] + f" ({v['kv_scale']} scale)" if v["kv_dtype"] else data["model"]["dtype"]
        at_context = [
            f"{format_bytes(entry['kv_bytes_per_sequence'])} ({entry['kv_bytes_per_token']:,.0f} B/token)"
            for entry in v["kv_at_context"]
        ]
        rows.append(
            [v["name"], kind, _windows(v["layer_windows"]), kv_dtype, f"{v['kv_bytes_per_token']:,}", *at_context]
        )
    return rows


def tp_headers(data: dict[str, Any]) -> list[str]:
    return ["variant", *(f"tp {entry['tp']}" for entry in data["variants"][0]["tp"])]


def tp_rows(data: dict[str, Any]) -> list[list[str]]:
    """Per variant and degree: ``2 heads, 4,096 B/token (1.0x)``, or why it does not split."""
    rows = []
    for v in data["variants"]:
        cells = [
            f"not split: {entry['problem']}"
            if entry["problem"]
            else f"{entry['kv_heads_per_rank']} K/V head{'s' if entry['kv_heads_per_rank'] != 1 else ''}, "
            f"{entry['kv_bytes_per_token_per_rank']:,} B/token "
            f"({entry['kv_replication']:.1f}x)"
            for entry in v["tp"]
        ]
        rows.append([v["name"], *cells])
    return rows
