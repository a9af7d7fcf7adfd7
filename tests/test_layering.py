"""The package's folders are floors: every import runs from a higher floor to a lower one, and the
parent process (planning, running, storing, comparing, reporting, the command line) imports no torch.

Imports are read from the source (every ``import`` statement, those inside functions included), so
a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "harness"

# Lowest floor first. A module may import its own floor's modules and those of lower floors.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "units", "signals", "inputs", "git", "stats", "cellkey", "pages", "lengths", "png"}),
    frozenset({"variants", "backends"}),
    frozenset({"scenario", "backend_support"}),
    frozenset({"parallel", "accounting", "results"}),
    frozenset({"model", "plan", "compare", "export", "revisions"}),
    frozenset({"hardware"}),
    frozenset({"predict"}),  # the cost model: predictions from the accounting and a target's calibration
    frozenset({"measure"}),  # the worker side: everything that touches torch to measure
    frozenset({"run"}),  # the parent side of a run: plans, rounds, executors, result files
    frozenset({"launch", "train", "report", "history", "doctor", "serve", "ab"}),
    frozenset({"cli"}),
    frozenset({"__main__", "__init__"}),
)

# Imported by the parent process; none of them may import torch, however deep. The runner and everything it
# reaches name the worker functions by their entry points (harness/measure/protocol.py), never import them.
PARENT_SIDE = (
    "harness.cli",
    "harness.run.runner",
    "harness.run.cellround",
    "harness.run.opt_in",
    "harness.run.node",
    "harness.run.local",
    "harness.run.raytasks",
    "harness.run.runfiles",
    "harness.run.derive",
    "harness.run.shards",
    "harness.launch.slurm",
    "harness.serve",
    "harness.doctor",
    "harness.ab",
    "harness.compare",
    "harness.report",
    "harness.history",
    "harness.predict",
    "harness.results.store",
    "harness.results.merge",
    "harness.results.stability",
    "harness.run.worker",
    "harness.run.ranks",
    "harness.measure.protocol",
)


def floor_of(unit: str) -> int:
    for index, members in enumerate(FLOORS):
        if unit in members:
            return index
    raise AssertionError(f"harness.{unit} is on no floor: add it to FLOORS")


def unit_of(module: str) -> str:
    """``harness.run.runner`` -> ``run``; ``harness.errors`` -> ``errors``."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "harness":
                found += [(node.lineno, f"harness.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.startswith("harness.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = "__init__" if module == "harness" else unit_of(module)
        for line, target in imported_modules(path):
            if floor_of(unit_of(target)) > floor_of(own):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {target}")
    return problems


def test_every_module_of_the_package_is_on_a_floor() -> None:
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py") if module_name(path) != "harness"}
    assert [unit for unit in sorted(units) if not any(unit in floor for floor in FLOORS)] == []


def test_no_import_runs_from_a_lower_floor_to_a_higher_one() -> None:
    assert upward_imports() == []


def test_an_upward_import_is_found_even_inside_a_function(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from harness.run.runner import Runner\n    return Runner\n")
    assert imported_modules(source) == [(2, "harness.run.runner")]
    assert floor_of(unit_of("harness.run.runner")) > floor_of("results")


def test_the_parent_side_imports_no_torch() -> None:
    # One fresh interpreter imports the modules in turn and names the first after which torch is loaded.
    check = (
        "import importlib, sys\n"
        f"for name in {list(PARENT_SIDE)!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name)\n"
        "        break\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {done.stdout.strip()} imports torch"
