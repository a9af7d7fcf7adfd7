"""``attnbench export --format pytest-benchmark RESULT -o FILE``: a result file in another tool's format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness import export
from harness.results.store import load_result


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a result file in another tool's format (pytest-benchmark)",
        description=(
            "Write one result file as a pytest-benchmark saved run: one benchmark per ok cell, with stats "
            "computed from its raw latency samples, so that 'pytest-benchmark compare' can read it."
        ),
    )
    parser.add_argument("result", metavar="RESULT", help="a result file")
    parser.add_argument("--format", "-f", choices=export.FORMATS, default=export.FORMATS[0], help="default %(default)s")
    parser.add_argument("--output", "-o", metavar="FILE", required=True, help="where to write the export")
    parser.add_argument(
        "--metric",
        choices=tuple(export.EXPORT_METRICS),
        default="decode_latency_s",
        help="which latency's samples become the benchmark stats (default %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = load_result(args.result)
    count = export.export_result(result, Path(args.output), args.format, args.metric, source=args.result)
    print(f"wrote {count} benchmark{'' if count == 1 else 's'} to {args.output}")
    return 0
