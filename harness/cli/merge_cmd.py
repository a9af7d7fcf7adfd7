"""``attnbench merge RESULTS... --out DIR``: join the result files of one scenario measured in parts
(``run --shard K/N`` on a Slurm array, a Kubernetes Indexed Job or a CI matrix) into one file per
target, ``DIR/<target>/<start>_<commit>_merged.json``. Refuses files of different scenarios (by
content), of different revisions (unless ``--allow-revisions``), unfinished ones, and a cell twice;
writes nothing unless every file is written, and never overwrites one."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from harness.errors import UserError
from harness.results.merge import merge_results, missing_shards
from harness.results.store import check_writable, claim_result_path, load_result, result_files, save_result
from harness.run.runfiles import needed_bytes


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge", help="join the result files of a sharded run, one file per target", description=__doc__
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="result files, or folders searched for them")
    parser.add_argument("--out", type=Path, required=True, help="folder to write DIR/<target>/... into")
    parser.add_argument(
        "--allow-revisions",
        action="store_true",
        help="merge results measured at different commits (each part's is kept)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = list(dict.fromkeys(p.resolve() for given in args.results for p in result_files(given)))
    if not paths:
        raise UserError("no result files found", source=" ".join(args.results))
    parts = [(path, load_result(path)) for path in paths]
    merged = merge_results(parts, allow_revisions=args.allow_revisions)
    for label in missing_shards([result for _, result in parts]):
        print(f"attnbench merge: warning: no result of shard {label}: the merged files lack its cells", file=sys.stderr)
    for target, result in merged.items():
        measure = result.scenario.measure
        rounds, samples = int(measure.get("rounds", 1)), int(measure.get("max_samples", 1))
        check_writable(args.out / target, needed_bytes(len(result.cells), rounds, samples))
    written: list[Path] = []
    try:
        for target, result in merged.items():
            started = datetime.strptime(result.started_utc, "%Y-%m-%dT%H:%M:%SZ")
            path = claim_result_path(args.out / target, started, result.git.short, "merged")
            written.append(path)
            save_result(result, path)
    except BaseException as exc:
        for path in written:  # nothing half-written: every merged file or none
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            where = written[-1] if written else args.out
            raise UserError(f"could not write: {exc.strerror or exc}", source=str(where)) from None
        raise
    for path, (target, result) in zip(written, merged.items(), strict=True):
        print(f"{path}  ({len(result.cells)} cells from {len(result.merged_from)} files; target {target})")
    return 0
