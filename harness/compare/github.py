"""The comparison as a pull-request comment body (``--format github``).

A reviewer reads the verdict and what changed; the full table is folded below it. The body starts with
a hidden marker (:data:`MARKER`) so that a workflow can find and update its own earlier comment instead
of adding one per push. GitHub refuses comment bodies over 65,536 characters: past
:data:`MAX_BODY_CHARS` the folded table is cut, and the body says so.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from harness.compare.comparison import Comparison
from harness.compare.render import render_markdown, summary_line
from harness.compare.verdicts import verdicts

MARKER = "<!-- attnbench-compare -->"
MAX_BODY_CHARS = 60_000  # below GitHub's 65,536, with room for the cut notice


def _interval(metric: dict[str, Any]) -> str:
    if metric["ratio"] is None:
        return "n/a"
    shown = f"×{metric['ratio']:.3f}"
    if metric["interval"] is not None:
        low, high = metric["interval"]
        shown += f" [{low:.3f}, {high:.3f}]"
    return shown


def _changed_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for cell in data["cells"]:
        for metric in cell["metrics"]:
            if metric["verdict"] in ("regression", "improvement"):
                rows.append([cell["cell"], metric["metric"], _interval(metric), metric["verdict"], metric["reason"]])
        if not cell["compared"] and cell["verdict"] == "regression":
            rows.append([cell["cell"], "status", "", "regression", cell["reason"]])
    return rows


def _not_compared_line(data: dict[str, Any]) -> str | None:
    skipped = [cell for cell in data["cells"] if not cell["compared"]]
    if not skipped:
        return None
    kinds: dict[str, int] = {}
    for cell in skipped:
        kinds[cell["verdict"]] = kinds.get(cell["verdict"], 0) + 1
    listed = ", ".join(f"{n} {verdict}" for verdict, n in sorted(kinds.items()))
    return f"Not compared: {len(skipped)} cell{'s' if len(skipped) != 1 else ''} ({listed}); the table below says why."


def render_github(comparison: Comparison) -> str:
    """The comment body: marker, verdict, the changed metrics with their ratio and interval, then every
    row of the markdown comparison folded in a ``<details>`` block."""
    data = verdicts(comparison)
    base, head = data["base"], data["head"]
    icon = ":x:" if data["verdict"] == "regression" else ":white_check_mark:"
    lines = [
        MARKER,
        f"{icon} {summary_line(comparison)}",
        "",
        f"attnbench on `{head['target']}`: head `{head['spec']}` ({', '.join(head['commits'])}) against base "
        f"`{base['spec']}` ({', '.join(base['commits'])}); gates {', '.join(data['thresholds'].values())}.",
    ]
    rows = _changed_rows(data)
    if rows:
        headers = ["cell", "metric", "ratio head/base [interval]", "verdict", "why"]
        lines += ["", tabulate(rows, headers, tablefmt="github", disable_numparse=True)]
    else:
        lines += ["", "No metric changed beyond its gate."]
    skipped = _not_compared_line(data)
    if skipped:
        lines += ["", skipped]
    table = render_markdown(comparison)
    head_text = "\n".join(lines)
    room = MAX_BODY_CHARS - len(head_text) - 200
    if len(table) > room:
        cut = table[: max(room, 0)].rsplit("\n", 1)[0]
        table = f"{cut}\n\n(cut at {MAX_BODY_CHARS} characters: the full table is in the job's summary and artifacts)"
    lines += ["", "<details><summary>Every cell and metric</summary>", "", table.rstrip(), "", "</details>"]
    return "\n".join(lines) + "\n"
