"""Shared pieces of the fuzz tests: running a command in-process, the contract its output keeps, a
TOML writer for generated scenarios, and mutations of parsed documents.

The contract for any input file, however broken: the command returns 0, 1 or 2 (never raises),
and what it prints on stderr is one line per problem, each ``attnbench <command>: error: <problem>``,
no line twice, no traceback.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from harness.cli import main


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def attnbench(argv: Sequence[str]) -> Outcome:
    """The command line in-process, its output captured. An exception escaping it fails the test.

    Python warnings count as stderr, as they would print there from the console script (pytest
    would otherwise collect them out of sight).
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = main(list(argv))
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in seen)
    return Outcome(code, out.getvalue(), err.getvalue() + shown)


def assert_contract(outcome: Outcome, command: str, allowed: Sequence[int] = (0, 1, 2)) -> None:
    """The exit code is one of ``allowed``; stderr is well-formed problem lines (none on success)."""
    assert outcome.code in allowed, outcome
    assert "Traceback" not in outcome.stderr
    lines = outcome.stderr.splitlines()
    if outcome.code == 2:
        assert lines, "exit 2 without saying why"
    prefix = f"attnbench {command}: error: "
    for line in lines:
        assert line.startswith(prefix), line
        assert line.isprintable(), line
    assert len(set(lines)) == len(lines), "a problem reported twice"


# --- a TOML writer for generated documents ---------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` exactly."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def toml_document(doc: dict[str, Any]) -> str:
    """``doc`` as a TOML file: scalars first, then ``[table]``s, then ``[[array of tables]]``."""
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if k not in tables and k not in arrays]
    for key, table in tables.items():
        lines += ["", f"[{toml_string(key)}]", *(f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items())]
    for key, items in arrays.items():
        for item in items:
            lines += ["", f"[[{toml_string(key)}]]", *(f"{toml_string(k)} = {toml_value(v)}" for k, v in item.items())]
    return "\n".join(lines) + "\n"


# --- mutations of a parsed document ---------------------------------------------------------------

Path_ = tuple[str | int, ...]


def paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every key and list index inside ``doc``, as paths from its root (the root itself excluded)."""
    found: list[Path_] = []
    items: list[tuple[str | int, Any]] = []
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def _parent(doc: Any, path: Path_) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def replace_at(doc: Any, path: Path_, value: Any) -> None:
    _parent(doc, path)[path[-1]] = value


def delete_at(doc: Any, path: Path_) -> None:
    parent = _parent(doc, path)
    del parent[path[-1]]


def field_paths(doc: Any) -> list[Path_]:
    """One path per field of ``doc``: list elements count once (the first), so a long list does not
    crowd out the other fields when a field is picked at random."""
    shapes: dict[tuple[str, ...], Path_] = {}
    for path in paths(doc):
        shapes.setdefault(tuple("[]" if isinstance(k, int) else k for k in path), path)
    return list(shapes.values())


# A value of every JSON/TOML kind, each at an edge: what a field's type, range and encoding checks
# must refuse (or accept) without a traceback. "\ud800" is a lone surrogate, which JSON can spell.
EDGE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    2**63,
    10**400,
    -0.0,
    1e-300,
    1e300,
    math.nan,
    math.inf,
    "",
    "8",
    "../../outside",
    "line\nbreak",
    "\u202etxt.exe \x1b[31m",
    "\ud800",
    "Größe 😀 数据",
    "H" + "9" * 5000 + "-MHA",
    "9" * 400 + "GiB",
    [],
    {},
]
# The same kinds, and anything else hypothesis makes of them.
HOSTILE_SCALARS = st.one_of(
    st.sampled_from([v for v in EDGE_VALUES if not isinstance(v, list | dict)]),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
)
HOSTILE_VALUES = st.one_of(
    HOSTILE_SCALARS,
    st.lists(HOSTILE_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), HOSTILE_SCALARS, max_size=3),
)
