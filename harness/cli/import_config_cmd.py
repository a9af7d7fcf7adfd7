"""``attnbench import-config FILE``: print the scenario TOML that a Hugging Face config.json describes."""

from __future__ import annotations

import argparse

from harness.cli.notes import print_warnings
from harness.scenario.hf_config import load_config
from harness.scenario.scenario_toml import default_name, scenario_toml


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import-config", help="print the scenario TOML of a Hugging Face config.json", description=__doc__
    )
    parser.add_argument("file", metavar="FILE", help="a local config.json (nothing is downloaded)")
    parser.add_argument("--name", help="scenario name (default: the file's folder for config.json, else its stem)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    imported = load_config(args.file)
    print_warnings("import-config", imported.warnings)
    print(scenario_toml(imported, args.file, args.name or default_name(args.file)), end="")
    return 0
