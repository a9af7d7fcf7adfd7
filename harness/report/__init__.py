"""Reports from result files: ``<out>/<target>/REPORT.md`` with PNG plots beside it, and CROSS_TARGET.md.

Folders given also yield ``QUALITY-<scenario>.md`` from their newest quality result per target and scenario,
as ``attnbench train`` wrote it, so that every committed report can be rendered again by the current code.

:func:`build_reports` loads every result first (a bad file stops everything before anything is
written), renders each target's report in memory, then writes each file atomically, plots before
the markdown that links them, while holding the output folder's report lock
(:mod:`harness.results.lock`), so that two reports into one folder never write its files at once:
the second is refused, naming the first's pid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UserError
from harness.report.quality_report import render_quality
from harness.report.render import CROSS_TARGET_NAME, LoadedResult, render_cross_target, render_target
from harness.results.lock import folder_lock
from harness.results.quality import QUALITY_PREFIX, QualityResult, load_quality
from harness.results.schema import GitInfo
from harness.results.store import (
    RESULT_SUFFIX,
    load_result,
    name_order,
    newest_results,
    write_bytes_atomic,
    write_text_atomic,
)
from harness.run.runfiles import PROJECT_ROOT, git_info

__all__ = ["LoadedResult", "build_reports", "load_results"]


def load_results(paths: Sequence[str | Path]) -> list[LoadedResult]:
    """Results named by files or folders; a folder gives its newest result per (target, scenario).

    When several results share a target and scenario, the one started last is kept.
    """
    chosen: dict[tuple[str, str], LoadedResult] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UserError("no such file or folder", source=str(path))
        files = list(newest_results(path).values()) if path.is_dir() else [path]
        for file in files:
            result = load_result(file)
            key = (result.target, result.scenario.name)
            if key not in chosen or result.started_utc > chosen[key].result.started_utc:
                chosen[key] = LoadedResult(file, result)
    if not chosen:
        raise UserError("no result files found", source=", ".join(str(p) for p in paths))
    return list(chosen.values())


def attnbench_commit() -> GitInfo:
    """The commit of the attnbench code rendering a report (its own checkout, whatever the working folder)."""
    try:
        return git_info(PROJECT_ROOT)
    except UserError:  # a copy without .git that does not name its commit
        return GitInfo(commit=None, short=None, dirty=None)


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        write_bytes_atomic(path, content)
    else:
        write_text_atomic(path, content)


def newest_quality_results(paths: Sequence[str | Path]) -> list[tuple[Path, QualityResult]]:
    """The newest quality result (``quality_*.json``) per (target, scenario) below the folders in ``paths``."""
    chosen: dict[tuple[str, str], tuple[Path, QualityResult]] = {}
    for given in paths:
        folder = Path(given)
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob(f"{QUALITY_PREFIX}*{RESULT_SUFFIX}"), key=lambda p: name_order(p.name)):
            if file.name.startswith("."):
                continue
            result = load_quality(file)
            chosen[(result.target, result.scenario)] = (file, result)  # later names are newer
    return list(chosen.values())


def _quality_files(out_dir: Path, paths: Sequence[str | Path]) -> list[tuple[Path, str | bytes]]:
    """QUALITY-<scenario>.md and its figure per newest quality result, into ``<out>/<target>/``."""
    rendered: list[tuple[Path, str | bytes]] = []
    for file, result in newest_quality_results(paths):
        report_dir = out_dir / result.target
        link = f"[{file.name}]({Path(os.path.relpath(file.resolve(), report_dir.resolve())).as_posix()})"
        files = render_quality(result, link)
        rendered += sorted(
            ((report_dir / name, data if isinstance(data, bytes) else data + "\n") for name, data in files.items()),
            key=lambda f: f[0].suffix == ".md",
        )
    return rendered


def build_reports(paths: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Write one report per target (and CROSS_TARGET.md when targets share a scenario), and the quality report
    of the newest quality result per target and scenario in the folders given; the paths written."""
    out_dir = Path(out)
    loaded = load_results(paths)
    quality = _quality_files(out_dir, paths)
    by_target: dict[str, list[LoadedResult]] = {}
    for item in loaded:
        by_target.setdefault(item.result.target, []).append(item)

    renderer = attnbench_commit()
    rendered: list[tuple[Path, str | bytes]] = []
    for target, items in sorted(by_target.items()):
        report_dir = out_dir / target
        files = render_target(items, report_dir, renderer)
        # Plots first, then the markdown that links them.
        rendered += sorted(
            ((report_dir / name, data) for name, data in files.items()), key=lambda f: f[0].suffix == ".md"
        )
    cross = render_cross_target(loaded)
    if cross is not None:
        rendered.append((out_dir / CROSS_TARGET_NAME, cross))
    rendered += quality

    with folder_lock(out_dir, "report"):
        for path, content in rendered:
            try:
                _write(path, content)
            except OSError as exc:  # the file keeps its previous content (atomic write)
                raise UserError(f"cannot write: {exc.strerror or exc}", source=str(path)) from None
    return [path for path, _ in rendered]
