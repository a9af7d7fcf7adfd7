"""``attnbench report [RESULTS...] [--out DIR]``: REPORT.md with plots per target, CROSS_TARGET.md across targets."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.report import build_reports

DEFAULT_RESULTS = "results"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write REPORT.md and plots per hardware target", description=__doc__)
    parser.add_argument(
        "results",
        nargs="*",
        metavar="RESULTS",
        help=f"result files or folders; a folder gives its newest result per target and scenario "
        f"(default {DEFAULT_RESULTS}/)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"folder to write <target>/REPORT.md into (default: beside the results, i.e. the RESULTS "
        f"folder when one folder is given, else {DEFAULT_RESULTS}/)",
    )
    parser.set_defaults(func=run)


def default_out(results: list[str]) -> str:
    """Where reports go without --out: into the one results folder given, so that reporting a run
    written elsewhere (``attnbench run --out DIR``) never replaces the reports under results/."""
    if len(results) == 1 and Path(results[0]).is_dir():
        return results[0]
    return DEFAULT_RESULTS


def run(args: argparse.Namespace) -> int:
    results = args.results or [DEFAULT_RESULTS]
    written = build_reports(results, args.out if args.out is not None else default_out(results))
    for path in written:
        print(f"wrote {path}")
    return 0
