"""``attnbench report [RESULTS...] [--out DIR]``: REPORT.md with plots per target, CROSS_TARGET.md across targets."""

from __future__ import annotations

import argparse

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
        default=DEFAULT_RESULTS,
        metavar="DIR",
        help=f"folder to write <target>/REPORT.md into (default {DEFAULT_RESULTS}/, beside the results)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = build_reports(args.results or [DEFAULT_RESULTS], args.out)
    for path in written:
        print(f"wrote {path}")
    return 0
