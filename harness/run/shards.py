"""Shards: a scenario's cells split into N parts of about equal predicted cost, the same on every machine.

``attnbench run --shard K/N`` measures part K; ``attnbench merge`` joins the parts' result files. Cells
that share a max batch (one variant, dtype, context and backend; any batch size) stay in one shard, so
that each max batch is searched once. The split is deterministic (it depends on the scenario alone)
and greedy: groups in descending predicted cost, each to the shard with the least cost so far, ties
to the lower shard (Graham's LPT rule, within 4/3 of the best split).

The predicted cost of a cell is a time in seconds from the accounting (harness/accounting.py) and the
timing settings: per round, a worker process's start, the bytes the build writes (weights and KV
cache) at a nominal rate, and the timed windows; plus, once per group, the max-batch search's probes,
each building up to the memory budget. Only the ratios matter: the cost ranks and balances cells, it
predicts no wall time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from harness import accounting
from harness.backend_support import kernel_memory
from harness.errors import UserError
from harness.results.schema import Shard
from harness.scenario import Cell, LoadedScenario

PROCESS_S = 0.05  # starting a worker from the forkserver
NOMINAL_BYTES_PER_S = 5e9  # writing a build's weights and cache: a CPU's order of magnitude, the same for every cell
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"  # Kubernetes Indexed Jobs: the pod's index, from 0


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """``K/N`` (K from 1), or ``index/N``: K is ``$JOB_COMPLETION_INDEX`` + 1 (a Kubernetes Indexed Job)."""
    match = re.fullmatch(r"(\d+|index)/(\d+)", text.strip())
    if match is None:
        raise UserError(f"{text!r} is not K/N (e.g. 2/4) or index/N", field="--shard")
    count = int(match.group(2))
    if match.group(1) == "index":
        value = env.get(INDEX_VARIABLE)
        if value is None or not value.isdecimal():
            raise UserError(f"index/N takes K from ${INDEX_VARIABLE}, which is {value!r}", field="--shard")
        index = int(value) + 1
    else:
        index = int(match.group(1))
    if count < 1 or not 1 <= index <= count:
        raise UserError(f"{text!r}: K must be 1 to N and N at least 1 (got shard {index} of {count})", field="--shard")
    return Shard(index=index, count=count)


def cell_cost_s(loaded: LoadedScenario, cell: Cell, rounds: int) -> float:
    """The predicted cost of measuring every round of ``cell`` (module doc), without the max-batch search."""
    model, measure = loaded.scenario.model, loaded.scenario.measure
    v, dtype = cell.variant, cell.dtype
    built = accounting.weight_bytes(model, v, dtype) + accounting.kv_cache_bytes(
        v, dtype, cell.batch_size, cell.context_len
    )
    metrics = measure.selected_metrics
    windows = sum(metric in metrics for metric in ("decode", "attention")) * (2 if measure.cold else 1)
    return rounds * (PROCESS_S + built / NOMINAL_BYTES_PER_S + windows * (measure.warmup_s + measure.min_time_s))


def search_cost_s(loaded: LoadedScenario, cell: Cell) -> float:
    """The predicted cost of the max-batch search of ``cell``'s group: a bisection's probes up to the budget."""
    measure = loaded.scenario.measure
    budget = measure.memory_budget
    if "max_batch" not in measure.selected_metrics or budget is None:
        return 0.0
    model, context = loaded.scenario.model, cell.context_len
    kernel = kernel_memory(cell.backend, None)
    predicted = accounting.predicted_max_batch(model, cell.variant, cell.dtype, context, budget, kernel=kernel)
    probes = math.ceil(math.log2(predicted + 2)) + 3  # bisection, the boundary's second look
    return probes * (PROCESS_S + budget / NOMINAL_BYTES_PER_S)


def split(loaded: LoadedScenario, cells: Sequence[Cell], count: int, rounds: int) -> list[list[Cell]]:
    """``cells`` in ``count`` shards (each in scenario order), balanced by predicted cost (module doc)."""
    groups: dict[tuple[str, str, int, str], list[int]] = {}
    for position, cell in enumerate(cells):
        groups.setdefault(max_batch_key(cell), []).append(position)
    costed = [
        (sum(cell_cost_s(loaded, cells[i], rounds) for i in group) + search_cost_s(loaded, cells[group[0]]), group)
        for group in groups.values()
    ]
    # descending cost; among equal costs the group that comes first in the scenario first
    costed.sort(key=lambda item: (-item[0], item[1][0]))
    loads = [0.0] * count
    shards: list[list[int]] = [[] for _ in range(count)]
    for cost, members in costed:
        lightest = min(range(count), key=lambda k: (loads[k], k))
        loads[lightest] += cost
        shards[lightest].extend(members)
    return [[cells[i] for i in sorted(members)] for members in shards]


def shard_cells(loaded: LoadedScenario, cells: Sequence[Cell], shard: Shard, rounds: int) -> list[Cell]:
    """The cells of ``shard``."""
    return split(loaded, cells, shard.count, rounds)[shard.index - 1]


def max_batch_key(cell: Cell) -> tuple[str, str, int, str]:
    """The cells that share one max-batch search, kept in one shard (harness/cellkey.py)."""
    return cell.key.max_batch_group
