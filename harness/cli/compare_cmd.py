"""``attnbench compare BASE HEAD``: did HEAD regress against BASE? Exit 1 on a regression, 2 on bad input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from harness import compare
from harness.compare.github import render_github
from harness.compare.verdicts import render_json
from harness.errors import UserError
from harness.results.store import write_text_atomic

_SIDE_HELP = "a result file, a results folder (newest result per scenario) or a git revision"
FORMATS = ("markdown", "json", "github")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare two sets of results; exit 1 on a regression",
        description=(
            "Compare HEAD against BASE cell by cell. A latency change counts only when Mann-Whitney U on the "
            "raw samples is significant, the median moved more than its threshold, and (for results measured "
            "in several rounds) more than the run-to-run noise; memory, KV-cache bytes, "
            "measured max batch and bandwidth are gated on their threshold. A git revision side reads the "
            "results committed under results/<target>/ for the other side's target. "
            "Exit codes: 0 no regression, 1 regression, 2 bad input."
        ),
    )
    parser.add_argument("base", metavar="BASE", help=_SIDE_HELP)
    parser.add_argument("head", metavar="HEAD", help=_SIDE_HELP)
    parser.add_argument(
        "--fail-on",
        metavar="SPEC",
        action="append",
        default=[],
        help=(
            "threshold METRIC:VALUE, VALUE a percentage of BASE or an absolute amount; repeatable. "
            f"Defaults: {' '.join(compare.DEFAULT_FAIL_ON).replace('%', '%%')}. 'median' sets every latency metric"
        ),
    )
    parser.add_argument(
        "--alpha",
        default=str(compare.DEFAULT_ALPHA),
        help="significance level of the Mann-Whitney U test for latencies (default %(default)s)",
    )
    parser.add_argument(
        "--allow-cross-target", action="store_true", help="compare results from different hardware targets"
    )
    parser.add_argument(
        "--target", help="when both sides are revisions: the target to compare (default: the one committed at both)"
    )
    add_output_options(parser)
    parser.set_defaults(func=run)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--format``, ``--json``, ``--only-changed`` and ``--output``: shared by compare and ab."""
    parser.add_argument("--only-changed", action="store_true", help="list only regressions and improvements")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="markdown",
        help="markdown (the verdict on its first line), json (per cell and metric: ratio, interval, verdict, "
        "reason; docs/verdicts.md) or github (a pull-request comment body); default %(default)s",
    )
    parser.add_argument("--json", action="store_const", const="json", dest="format", help="same as --format json")
    parser.add_argument("--output", "-o", metavar="FILE", help="also write what is printed to FILE")


def render(comparison: compare.Comparison, args: argparse.Namespace) -> str:
    """The comparison in the format asked for."""
    if args.format == "json":
        return render_json(comparison)
    if args.format == "github":
        return render_github(comparison)
    return compare.render_markdown(comparison, only_changed=args.only_changed)


def parse_alpha(text: str) -> float:
    try:
        alpha = float(text)
    except ValueError:
        raise UserError(f"{text!r} is not a number", source="--alpha") from None
    if not 0 < alpha < 1:
        raise UserError(f"must lie between 0 and 1, got {text}", source="--alpha")
    return alpha


def run(args: argparse.Namespace) -> int:
    thresholds = compare.parse_thresholds(args.fail_on)
    alpha = parse_alpha(args.alpha)
    base, head = compare.load_sides(args.base, args.head, target=args.target)
    comparison = compare.compare_sides(base, head, thresholds, alpha, allow_cross_target=args.allow_cross_target)
    text = render(comparison, args)
    print(text, end="")
    if args.output:
        write_text_atomic(Path(args.output), text)
    return comparison.exit_code
