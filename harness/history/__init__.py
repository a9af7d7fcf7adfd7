"""``attnbench history``: every result of a target over commits, as a static HTML page and PNG figures.

:func:`build_histories` reads every result file under the folders given (each checked whole first:
a bad file stops everything before anything is written), orders them by git's commit order, detects
steps per cell and metric (:mod:`harness.history.steps`), and writes per target
``<out>/<target>/history.html`` (:mod:`harness.history.page`) and one ``history-<scenario>.png`` per
scenario (:mod:`harness.history.figure`), each atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.errors import UserError
from harness.history.figure import render_figure
from harness.history.page import render_page
from harness.history.series import TargetHistory, build_history
from harness.results import gitrev
from harness.results.schema import RunResult
from harness.results.store import check_writable, load_result, result_files, write_bytes_atomic, write_text_atomic

PAGE_NAME = "history.html"

__all__ = ["PAGE_NAME", "build_histories", "figure_name", "load_all"]


def figure_name(scenario: str) -> str:
    """``history-<scenario>.png``, the scenario's name made safe for a file name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scenario).lstrip(".") or "scenario"
    return f"history-{safe}.png"


def load_all(paths: Sequence[str | Path]) -> dict[str, list[tuple[Path, RunResult]]]:
    """Every result file below ``paths``, by target; results of one side of an interleaved comparison
    (``attnbench ab``) are left out: their rounds were paired with another revision's, not run alone."""
    by_target: dict[str, list[tuple[Path, RunResult]]] = {}
    for given in paths:
        for path in result_files(given):
            result = load_result(path)
            if result.pairing is None:
                by_target.setdefault(result.target, []).append((path, result))
    return by_target


def _rendered_by() -> str:
    """The attnbench commit rendering the page (with ``+dirty`` for uncommitted changes), as a result names it."""
    root = Path(__file__).resolve().parents[2]
    commit = gitrev.resolve_commit("HEAD", root)
    return commit[:7] if commit else "(outside git)"


def build_histories(
    paths: Sequence[str | Path], out: str | Path, target: str | None = None, figures: bool = True
) -> list[Path]:
    """Write the page (and figures) of each target, or of ``target`` alone; the paths written."""
    loaded = load_all(paths)
    if not loaded:
        raise UserError("no result files found", source=", ".join(str(p) for p in paths))
    if target is not None:
        if target not in loaded:
            raise UserError(f"no results for target {target!r}; found: {', '.join(sorted(loaded))}", source="--target")
        loaded = {target: loaded[target]}
    order = gitrev.commit_order(Path(paths[0]) if Path(paths[0]).is_dir() else Path(paths[0]).parent)
    rendered_by = _rendered_by()
    out_dir = Path(out)
    rendered: list[tuple[Path, str | bytes]] = []
    for name, items in sorted(loaded.items()):
        history: TargetHistory = build_history(name, items, order)
        folder = out_dir / name
        if figures:
            rendered += [(folder / figure_name(s), render_figure(history, s)) for s in history.scenarios()]
        rendered.append((folder / PAGE_NAME, render_page(history, rendered_by)))
    for folder in {path.parent for path, _ in rendered}:
        check_writable(folder, 0)
    for path, content in rendered:
        try:
            if isinstance(content, bytes):
                write_bytes_atomic(path, content)
            else:
                write_text_atomic(path, content)
        except OSError as exc:
            raise UserError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    return [path for path, _ in rendered]
