"""``attnbench doctor [--device D]``: check on this machine's device every behaviour no CPU test can show.

Prints a table of checks (pass / fail / skip, with the numbers behind each) and exits 1 if any failed.
With ``--stream FILE`` each check's start and each finding go to FILE the moment they happen (one
tab-separated line each, flushed), so that a doctor stopped half-way leaves what it had found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from tabulate import tabulate

from harness.doctor import Finding, run_doctor
from harness.errors import UserError
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
    parser.add_argument(
        "--stream",
        type=Path,
        metavar="FILE",
        help="write each check's start and each finding to FILE as they happen (one line each, flushed)",
    )
    parser.set_defaults(func=run)


def finding_line(finding: Finding) -> str:
    """``<status>\\t<check>\\t<detail>``: one line, whatever the detail holds."""
    return f"{finding.status}\t{finding.name}\t{' '.join(finding.detail.split())}"


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    quiet = args.json or not sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        stream: TextIO | None = None
        if args.stream is not None:
            try:
                stream = stack.enter_context(args.stream.open("w", encoding="utf-8"))
            except OSError as exc:
                raise UserError(f"cannot write the stream: {exc.strerror or exc}", source=str(args.stream)) from None

        def progress(name: str) -> None:
            if stream is not None:
                print(f"start\t{name}", file=stream, flush=True)
            if not quiet:
                print(f"  {name} ...", file=sys.stderr)

        def on_finding(finding: Finding) -> None:
            if stream is not None:
                print(finding_line(finding), file=stream, flush=True)

        findings = run_doctor(device, progress=progress, on_finding=on_finding)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
    else:
        rows = [(f.name, MARKS[f.status], f.detail) for f in findings]
        print(tabulate(rows, headers=("check", "result", "detail"), tablefmt="github", disable_numparse=True))
        failed, skipped = (sum(f.status == status for f in findings) for status in ("fail", "skip"))
        print(f"\n{len(findings)} checks on {device}: {failed} failed, {skipped} skipped")
    return 1 if any(f.status == "fail" for f in findings) else 0
