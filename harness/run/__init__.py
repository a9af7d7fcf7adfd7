"""Where a cell runs: the typed job and outcome that cross to an executor, and the executors.

    Scenario --plan--> [CellJob] --executor--> Future[CellOutcome] --runner--> result file per target

A job is one measurement round of one cell (its ``auto`` choice, measurement and max-batch probes all
run on one node); :func:`harness.run.cellround.measure_cell_round` turns it into a CellResult the
same way wherever it runs. Executors decide placement only: in this process (``local``), or one Ray
task per job (``ray``). The runner (harness/run/runner.py) stays the one writer of result files.

Engines that run whole commands rather than tasks get shards instead (``shards.py``: ``run --shard
K/N``, joined by ``attnbench merge``); harness/launch/slurm.py submits one Slurm array task per shard.
"""
