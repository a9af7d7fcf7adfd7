"""``attnbench history [RESULTS...] [--target T] [--out DIR]``: every result over commits, per target."""

from __future__ import annotations

import argparse
from typing import Any

from harness.history import build_histories

DEFAULT_RESULTS = "results"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "history",
        help="a static HTML page (and PNG figures) per target: every result over commits, with steps",
        description=(
            "Read every result file under RESULTS (default results/) and write, per hardware target, "
            "<out>/<target>/history.html: per scenario and cell its decode latency, bandwidth fraction, peak "
            "memory and measured max batch over commits in git's order, with intervals, unstable points marked "
            "and steps (a change of level that persisted) detected; and history-<scenario>.png for a report. "
            "The page is self-contained: it fetches nothing when viewed. Exit 2 on a bad result file."
        ),
    )
    parser.add_argument(
        "results", nargs="*", metavar="RESULTS", help=f"result files or folders (default {DEFAULT_RESULTS}/)"
    )
    parser.add_argument("--target", default=None, help="only this target (default: every target found)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder to write <target>/history.html into (default: the one RESULTS folder given, else results/)",
    )
    parser.add_argument("--no-figures", action="store_true", help="write the HTML pages only, no PNG figures")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = args.results or [DEFAULT_RESULTS]
    out = args.out
    if out is None:
        out = results[0] if len(results) == 1 else DEFAULT_RESULTS
    for path in build_histories(results, out, target=args.target, figures=not args.no_figures):
        print(f"wrote {path}")
    return 0
