"""The ``attnbench`` command line: one module per subcommand, each with ``register`` and ``run``.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func=run``, and ``run(args) -> int``, which returns the exit code. :func:`main` turns a
:class:`~harness.errors.UserError` into one line per problem on stderr and exit code 2 (1 for a
:class:`~harness.errors.RunFailure`), and a stop signal (SIGINT, SIGTERM, SIGHUP; see
harness/signals.py) into one line and exit code 128 + its number: 130, 143, 129.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from harness.errors import UserError
from harness.measure.hostload import mark_run_root
from harness.signals import Interrupted, stop_signals

# Subcommands in the order ``attnbench --help`` lists them.
SUBCOMMANDS = (
    "validate",
    "schema",
    "backends",
    "plan",
    "calibrate",
    "explore",
    "import-config",
    "hw",
    "doctor",
    "run",
    "report",
    "compare",
    "ab",
    "history",
    "merge",
    "export",
    "train",
    "convert",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage mistakes: one line and exit 2, as argparse does, but without the usage block."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnbench", description="Decode-time cost of attention configurations, per hardware target.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"harness.cli.{name.replace('-', '_')}_cmd")
        module.register(sub)
    return parser


def print_problems(command: str, error: UserError) -> None:
    """Each problem of ``error`` on its own line of stderr: ``attnbench <command>: error: <problem>``."""
    for problem in error.problems:
        print(f"attnbench {command}: error: {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mark_run_root()  # every process this command starts is its own, not other work on the host
    try:
        with stop_signals():
            code: int = args.func(args)
    except UserError as exc:
        print_problems(args.command, exc)
        return exc.exit_code
    except Interrupted as stop:
        print(f"attnbench {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # SIGINT outside the handler's reach
        print(f"attnbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``attnbench plan | head``): not an error; keep Python from
        # complaining again when it flushes stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
