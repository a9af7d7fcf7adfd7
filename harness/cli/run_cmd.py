"""``attnbench run [FILE]``: measure every cell of a scenario and write one result file."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

from harness.cli.notes import print_warnings
from harness.errors import UserError
from harness.hardware import is_cuda, resolve_device
from harness.results.schema import CellResult
from harness.results.stability import noise_floor
from harness.results.store import check_writable
from harness.run.runner import Runner, RunOptions, RunOutcome, RunProgress
from harness.run.shards import parse_shard
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
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="calibrate each cell's calls per warm sample afresh instead of reusing those of the newest earlier "
        "finished run of this scenario in the results folder (reused by default, so that runs compare alike)",
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="measure only part K of N (balanced by predicted cost; the same split on every machine); "
        "index/N takes K from $JOB_COMPLETION_INDEX + 1 (a Kubernetes Indexed Job). Join with attnbench merge",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default="local",
        help="where cells run: this machine (default), one Ray task per cell on a cluster (pip install -e '.[ray]'), "
        "or one Slurm array task per shard, merged into --out (pip install -e '.[slurm]')",
    )
    parser.add_argument("--address", help="with --executor ray: the cluster to join (default: start a local one)")
    parser.add_argument("--gpu-type", help="with --executor ray: only nodes of this accelerator type, e.g. H100")
    slurm = parser.add_argument_group("--executor slurm")
    slurm.add_argument("--shards", type=int, default=None, metavar="N", help="array tasks: the scenario in N shards")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--constraint", help="Slurm node constraint (feature), e.g. h100")
    slurm.add_argument("--time", type=int, default=120, metavar="MIN", help="each task's time limit (default 120)")
    slurm.add_argument(
        "--slurm-folder", type=Path, default=Path("slurm-runs"), help="logs and the shards' files (default slurm-runs)"
    )
    slurm.add_argument("--slurm-cluster", choices=("slurm", "local"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress display; only the result path")
    parser.set_defaults(func=run)


class _Bar:
    """A tqdm bar over cells: done / total, the cell being measured (or, once rounds finished on several
    hosts, the rounds each host finished), and time left."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.per_host: dict[str, int] = {}

    def start(self, total: int, done: int) -> None:
        if not self.quiet:
            self.bar = tqdm(total=total, initial=done, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def cell_started(self, cell: Cell) -> None:
        if self.bar is not None and len(self.per_host) < 2:
            self.bar.set_postfix_str(cell.label)

    def cell_finished(self, cell: Cell, result: CellResult) -> None:
        if result.placement:
            host = result.placement[-1].host
            self.per_host[host] = self.per_host.get(host, 0) + 1
        if self.bar is not None:
            if result.status != "ok":
                self.bar.write(f"{cell.label}: {result.status}: {result.error}", file=sys.stderr)
            if len(self.per_host) > 1:
                self.bar.set_postfix_str(", ".join(f"{h}: {n}" for h, n in sorted(self.per_host.items())))
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
    if args.shard is not None:
        words += ["--shard", args.shard]
    if args.executor != "local":
        words += ["--executor", args.executor]
        words += ["--address", args.address] if args.address else []
        words += ["--gpu-type", args.gpu_type] if args.gpu_type else []
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    if args.rerun_unstable and not args.resume:
        raise UserError("re-measures cells of an existing run; give --resume too", field="--rerun-unstable")
    if args.recalibrate and args.resume:
        raise UserError("applies to a new run; a resumed run keeps how it began", field="--recalibrate")
    shard = parse_shard(args.shard, os.environ) if args.shard is not None else None
    if args.executor == "local" and (args.address or args.gpu_type):
        raise UserError("only with --executor ray", field="--address" if args.address else "--gpu-type")
    executor = None
    if args.executor == "ray":
        from harness.run.raytasks import RayExecutor

        executor = RayExecutor(address=args.address, gpu_type=args.gpu_type, device=args.device)
    if args.executor == "slurm":
        return _run_slurm(args, shard)
    device = executor.device if executor is not None else resolve_device(args.device)
    scenario = args.file if args.file is not None else default_scenario(device)
    options = RunOptions(
        scenario=scenario,
        device=args.device,
        out_dir=args.out,
        quick=args.quick,
        resume=args.resume,
        rerun_unstable=args.rerun_unstable,
        shard=shard,
        recalibrate=args.recalibrate,
    )
    bar = _Bar(args.quiet)
    progress = RunProgress(bar.start, bar.cell_started, bar.cell_finished, bar.rounds_skipped)
    runner = Runner(options, progress, executor)
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
    matmul_warning = (result.environment.get("peak_matmul") or {}).get("warning")
    if matmul_warning:
        print(f"warning: peak matmul rate: {matmul_warning}", file=sys.stderr)
    measured = sum(1 for c in result.cells if c.checks)
    for name, cells in outcome.failed_checks.items():
        print(
            f"warning: {name} failed in {len(cells)} of {measured} cells "
            f"(e.g. {cells[0].variant} b{cells[0].batch_size} ctx{cells[0].context_len}: {_first(cells[0], name)}); "
            "their numbers are suspect (see the report's self-checks)",
            file=sys.stderr,
        )
    floor = noise_floor(result.cells)
    if floor is not None:
        print(floor.describe(), file=sys.stderr)
    unstable = [c for c in result.cells if c.unstable]
    if unstable:
        first = unstable[0]
        print(
            f"warning: {len(unstable)} of {sum(c.status == 'ok' for c in result.cells)} cells are unstable "
            f"(e.g. {first.variant} b{first.batch_size} ctx{first.context_len}: "
            f"{first.stability.reasons[0] if first.stability else ''}); claims resting on them are inconclusive. "
            f"Measure them again with: {resume_command(args, scenario)} --rerun-unstable",
            file=sys.stderr,
        )
    for failed in outcome.failed_cells:
        print(
            f"error in {failed.variant} b{failed.batch_size} ctx{failed.context_len}: {failed.error}", file=sys.stderr
        )
    return outcome.exit_code


def _run_slurm(args: argparse.Namespace, shard: object) -> int:
    """--executor slurm: every shard as one task of a job array, their files merged into --out."""
    from harness.launch.slurm import SlurmOptions, submit_and_merge

    if args.shards is None or args.shards < 1:
        raise UserError("--executor slurm needs --shards N (N at least 1): one array task per shard", field="--shards")
    if shard is not None or args.resume:
        raise UserError("--executor slurm runs every shard itself", field="--shard" if shard else "--resume")
    if args.file is None:
        raise UserError("--executor slurm needs a scenario file: the nodes' devices are not known here", field="FILE")
    # the array's tasks may start in another folder; the merged files must have a place before they run
    out_dir = args.out.absolute()
    check_writable(out_dir, 0)
    options = RunOptions(
        scenario=str(Path(args.file).absolute()),
        device=args.device,
        out_dir=out_dir,
        quick=args.quick,
        recalibrate=args.recalibrate,
    )
    slurm = SlurmOptions(
        shards=args.shards,
        folder=args.slurm_folder.resolve(),
        partition=args.partition,
        constraint=args.constraint,
        time_min=args.time,
        cluster=args.slurm_cluster,
    )
    written = submit_and_merge(options, slurm, out_dir)
    failed = 0
    for path, result in written:
        failed += sum(c.status in ("error", "timeout") for c in result.cells)
        print(f"{path}  ({len(result.cells)} cells from {len(result.merged_from)} shards; target {result.target})")
    return 1 if failed else 0
