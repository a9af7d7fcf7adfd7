"""Does comparing two commits tell a real regression from noise on this machine? False alarms and power, measured.

Runs, on a scratch clone of this repository at HEAD (committed code only):

- A/A interleaved: ``attnbench ab HEAD HEAD`` N times; each exit 1 is a false alarm;
- A/A sequential (the old way): two ``attnbench run`` of HEAD, then ``attnbench compare``, M times;
- real slowdowns: a commit whose decode step busy-waits a given share of its own duration (10%, 5%),
  compared interleaved with HEAD: the share of cells whose decode latency is flagged (the power);
- a CPU hog started halfway through an ``attnbench run``: which cells are flagged unstable, what the
  claims check and the run's output say.

Every figure printed is measured here and now; nothing is assumed. The scratch clone is removed at the
end. Usage (about 90 minutes with the defaults on a 2-core CPU; fewer repetitions for a quick look):

    python benchmarks/compare_power.py [--aa 20] [--sequential 10] [--slowdowns 10,5] [--out compare-power.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

SCENARIO = "scenarios/default.toml"
PATCHED = "harness/model/decoder.py"
# The decode step as the patch finds it, and what a slowed commit makes of it.
ORIGINAL = """        return self(tokens, cache, pos)
"""
SLOWED = """        start = time.perf_counter()
        logits = self(tokens, cache, pos)
        end = time.perf_counter()
        while time.perf_counter() < end + {share} * (end - start):  # busy-wait: a real {percent}% slowdown
            pass
        return logits
"""


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=check)


def attnbench(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True)


def slowed_commit(clone: Path, percent: int) -> str:
    """A commit on top of HEAD whose decode step busy-waits ``percent``% of its duration; its hash."""
    source = clone / PATCHED
    text = source.read_text()
    step = text.index("    def decode_step(")
    body = text.index(ORIGINAL, step)
    patched = text[:body] + SLOWED.format(share=percent / 100, percent=percent) + text[body + len(ORIGINAL) :]
    if "import time\n" not in patched:
        patched = patched.replace(
            "from __future__ import annotations\n", "from __future__ import annotations\n\nimport time\n", 1
        )
    source.write_text(patched)
    sh(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", f"slow {percent}%"],
        clone,
    )
    commit = sh(["git", "rev-parse", "HEAD"], clone).stdout.strip()
    sh(["git", "reset", "-q", "--hard", "HEAD~1"], clone)
    return commit


def flagged(markdown: str, metric: str = "decode_latency_s") -> tuple[int, int]:
    """(cells whose ``metric`` is a regression, cells compared) in a compare table."""
    cells = regressions = 0
    current = ""
    for line in markdown.splitlines():
        if not line.startswith("|") or line.startswith("|--") or "| metric" in line:
            continue
        row = [c.strip() for c in line.split("|")[1:-1]]
        if len(row) < 8:
            continue
        current = row[0] or current
        if row[1] == metric:
            cells += 1
            regressions += row[-1] == "regression"
    return regressions, cells


def ab(clone: Path, base: str, head: str, out: Path, rounds: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    more = ["--rounds", str(rounds)] if rounds else []
    proc = attnbench(["ab", base, head, SCENARIO, *more, "--out", str(out), "--quiet"], clone)
    caught, cells = flagged(proc.stdout)
    return {
        "exit": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "decode_flagged": caught,
        "cells": cells,
        "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:],
        "rounds": next((line for line in proc.stderr.splitlines() if line.startswith("rounds:")), ""),
        "unstable_cells": proc.stdout.count("| unstable "),
        "decode_ratios": decode_ratios(out),
    }


def decode_ratios(out: Path) -> dict[str, list[float]]:
    """Per cell: its decode latency's round ratios HEAD/BASE (how many rounds it got, how they fell)."""
    sides = {}
    for role in ("base", "head"):
        files = sorted((out / role).rglob("*.json"))
        if not files:
            return {}
        cells = json.loads(files[-1].read_text())["cells"]
        decode = {f"{c['variant']} b{c['batch_size']} ctx{c['context_len']}": (c.get("metrics") or {}).get(
            "decode_latency_s") for c in cells}  # fmt: skip
        sides[role] = {label: summary["process_medians"] for label, summary in decode.items() if summary}
    return {
        label: [round(h / b, 4) for b, h in zip(base, sides["head"][label], strict=False)]
        for label, base in sides["base"].items()
        if label in sides["head"]
    }


def sequential(clone: Path, out: Path) -> dict[str, Any]:
    paths = []
    for name in ("a", "b"):
        run = attnbench(["run", SCENARIO, "--out", str(out / name), "--quiet"], clone)
        if run.returncode not in (0, 1):
            return {"exit": run.returncode, "summary": run.stderr.strip()[-300:]}
        paths.append(run.stdout.split()[0])
    proc = attnbench(["compare", paths[0], paths[1]], clone)
    return {"exit": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1]}


