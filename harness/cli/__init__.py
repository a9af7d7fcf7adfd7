"""The ``attnbench`` command line: one module per subcommand, each with ``register`` and ``run``.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func=run``, and ``run(args) -> int``, which returns the exit code. :func:`main` turns a
:class:`~harness.errors.UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from harness.errors import UserError

# Subcommands in the order ``attnbench --help`` lists them.
SUBCOMMANDS = (
    "validate",
    "schema",
    "plan",
    "import-config",
    "hw",
    "doctor",
    "run",
    "report",
    "compare",
    "ab",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UserError as exc:
        print(f"attnbench {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
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
