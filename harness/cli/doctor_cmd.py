"""``attnbench doctor [--device D]``: check on this machine's device every behaviour no CPU test can show.

Prints a table of checks (pass / fail / skip, with the numbers behind each) and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tabulate import tabulate

from harness.doctor import run_doctor
from harness.hardware import resolve_device

MARKS = {"pass": "✅ pass", "fail": "❌ FAIL", "skip": "➖ skip"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check the measuring code's device behaviour on this machine",
        description=(
            "Run, each in its own worker, every check of the measuring code that needs the real device: "
            "workers and out-of-memory, graph capture per backend against eager, event timing, the cache "
            "flush, SDPA kernels, auto's choice, the peak probe against the vendor figure, the max-batch "
            "search, NVML, and one whole cell. On a CPU, the subset that applies. Exit 1 if a check fails."
        ),
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    quiet = args.json or not sys.stderr.isatty()
    findings = run_doctor(device, progress=lambda name: None if quiet else print(f"  {name} ...", file=sys.stderr))
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
    else:
        rows = [(f.name, MARKS[f.status], f.detail) for f in findings]
        print(tabulate(rows, headers=("check", "result", "detail"), tablefmt="github", disable_numparse=True))
        failed, skipped = (sum(f.status == status for f in findings) for status in ("fail", "skip"))
        print(f"\n{len(findings)} checks on {device}: {failed} failed, {skipped} skipped")
    return 1 if any(f.status == "fail" for f in findings) else 0
