"""``attnbench backends``: every registered attention backend, what it runs, and whether it can run here.

Reads the registry (harness/backends/): the built-ins, then those installed through the
``attnbench.backends`` entry point group. Imports no torch and none of the backends' kernels: "here"
says which device types a backend runs on and whether what it needs (a package, a compiler) is on this
machine; whether a GPU is present is for ``attnbench hw`` to say. An entry point that cannot be loaded is
listed below the table with the reason, and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tabulate import tabulate

from harness import backends
from harness.backends import BackendSpec


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("backends", help="list the registered attention backends", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one object per backend instead of the table")
    parser.set_defaults(func=run)


def _kinds(spec: BackendSpec) -> str:
    kinds = [layout.upper() for layout in spec.heads] if spec.kv_cache else []
    kinds += ["CLA"] if spec.cla and spec.kv_cache else []
    kinds += [f"MLA {form}" for form in spec.mla]
    kinds += ["windows"] if spec.windows else []
    kinds += ["paged"] if spec.paged else []
    kinds += ["ragged"] if spec.ragged else []
    kinds += ["multi-token"] if spec.multi_token else []
    where = f" ({', '.join(spec.fp8_devices)})" if spec.fp8_devices else ""
    kinds += [kv.removeprefix("float8_") + where for kv in spec.kv_dtypes]
    return ", ".join(kinds)


def _here(spec: BackendSpec) -> str:
    missing = spec.missing()
    if missing is not None:
        return f"no: {missing}"
    return ", ".join(spec.devices) if spec.devices is not None else "any device"


def describe(spec: BackendSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "origin": spec.origin,
        "kernel": spec.kernel,
        "devices": list(spec.devices) if spec.devices is not None else None,
        "dtypes": list(spec.dtypes),
        "kv_dtypes": list(spec.kv_dtypes),
        "runs": _kinds(spec),
        "graph_capturable": spec.graph_capturable,
        "auto_candidate": spec.auto_candidate,
        "missing": spec.missing(),
        "summary": spec.summary,
    }


def run(args: argparse.Namespace) -> int:
    registry = backends.registry()
    if args.json:
        print(json.dumps({"backends": [describe(s) for s in registry.specs], "problems": list(registry.problems)}))
        return 1 if registry.problems else 0
    rows = [
        [s.name, s.origin, _kinds(s), "yes" if s.graph_capturable else "no", _here(s), s.summary]
        for s in registry.specs
    ]
    headers = ["backend", "from", "runs", "CUDA graph", "here", "what it is"]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    for problem in registry.problems:
        print(f"not loaded: {problem}")
    return 1 if registry.problems else 0