def hog(clone: Path, out: Path) -> dict[str, Any]:
    """A run with a CPU hog (one core spinning) started once half of its cells are measured."""
    cells = int(attnbench(["validate", SCENARIO], clone).stdout.split("variants, ")[1].split()[0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", SCENARIO, "--out", str(out), "--quiet"],
        cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    spinner = None
    rounds = 2  # the default scenario's measure.rounds
    while proc.poll() is None:
        time.sleep(0.5)
        files = list(out.rglob("*.json"))
        measured = 0
        try:  # the run claims its file empty before the first save
            data = json.loads(files[0].read_text()) if files else {"cells": []}
        except ValueError:
            data = {"cells": []}
        measured = sum(cell.get("rounds_done", 1) for cell in data["cells"])
        if spinner is None and measured >= cells * rounds // 2:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    if spinner is not None:
        spinner.kill()
    _, stderr = proc.communicate()
    result = json.loads(next(out.rglob("*.json")).read_text())
    unstable = [
        f"{c['variant']} b{c['batch_size']} ctx{c['context_len']}"
        for c in result["cells"]
        if (c.get("stability") or {}).get("unstable")
    ]
    report = attnbench(["report", str(out), "--out", str(out / "report")], clone)
    text = next((out / "report").rglob("REPORT.md")).read_text() if report.returncode == 0 else ""
    inconclusive = text.count("❔ inconclusive")
    holds = text.count("✅ holds")
    return {
        "unstable_cells": unstable,
        "cells": len(result["cells"]),
        "claims_inconclusive": inconclusive,
        "claims_holds": holds,
        "warning": next((line for line in stderr.splitlines() if "unstable" in line), ""),
    }


def rounds_per_cell(runs: list[dict[str, Any]]) -> str:
    """ "; R rounds per cell" on average over ``runs`` (empty for figures saved before they were kept)."""
    counts = [len(ratios) for r in runs for ratios in r.get("decode_ratios", {}).values()]
    return f"; {sum(counts) / len(counts):.1f} rounds per cell" if counts else ""


def summary_table(figures: dict[str, Any]) -> str:
    """The figures as one markdown table (also from a saved file: ``--render FILE``)."""
    rows = []
    if figures["aa"]:
        walls = sorted(r["wall_s"] for r in figures["aa"])
        unstable = sum(r.get("unstable_cells", 0) for r in figures["aa"])
        rows.append(["interleaved A/A", f"{sum(r['exit'] == 1 for r in figures['aa'])} of {len(figures['aa'])} exit 1",
                     f"wall {walls[len(walls) // 2]:.0f} s median, {walls[0]:.0f}-{walls[-1]:.0f} s; "
                     f"{unstable} unstable cells in all{rounds_per_cell(figures['aa'])}"])  # fmt: skip
    if figures["sequential"]:
        rows.append(
            [
                "sequential A/A",
                f"{sum(r['exit'] == 1 for r in figures['sequential'])} of {len(figures['sequential'])} exit 1",
                "",
            ]
        )
    for percent, r in figures["slowdowns"].items():
        rows.append(
            [
                f"{percent}% slower decode, interleaved",
                f"exit {r['exit']}",
                f"decode latency flagged in {r['decode_flagged']} of {r['cells']} cells; wall {r['wall_s']:.0f} s"
                + rounds_per_cell([r]),
            ]
        )
    if figures["hog"]:
        h = figures["hog"]
        rows.append(["CPU hog from halfway", f"{len(h['unstable_cells'])} of {h['cells']} cells unstable",
                     f"claims: {h['claims_inconclusive']} inconclusive, {h['claims_holds']} hold"])  # fmt: skip
    return tabulate(rows, headers=["experiment", "outcome", "detail"], tablefmt="github")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aa", type=int, default=20, help="interleaved A/A comparisons (default %(default)s)")
    parser.add_argument("--sequential", type=int, default=10, help="sequential A/A pairs (default %(default)s)")
    parser.add_argument(
        "--slowdowns", default="10,5", help="percent slowdowns to compare against (default %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="the most rounds per cell (default: attnbench ab's)")
    parser.add_argument("--no-hog", action="store_true", help="skip the CPU-hog run")
    parser.add_argument("--out", default="compare-power.json", help="where to write every figure (JSON)")
    parser.add_argument("--render", metavar="FILE", help="print the table of a saved figures file; measure nothing")
    args = parser.parse_args()
    if args.render:
        print(summary_table(json.loads(Path(args.render).read_text())))
        return 0
    repo = Path(__file__).resolve().parents[1]
    figures: dict[str, Any] = {"aa": [], "sequential": [], "slowdowns": {}, "hog": None}

    def save() -> None:  # after every experiment: a stop loses at most the one under way
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="attnbench-power-") as scratch:
        clone = Path(scratch) / "clone"
        sh(["git", "clone", "-q", "--shared", str(repo), str(clone)], repo)
        env_note = sh(["git", "rev-parse", "--short", "HEAD"], clone).stdout.strip()
        figures["commit"] = env_note
        for i in range(args.aa):
            figures["aa"].append(ab(clone, "HEAD", "HEAD", Path(scratch) / f"aa{i}", args.rounds))
            print(
                f"A/A {i + 1}/{args.aa}: {figures['aa'][-1]['summary']} {figures['aa'][-1]['rounds']}", file=sys.stderr
            )
            save()
        for i in range(args.sequential):
            figures["sequential"].append(sequential(clone, Path(scratch) / f"seq{i}"))
            print(f"sequential {i + 1}/{args.sequential}: {figures['sequential'][-1]['summary']}", file=sys.stderr)
            save()
        for percent in (int(p) for p in args.slowdowns.split(",") if p):
            commit = slowed_commit(clone, percent)
            figures["slowdowns"][percent] = ab(clone, "HEAD", commit, Path(scratch) / f"slow{percent}", args.rounds)
            print(f"slowdown {percent}%: {figures['slowdowns'][percent]['summary']}", file=sys.stderr)
            save()
        if not args.no_hog:
            figures["hog"] = hog(clone, Path(scratch) / "hog")
    save()
    print(summary_table(figures))
    print(f"\ncommit {figures['commit']}; every figure in {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
