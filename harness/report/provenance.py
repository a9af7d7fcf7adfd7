"""Where a report comes from and what evidence its result lacks: the rendering commit and the missing-evidence banner.

A result file records its cells' self-checks (``checks``), whether each cell held still (``stability``)
and, on CPU hosts, how busy the machine was while it timed (``host_load``). Files written before these
fields existed carry none of them: their numbers were never checked, so the report says which evidence
is missing, and no verdict drawn from them reads "holds" or "does not hold" (:func:`without_evidence`).
"""

from __future__ import annotations

from dataclasses import replace

from harness.report.pairing import ClaimCheck
from harness.results.schema import GitInfo, RunResult

# What each field is evidence of, in the words of the banner.
EVIDENCE = {
    "checks": "self-checks of the numbers",
    "stability": "whether the rounds agreed and the spread stayed typical",
    "host_load": "how busy the host was while timing",
}


def missing_evidence(result: RunResult) -> list[str]:
    """The evidence fields no measured cell of ``result`` carries, in :data:`EVIDENCE` order.

    ``host_load`` is recorded on CPU hosts only, so a CUDA result is not asked for it. A result with no
    measured cell lacks nothing: there is no number to trust or distrust.
    """
    measured = [c for c in result.cells if c.status == "ok" and c.metrics is not None]
    if not measured:
        return []
    missing = []
    if not any(c.checks for c in measured):
        missing.append("checks")
    if not any(c.stability is not None for c in measured):
        missing.append("stability")
    if result.device == "cpu" and not any(c.host_load for c in measured):
        missing.append("host_load")
    return missing


def banner(result: RunResult, missing: list[str]) -> str:
    """A markdown warning naming the evidence ``result`` lacks and what follows from it."""
    names = ", ".join(f"`{field}`" for field in missing)
    meaning = "; ".join(EVIDENCE[field] for field in missing)
    commit = result.git.short or "an unknown commit"
    return (
        f"> ⚠ **Missing evidence.** The result file of `{result.scenario.name}` (measured at `{commit}`) has no "
        f"{names} ({meaning}): it was written before attnbench recorded them. Its numbers are shown as measured, "
        "but none is known to be trustworthy, so every verdict below is inconclusive or not distinguishable. "
        "Measure again with the current code for verdicts."
    )


def without_evidence(checks: list[ClaimCheck], missing: list[str]) -> list[ClaimCheck]:
    """``checks`` with every "holds" and "does not hold" made inconclusive when evidence is missing."""
    if not missing:
        return checks
    fields = ", ".join(missing)
    return [
        replace(
            check,
            verdict="inconclusive",
            evidence=f"{check.evidence}; would read '{check.verdict}', but the result has no {fields}",
        )
        if check.verdict in ("holds", "does not hold")
        else check
        for check in checks
    ]


def rendered_by(git: GitInfo) -> str:
    """The sentence naming the attnbench commit that rendered a report."""
    if git.commit is None:
        return "Rendered by attnbench at an unknown commit."
    state = " with uncommitted changes" if git.dirty else ""
    return f"Rendered by attnbench at commit `{git.short or git.commit[:7]}`{state}."
