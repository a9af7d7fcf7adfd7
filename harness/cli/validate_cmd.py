"""``attnbench validate FILE...``: check scenario files (TOML), result files and cost-model calibrations
(JSON), every problem of every file, one line each; exit 2 when any file has a problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import print_problems
from harness.cli.notes import print_warnings
from harness.errors import UserError, one_line
from harness.predict.calibration import CALIBRATION_NAME, load_calibration
from harness.results.store import RESULT_SUFFIX, load_result
from harness.scenario import expand_cells, load_scenario


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check scenario and result files", description=__doc__)
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=f"scenario TOML files, result files (ending in {RESULT_SUFFIX}) as written by 'attnbench run', or a "
        f"target's {CALIBRATION_NAME} as written by 'attnbench calibrate'",
    )
    parser.set_defaults(func=run)


def check(path: str) -> str:
    """What ``path`` holds, in a few words; UserError listing its problems when it is not valid."""
    if Path(path).name == CALIBRATION_NAME:
        calibration = load_calibration(Path(path))
        return (
            f"ok (cost model of {calibration.target}, {len(calibration.latency)} latency fits from "
            f"{len(calibration.files)} result files, fitted at commit {calibration.git.short})"
        )
    if Path(path).suffix.lower() == RESULT_SUFFIX:
        result = load_result(path)
        stops = result.interruptions
        if result.finished_utc is None:
            unfinished = f", unfinished: interrupted by {stops[-1].signal}" if stops else ", unfinished"
        else:
            unfinished = f", finished after {len(stops)} interruption(s)" if stops else ""
        return (
            f"ok (result of scenario {result.scenario.name!r} on {result.target}, "
            f"{len(result.cells)} cells{unfinished})"
        )
    loaded = load_scenario(path)
    print_warnings("validate", loaded.warnings)
    cells = expand_cells(loaded.scenario, loaded.variants)
    return f"ok ({len(loaded.variants)} variants, {len(cells)} cells)"


def run(args: argparse.Namespace) -> int:
    code = 0
    for path in args.files:
        try:
            print(one_line(f"{path}: {check(path)}"))
        except UserError as exc:
            print_problems(args.command, exc)
            code = exc.exit_code
    return code
