"""``attnbench run [FILE]``: measure every cell of a scenario and write one result file."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from harness.cli.notes import print_warnings
from harness.errors import UserError
from harness.hardware import is_cuda, resolve_device
from harness.results.schema import CellResult
from harness.runner import Runner, RunOptions, RunOutcome, RunProgress
from harness.scenario import Cell
from harness.signals import Interrupted

# What `attnbench run` measures without a file on a GPU: the CPU default's small stack would time
# kernel launches there, not KV-cache traffic.
GPU_DEFAULT_SCENARIO = "scenarios/gpu-default.toml"


def default_scenario(device: str) -> str:
    """The scenario a run without a file measures on ``device`` (already resolved)."""
    if is_cuda(device) and Path(GPU_DEFAULT_SCENARIO).is_file():
        return GPU_DEFAULT_SCENARIO
    return RunOptions.scenario


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="measure a scenario on this machine", description=__doc__)
    parser.add_argument(
        "file",
        nargs="?",
        default=None,
        help=f"scenario file (default {GPU_DEFAULT_SCENARIO} on a CUDA device, else {RunOptions.scenario})",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=RunOptions.out_dir, help="results folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short timing windows, for smoke runs and CI")
    parser.add_argument("--resume", action="store_true", help="continue the newest unfinished run of this scenario")
    parser.add_argument(
        "--rerun-unstable",
        action="store_true",
        help="with --resume: measure again, into the newest run of this scenario, the cells it found unstable",
    )
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


def _first(cell: CellResult, name: str) -> str:
    """The detail of ``cell``'s first failed check called ``name``."""
    return next(check.detail for check in cell.checks if check.name == name and not check.passed)


def resume_command(args: argparse.Namespace, scenario: str) -> str:
    """The command that continues this run where it stopped."""
    words = ["attnbench", "run", scenario, "--resume"]
    if args.device != "auto":
        words += ["--device", args.device]
    if args.out != RunOptions.out_dir:
        words += ["--out", str(args.out)]
    if args.quick:
        words.append("--quick")
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    scenario = args.file if args.file is not None else default_scenario(resolve_device(args.device))
    if args.rerun_unstable and not args.resume:
        raise UserError("re-measures cells of an existing run; give --resume too", field="--rerun-unstable")
    options = RunOptions(
        scenario=scenario,
        device=args.device,
        out_dir=args.out,
        quick=args.quick,
        resume=args.resume,
        rerun_unstable=args.rerun_unstable,
    )
    bar = _Bar(args.quiet)
    runner = Runner(options, RunProgress(bar.start, bar.cell_started, bar.cell_finished, bar.rounds_skipped))
    print_warnings("run", runner.loaded.warnings)
    try:
        outcome: RunOutcome = runner.run()
    except Interrupted as stop:
        bar.close()
        if runner.result_path is None:
            print(f"attnbench run: {stop} before anything was measured", file=sys.stderr)
        else:
            print(
                f"attnbench run: {stop}: finished cells are saved in {runner.result_path}; "
                f"continue with: {resume_command(args, scenario)}",
                file=sys.stderr,
            )
        return stop.exit_code
    finally:
        bar.close()
    result = outcome.result
    statuses = ("ok", "oom", "killed", "error", "timeout", "unsupported")
    counts = {status: sum(1 for c in result.cells if c.status == status) for status in statuses}
    summary = ", ".join(f"{counts[s]} {s}" for s in statuses if counts[s] or s in ("ok", "oom", "error"))
    print(f"{outcome.path}  ({summary}; target {result.target})")
    peak_warning = result.environment.get("peak_bandwidth", {}).get("warning")
    if peak_warning:
        print(f"warning: peak bandwidth: {peak_warning}", file=sys.stderr)
    measured = sum(1 for c in result.cells if c.checks)
    for name, cells in outcome.failed_checks.items():
        print(
            f"warning: {name} failed in {len(cells)} of {measured} cells "
            f"(e.g. {cells[0].variant} b{cells[0].batch_size} ctx{cells[0].context_len}: {_first(cells[0], name)}); "
            "their numbers are suspect (see the report's self-checks)",
            file=sys.stderr,
        )
    unstable = [c for c in result.cells if c.unstable]
    if unstable:
        first = unstable[0]
        print(
            f"warning: {len(unstable)} of {sum(c.status == 'ok' for c in result.cells)} cells are unstable "
            f"(e.g. {first.variant} b{first.batch_size} ctx{first.context_len}: "
            f"{first.stability.reasons[0] if first.stability else ''}); claims resting on them are inconclusive. "
            f"Measure them again with: attnbench run {scenario} --resume --rerun-unstable",
            file=sys.stderr,
        )
    for failed in outcome.failed_cells:
        print(
            f"error in {failed.variant} b{failed.batch_size} ctx{failed.context_len}: {failed.error}", file=sys.stderr
        )
    return outcome.exit_code
