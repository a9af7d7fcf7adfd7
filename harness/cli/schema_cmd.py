"""``attnbench schema``: print the JSON Schema of the scenario format (for editors)."""

from __future__ import annotations

import argparse
import json

from harness.scenario.schema import scenario_json_schema


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("schema", help="print the scenario format's JSON Schema", description=__doc__)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(scenario_json_schema(), indent=2))
    return 0
