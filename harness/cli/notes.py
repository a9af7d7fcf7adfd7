"""Warning lines the commands that load scenarios print alike."""

from __future__ import annotations

import sys

from harness.scenario.hf_config import PARAMETERS_COVER


def print_warnings(command: str, warnings: tuple[str, ...]) -> None:
    """One stderr line per thing a [model] from config.json has that the decoder leaves out or defaults,
    then what the parameter count covers."""
    for line in warnings:
        print(f"attnbench {command}: warning: {line}", file=sys.stderr)
    if warnings:
        print(f"attnbench {command}: note: {PARAMETERS_COVER}", file=sys.stderr)
