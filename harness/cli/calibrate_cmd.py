"""``attnbench calibrate [TARGET] [--results DIR]``: fit the target's cost model on its measured cells.

Writes ``DIR/<target>/calibration.json`` (default DIR ``results``; default target this machine's CPU
target): the fitted figures per group of cells, the memory fit, the commit and files it was fitted on,
and every cell's residual. ``attnbench plan --predict`` and every later run on the target read it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from harness.errors import UserError
from harness.hardware import detect_target
from harness.predict.calibration import calibrate, save_calibration
from harness.predict.fit import abs_error_quantiles
from harness.predict.predictor import calibration_path
from harness.results.store import check_file_writable
from harness.run.runfiles import git_info


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("calibrate", help="fit a target's cost model on its measured cells", description=__doc__)
    parser.add_argument("target", nargs="?", help="target id, a folder under --results (default: this machine's CPU)")
    parser.add_argument("--results", default="results", help="the results folder (default results)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = Path(args.results)
    target = args.target or detect_target("cpu")
    path = calibration_path(results, target)
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"no results of target {target!r}", source=str(folder))
    check_file_writable(path)
    calibration = calibrate(folder, target, git_info())
    save_calibration(calibration, path)
    rows = [
        [
            fit.metric,
            fit.dtype or "all",
            fit.backend or "all",
            fit.cells,
            fit.model.combine,
            f"{fit.model.bandwidth_gbps:.1f}",
            f"{fit.model.tflops * 1e3:.1f}",
            f"{fit.model.layer_overhead_s * 1e6:.1f}",
            f"{fit.model.step_overhead_s * 1e6:.1f}",
            f"{fit.median_abs_error:.1%}",
            f"{fit.p90_abs_error:.1%}",
        ]
        for fit in calibration.latency
    ]
    print(f"{path}: fitted on {len(calibration.files)} result files")
    headers = ["latency", "dtype", "backend", "cells", "combine", "GB/s", "GFLOP/s", "µs/layer", "µs/step"]
    print(tabulate(rows, headers=[*headers, "|err| median", "|err| p90"], tablefmt="simple", disable_numparse=True))
    if calibration.memory is not None:
        memory = calibration.memory
        print(
            f"memory: weights + {memory.model.fixed_bytes / 2**20:.1f} MiB + {memory.model.sequence_factor:.3f} x the "
            f"accounting's bytes per sequence, |err| median {memory.median_abs_error:.1%} over {memory.points} peaks"
        )
    median, p90 = abs_error_quantiles([r.error_fraction for r in calibration.residuals])
    print(f"residuals: {len(calibration.residuals)} latencies, |err| median {median:.1%}, p90 {p90:.1%} (in sample)")
    return 0
