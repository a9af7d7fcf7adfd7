"""nox sessions for attnbench. ``nox -l`` lists them; pyproject.toml is the one source of dependencies.

On a machine without a GPU the sessions install the CPU build of PyTorch pinned below, which never
pulls CUDA packages. The ``gpu`` session instead uses the CUDA PyTorch already on the machine.
"""

from __future__ import annotations

import glob

import nox
from nox.command import CommandFailed

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "workflows"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
DEV = PYPROJECT["project"]["optional-dependencies"]["dev"]
WORKFLOW_TOOLS = PYPROJECT["project"]["optional-dependencies"]["workflows"]
# The CPU build; an unpinned torch would pull the CUDA build and its gigabytes of packages.
CPU_TORCH = "torch==2.13.0"


def install_project(session: nox.Session, *extras: str) -> None:
    session.install(CPU_TORCH)
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on the CPU (CUDA tests skip without a GPU)."""
    install_project(session, "dev")
    session.run("pytest", *session.posargs)


@nox.session(default=False)
def ray(session: nox.Session) -> None:
    """Run the tests of the Ray executor on a local two-node Ray cluster with fake GPUs."""
    install_project(session, "dev", "ray")
    session.run("pytest", "-m", "ray", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common mistakes with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "harness", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "harness", "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy."""
    install_project(session, "dev")
    session.run("mypy")


@nox.session
def workflows(session: nox.Session) -> None:
    """Audit the CI workflows: zizmor (no finding of medium severity or above) and GitHub's schema."""
    session.install(*WORKFLOW_TOOLS)
    session.run("zizmor", "--offline", "--min-severity=medium", ".github/workflows/")
    files = sorted(glob.glob(".github/workflows/*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *files)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Measure the default scenario on this machine and write its report under results/."""
    install_project(session)
    session.run("attnbench", "run", *session.posargs)
    session.run("attnbench", "report")


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Render REPORT.md and plots from the newest results of each target."""
    install_project(session)
    session.run("attnbench", "report", *session.posargs)


@nox.session(default=False)
def history(session: nox.Session) -> None:
    """Render the history page and figures of each target from every result under results/."""
    install_project(session)
    session.run("attnbench", "history", *session.posargs)


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """Compare two results (files, folders or git revisions): nox -s compare -- BASE HEAD."""
    if len(session.posargs) < 2:
        session.error("usage: nox -s compare -- BASE HEAD [attnbench compare options]")
    install_project(session)
    session.run("attnbench", "compare", *session.posargs)


@nox.session(default=False)
def ab(session: nox.Session) -> None:
    """Measure two revisions interleaved and compare them: nox -s ab -- BASE HEAD (default: HEAD .)."""
    install_project(session)
    session.run("attnbench", "ab", *(session.posargs or ["HEAD", "."]))


@nox.session(default=False, venv_params=["--system-site-packages"])
def gpu_ab(session: nox.Session) -> None:
    """On a GPU machine (its own CUDA PyTorch): nox -s gpu_ab -- BASE HEAD [SCENARIO] [options], interleaved."""
    session.run("python", "-c", "import torch; assert torch.cuda.is_available(), 'no CUDA device'", silent=True)
    session.install("-e", ".")
    session.run("attnbench", "ab", *(session.posargs or ["HEAD", "."]), "--device", "cuda")


@nox.session(default=False, venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """On a GPU machine (its own CUDA PyTorch): doctor, CUDA tests, GPU scenarios, reports; fails after all ran."""
    session.run("python", "-c", "import torch; assert torch.cuda.is_available(), 'no CUDA device'", silent=True)
    session.install("-e", ".[dev]")
    failed: list[str] = []

    def attempt(name: str, *command: str) -> None:
        """Run one step; a failure is noted and the next step runs, so the report is always written."""
        try:
            session.run(*command)
        except CommandFailed:
            failed.append(name)

    attempt("doctor", "attnbench", "doctor", "--device", "cuda")
    attempt("CUDA tests", "pytest", "-m", "cuda", "-q")
    scenarios = session.posargs or ["scenarios/gpu-default.toml", "scenarios/cla-1b.toml"]
    for scenario in scenarios:
        attempt(f"run {scenario}", "attnbench", "run", scenario, "--device", "cuda")
    attempt("report", "attnbench", "report")
    if failed:
        session.error(f"failed: {', '.join(failed)}")
