"""Reading and writing result files: atomic writes, validated loads, finding the newest per target."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from harness.errors import UserError, UserErrors, validation_problems
from harness.inputs import MIB, parse_json, read_text
from harness.results.checks import json_problems, result_problems
from harness.results.schema import SCHEMA_VERSION, RunResult

RESULT_SUFFIX = ".json"
# A run of ten thousand cells with a thousand samples per latency is about 250 MiB of JSON; a
# larger file is no result file, and parsing it would take many times its size in memory.
MAX_RESULT_BYTES = 256 * MIB
RESULT_WHAT = "result file"  # how errors name one


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a half.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    the target (``os.replace`` is atomic within one file system). The file gets the permissions
    a plain ``open`` would give it (0666 less the umask), not the temporary file's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def save_result(result: RunResult, path: Path) -> None:
    """Write a result file atomically."""
    write_text_atomic(path, result.model_dump_json(indent=1) + "\n")


def parse_result(text: str, source: str) -> RunResult:
    """Validate a result file's text: its JSON (:func:`~harness.results.checks.json_problems`), its
    schema (strictly), then the checks that relate several fields (:mod:`harness.results.checks`).
    UserError with one line per problem found."""
    data = parse_json(text, source, RESULT_WHAT)
    if not isinstance(data, dict):
        raise UserError("not a result file (expected a JSON object)", source=source)
    if "schema_version" not in data or "cells" not in data:
        raise UserError("not an attnbench result file (no schema_version or cells)", source=source)
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise UserError(
            f"schema_version {version!r} is not supported (this attnbench reads {SCHEMA_VERSION})",
            source=source,
            field="schema_version",
        )
    problems = json_problems(data, source)
    if problems and problems[0].field is None:  # nested too deeply: nothing else is worth checking
        raise UserErrors(problems)
    try:
        result = RunResult.model_validate(data, strict=True)
    except ValidationError as exc:
        named = {p.field for p in problems}  # the schema sees some of these too: one line each
        raise UserErrors(problems + [p for p in validation_problems(exc, source) if p.field not in named]) from None
    problems += result_problems(result, source)
    if problems:
        raise UserErrors(problems)
    return result


def load_result(path: str | Path) -> RunResult:
    """Load and validate one result file."""
    return parse_result(read_text(path, MAX_RESULT_BYTES, RESULT_WHAT), str(path))


def result_filename(
    started: datetime, short_commit: str | None, n: int = 1, part: str | None = None, prefix: str = ""
) -> str:
    """``20261124T061500Z_ab12cd3.json``: sortable by time, with the commit that produced it; a shard's
    or a merged file's ``part`` follows (``..._ab12cd3_shard-2-of-4.json``), and the ``n``-th run to
    start in that second at that commit (and part) gets ``-n`` at the end (``_ab12cd3-2.json``). Other
    kinds of result file put a ``prefix`` in front (``quality_20261124T061500Z_ab12cd3.json``)."""
    middle = f"_{part}" if part else ""
    suffix = f"-{n}" if n > 1 else ""
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}{stamp}_{short_commit or 'nogit'}{middle}{suffix}{RESULT_SUFFIX}"


def claim_result_path(
    folder: Path, started: datetime, short_commit: str | None, part: str | None = None, prefix: str = ""
) -> Path:
    """A new result file's path in ``folder``, created empty so that no other run can take it: two runs
    started in the same second get different names, and neither overwrites the other (an empty file is
    no result file to the readers here, and is replaced by the first save)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = folder / result_filename(started, short_commit, n, part, prefix)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return path
    raise UserError("a thousand runs started in one second already; wait a second", source=str(folder))


def check_writable(folder: Path, needed_bytes: int) -> None:
    """UserError unless ``folder`` (made if missing) takes a new file and has ``needed_bytes`` free:
    checked before a run measures anything, so that it cannot measure for an hour and then fail to save."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".attnbench-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write here: {exc.strerror or exc}", source=str(folder)) from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise UserError(
            f"only {free / MIB:.1f} MiB free; this run needs about {needed_bytes / MIB:.1f} MiB for its result file",
            source=str(folder),
        )


def check_file_writable(path: Path) -> None:
    """UserError unless a file can be written at ``path`` later (its folder made if missing): not a folder,
    in a folder that takes a new file. Checked before a command measures, like :func:`check_writable`."""
    if path.is_dir():
        raise UserError("is a folder; give a file name", source=str(path))
    check_writable(path.parent, 0)


_CLAIM_SUFFIX = re.compile(r"^(?P<base>.*)-(?P<n>[0-9]+)$")


def name_order(name: str) -> tuple[str, int]:
    """Sort key of a result file name, oldest first: by start time, then by the ``-n`` that a later run
    started in the same second got (plain string order would put ``…_ab12cd3-2.json`` before
    ``…_ab12cd3.json``, the run it came after)."""
    stem = name.removesuffix(RESULT_SUFFIX)
    match = _CLAIM_SUFFIX.match(stem)
    return (match["base"], int(match["n"])) if match else (stem, 1)


def result_files(path: str | Path) -> list[Path]:
    """Result files at ``path``: the file itself, or every ``*.json`` below a folder, oldest first within
    each folder (:func:`name_order`)."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UserError("no such file or folder", source=str(path))
    found = (p for p in root.rglob(f"*{RESULT_SUFFIX}") if not p.name.startswith(".") and _is_result(p))
    return sorted(found, key=lambda p: (p.parent.parts, name_order(p.name)))


def _is_result(path: Path) -> bool:
    """Cheap check that a JSON file is a result file (not a cached probe or an export)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
            return b'"schema_version"' in head and b'"cells"' in head + handle.read()
    except OSError:
        return False


def newest_results(root: str | Path) -> dict[tuple[str, str], Path]:
    """The newest result file per (target, scenario name) under ``root``; file names sort by time."""
    newest: dict[tuple[str, str], Path] = {}
    for path in result_files(root):
        result = load_result(path)
        key = (result.target, result.scenario.name)
        if key not in newest or name_order(path.name) > name_order(newest[key].name):
            newest[key] = path
    return newest
