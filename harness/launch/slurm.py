"""The Slurm executor: one array task per shard, submitted with submitit, then the shards merged.

    attnbench run S --executor slurm --shards N -> submitit map_array: task K runs
    ``attnbench run S --shard K/N`` (the local executor, on the GPU Slurm gave it) ->
    each task's result files under FOLDER/parts -> attnbench merge -> --out

Each array task asks for one GPU (``gpus_per_task=1``) and one task on its node; ``--partition``,
``--constraint`` and ``--time`` pass through to Slurm. submitit's ``local`` cluster runs the same
array as processes on this machine (for tests; they share its GPUs). submitit is an optional
extra, imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import RunFailure, UserError
from harness.results.merge import merge_results
from harness.results.schema import RunResult, Shard
from harness.results.store import claim_result_path, load_result, save_result
from harness.run.runner import Runner

INSTALL_HINT = "pip install -e '.[slurm]'"


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError(f"needs submitit, which is not installed: {INSTALL_HINT}", field="--executor slurm") from None
    return submitit


@dataclass(frozen=True)
class SlurmOptions:
    shards: int  # array tasks: the scenario in this many shards
    folder: Path  # submitit's logs and pickles, and the shards' result files under parts/
    partition: str | None = None
    constraint: str | None = None
    time_min: int = 120  # each array task's time limit
    cluster: str | None = None  # None: Slurm when sbatch is found; "local": processes on this machine


def run_shard(options: Any, shard: Shard) -> list[str]:
    """One array task: the runner on shard ``shard`` of the scenario, here; its result files."""
    outcome = Runner(replace(options, shard=shard)).run()
    return [str(path) for path, _ in outcome.files]


def submit_and_merge(run_options: Any, slurm: SlurmOptions, out_dir: Path) -> list[tuple[Path, RunResult]]:
    """Run every shard as one task of a job array, wait for them, merge their files into ``out_dir``."""
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=slurm.folder / "submitit", cluster=slurm.cluster)
    parameters: dict[str, Any] = {"timeout_min": slurm.time_min, "slurm_array_parallelism": slurm.shards}
    if executor.cluster == "slurm":
        parameters |= {"gpus_per_task": 1, "tasks_per_node": 1, "nodes": 1}
        parameters |= {"slurm_partition": slurm.partition} if slurm.partition else {}
        parameters |= {"slurm_constraint": slurm.constraint} if slurm.constraint else {}
    executor.update_parameters(**parameters)
    parts_dir = slurm.folder / "parts"
    options = replace(run_options, out_dir=parts_dir)
    shards = [Shard(index=k, count=slurm.shards) for k in range(1, slurm.shards + 1)]
    jobs = executor.map_array(run_shard, [options] * len(shards), shards)
    files: list[Path] = []
    failed = []
    for shard, job in zip(shards, jobs, strict=True):
        try:
            files += [Path(p) for p in job.result()]
        except Exception as exc:  # a task that failed: the others' files are kept for a later merge
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            failed.append(f"shard {shard.label} (job {job.job_id}): {last}")
    if failed:
        raise RunFailure(f"{len(failed)} array task(s) failed: {'; '.join(failed)}", source=str(parts_dir))
    merged = merge_results([(path, load_result(path)) for path in files])
    written = []
    for target, result in merged.items():
        started = datetime.strptime(result.started_utc, "%Y-%m-%dT%H:%M:%SZ")
        path = claim_result_path(out_dir / target, started, result.git.short, "merged")
        save_result(result, path)
        written.append((path, result))
    return written
