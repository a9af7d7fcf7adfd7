"""``attnbench validate FILE...``: check scenario files; exit 2 on the first bad one."""

from __future__ import annotations

import argparse

from harness.cli.notes import print_warnings
from harness.scenario import expand_cells, load_scenario


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check scenario files", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="scenario TOML files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in args.files:
        loaded = load_scenario(path)
        print_warnings("validate", loaded.warnings)
        cells = expand_cells(loaded.scenario, loaded.variants)
        print(f"{path}: ok ({len(loaded.variants)} variants, {len(cells)} cells)")
    return 0
