"""``attnbench run [FILE]``: measure every cell of a scenario and write one result file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from harness.cli.notes import print_warnings
from harness.results.schema import CellResult
from harness.runner import Runner, RunOptions, RunOutcome, RunProgress
from harness.scenario import Cell


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="measure a scenario on this machine", description=__doc__)
    parser.add_argument("file", nargs="?", default=RunOptions.scenario, help="scenario file (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=RunOptions.out_dir, help="results folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short timing windows, for smoke runs and CI")
    parser.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this scenario")
    parser.add_argument("--quiet", action="store_true", help="no progress display; only the result path")
    parser.set_defaults(func=run)


class _Bar:
    """A tqdm bar over cells: done / total, the cell being measured, and time left."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def start(self, total: int, done: int) -> None:
        if not self.quiet:
            self.bar = tqdm(total=total, initial=done, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def cell_started(self, cell: Cell) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(cell.label)

    def cell_finished(self, cell: Cell, result: CellResult) -> None:
        if self.bar is not None:
            if result.status != "ok":
                self.bar.write(f"{cell.label}: {result.status}: {result.error}", file=sys.stderr)
            self.bar.update()

    def rounds_skipped(self, cell: Cell, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    options = RunOptions(scenario=args.file, device=args.device, out_dir=args.out, quick=args.quick, resume=args.resume)
    bar = _Bar(args.quiet)
    runner = Runner(options, RunProgress(bar.start, bar.cell_started, bar.cell_finished, bar.rounds_skipped))
    print_warnings("run", runner.loaded.warnings)
    try:
        outcome: RunOutcome = runner.run()
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: finished cells are saved; continue with --resume", file=sys.stderr)
        raise
    finally:
        bar.close()
    result = outcome.result
    statuses = ("ok", "oom", "error", "unsupported")
    counts = {status: sum(1 for c in result.cells if c.status == status) for status in statuses}
    skipped = f", {counts['unsupported']} unsupported" if counts["unsupported"] else ""
    print(
        f"{outcome.path}  ({counts['ok']} ok, {counts['oom']} oom, {counts['error']} error{skipped}; "
        f"target {result.target})"
    )
    above_peak = [
        c
        for c in result.cells
        if c.metrics is not None
        and max(c.metrics.bandwidth_fraction or 0.0, c.metrics.attention_bandwidth_fraction or 0.0) > 1.0
    ]
    if above_peak:
        # Traffic is counted as the least a step must move, so beating the probe means the probe or
        # the timing is wrong (a peak measured while the machine was busy, or data left in cache).
        print(
            f"warning: {len(above_peak)} cell(s) report more than the measured peak bandwidth "
            f"({result.peak_bandwidth_gbps:.1f} GB/s); distrust this run's fractions",
            file=sys.stderr,
        )
    for failed in outcome.failed_cells:
        print(
            f"error in {failed.variant} b{failed.batch_size} ctx{failed.context_len}: {failed.error}", file=sys.stderr
        )
    return outcome.exit_code
