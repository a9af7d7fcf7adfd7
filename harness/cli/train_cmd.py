"""``attnbench train SCENARIO``: train every variant from scratch on a byte corpus over several seeds (the
scenario's ``[quality]`` table), convert a trained variant into others, and write the result and its report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli.notes import print_warnings
from harness.errors import UserError
from harness.hardware import slug
from harness.report.quality_report import render_quality
from harness.results.store import write_bytes_atomic, write_text_atomic
from harness.scenario import load_scenario
from harness.train.run import QualityOptions, run_quality


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train every variant at toy scale for its validation loss", description=__doc__
    )
    parser.add_argument("file", help="scenario file with a [quality] table")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="quality.quick_steps, quick_seeds, quick_eval_tokens")
    parser.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's choice)")
    parser.add_argument(
        "--save-checkpoints", type=Path, default=None, metavar="DIR", help="write each run's checkpoint into DIR"
    )
    parser.add_argument("--quiet", action="store_true", help="no line per finished run; only the result path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_scenario(args.file)
    print_warnings("train", loaded.warnings)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"must be at least 1, got {args.threads}", field="--threads")

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr)

    options = QualityOptions(
        device=args.device,
        out_dir=args.out,
        quick=args.quick,
        threads=args.threads,
        checkpoints_dir=args.save_checkpoints,
    )
    path, result = run_quality(loaded, options, progress)
    report_dir = path.parent
    for name, content in render_quality(result, f"[{path.name}]({os.path.relpath(path, report_dir)})").items():
        if isinstance(content, bytes):
            write_bytes_atomic(report_dir / name, content)
        else:
            write_text_atomic(report_dir / name, content + "\n")
    unsupported = [v for v in result.variants if v.status != "ok"]
    for entry in unsupported:
        print(f"warning: {entry.variant} not trained: {entry.error}", file=sys.stderr)
    print(f"{path}  ({sum(len(v.runs) for v in result.variants)} runs; target {result.target})")
    print(report_dir / f"QUALITY-{slug(result.scenario)}.md")
    return 0
