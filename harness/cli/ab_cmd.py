"""``attnbench ab BASE HEAD [SCENARIO]``: did HEAD change anything against BASE? Measured interleaved.

Both revisions are checked out side by side and every cell is measured round by round at each, back
to back in a random order; the verdicts rest on the per-round ratios HEAD/BASE. Exit codes as
``compare``: 0 no regression, 1 regression, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import compare
from harness.ab import interleave
from harness.cli.compare_cmd import add_output_options, parse_alpha, render
from harness.cli.run_cmd import default_scenario
from harness.errors import UserError
from harness.hardware import resolve_device
from harness.results.store import check_file_writable, check_writable, write_text_atomic
from harness.signals import Interrupted
from harness.stats.paired import rounds_needed

DEFAULT_OUT = "results-ab"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "ab",
        help="measure two revisions interleaved and compare them; exit 1 on a regression",
        description=(
            "Check out BASE and HEAD (git revisions; '.' is the working tree with its uncommitted changes) "
            "side by side and measure every cell of SCENARIO at each, round by round, back to back in a random "
            "order, each in a fresh worker running that revision's code. A latency change counts when the "
            "per-round ratios HEAD/BASE are beyond its threshold (their Hodges-Lehmann estimate) and their "
            "Wilcoxon signed-rank interval excludes 1, at a confidence that holds for all the comparison's "
            "latencies together (2% family-wise); a cell stops early once none of its latencies is likely to "
            "show a change. Writes both result files under OUT/base and "
            "OUT/head and prints the comparison. Exit codes: 0 no regression, 1 regression, 2 bad input."
        ),
    )
    parser.add_argument("base", metavar="BASE", help="a git revision (branch, tag, commit) or '.' for the working tree")
    parser.add_argument("head", metavar="HEAD", help="a git revision or '.' for the working tree")
    parser.add_argument(
        "scenario", metavar="SCENARIO", nargs="?", default=None, help="scenario file (default: as attnbench run)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="the most rounds per cell and revision (default: the fewest whose interval reaches the "
        "family-wise confidence with 2 round ratios on the wrong side of 1, however far: 29 for 80 latencies)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="results folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short timing windows")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random order of sides (default: fresh)")
    parser.add_argument(
        "--fail-on",
        metavar="SPEC",
        action="append",
        default=[],
        help="threshold METRIC:VALUE as for compare; defaults here: "
        + " ".join(compare.PAIRED_FAIL_ON).replace("%", "%%"),
    )
    parser.add_argument(
        "--alpha", default=str(compare.DEFAULT_ALPHA), help="Mann-Whitney U level (default %(default)s)"
    )
    add_output_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    thresholds = compare.parse_thresholds(args.fail_on, defaults=compare.PAIRED_FAIL_ON)
    alpha = parse_alpha(args.alpha)
    if args.rounds is not None and args.rounds < 2:
        raise UserError(f"needs at least 2 rounds to pair, got {args.rounds}", source="--rounds")
    device = resolve_device(args.device)
    # Every path is the caller's: each revision's runner works in a tree of its own (removed at the end),
    # where a relative path would name another place. Resolved here, and checked before anything runs.
    scenario = str(Path(args.scenario or default_scenario(device)).absolute())
    out_dir: Path = args.out.absolute()
    output = Path(args.output).absolute() if args.output else None
    check_output(out_dir, output)
    started = time.perf_counter()

    def progress(done: int, total: int, label: str) -> None:
        if not args.quiet:
            print(f"\r[{done}/{total}] {label}"[:120].ljust(120), end="", file=sys.stderr, flush=True)

    try:
        measured = interleave(
            args.base, args.head, scenario, device=device, out_dir=out_dir, rounds=args.rounds, quick=args.quick,
            seed=args.seed, progress=progress,
        )  # fmt: skip
    except Interrupted as stop:
        # each side's runner recorded the stop in its file; the temporary worktrees are gone
        if not args.quiet:
            print(file=sys.stderr)  # end the progress line
        print(f"attnbench ab: {stop}: the unfinished result files are under {out_dir}", file=sys.stderr)
        return stop.exit_code
    if not args.quiet:
        print(f"\rmeasured in {time.perf_counter() - started:.0f} s".ljust(120), file=sys.stderr)
    plan = measured.plan
    stopped = sum(n < plan.rounds for n in measured.rounds_done.values())
    print(
        f"rounds: at most {plan.rounds} per cell for {plan.comparisons} latencies at {compare.percent(plan.confidence)}"
        f" each; {stopped} of {len(measured.rounds_done)} cells stopped early, a change unlikely to show",
        file=sys.stderr,
    )
    if plan.rounds < rounds_needed(plan.confidence):
        print(
            f"note: {plan.rounds} rounds cannot reach {compare.percent(plan.confidence)}: no latency can count as "
            f"a change (give --rounds {rounds_needed(plan.confidence)} or more)",
            file=sys.stderr,
        )
    base, head = compare.load_sides(str(measured.base_path), str(measured.head_path))
    comparison = compare.compare_sides(base, head, thresholds, alpha)
    text = render(comparison, args)
    print(text, end="")
    print(f"base: {measured.base_path}\nhead: {measured.head_path}", file=sys.stderr)
    for label in measured.only_one_side:
        print(f"note: {label} exists at one revision only and was not measured", file=sys.stderr)
    if output is not None:
        write_text_atomic(output, text)
    return comparison.exit_code


def check_output(out_dir: Path, output: Path | None) -> None:
    """UserError unless both sides' result folders and ``--output`` can be written: before minutes of
    measuring, not after them (the folders are made if missing, as ``attnbench run`` makes its own)."""
    for role in ("base", "head"):
        check_writable(out_dir / role, 0)
    if output is not None:
        check_file_writable(output)
