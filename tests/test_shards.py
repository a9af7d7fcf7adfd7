"""Shards: a deterministic split of a scenario's cells, balanced by predicted cost, and --shard parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.results.schema import Shard
from harness.run.shards import cell_cost_s, max_batch_key, parse_shard, search_cost_s, split
from harness.scenario import expand_cells, load_scenario

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default():
    loaded = load_scenario(REPO / "scenarios" / "default.toml")
    return loaded, expand_cells(loaded.scenario, loaded.variants)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_the_shards_cover_every_cell_exactly_once_each_in_scenario_order(default, count: int) -> None:
    loaded, cells = default
    shards = split(loaded, cells, count, rounds=1)
    assert len(shards) == count
    keys = [c.key for shard in shards for c in shard]
    assert sorted(keys) == sorted(c.key for c in cells) and len(set(keys)) == len(cells)
    order = {c.key: i for i, c in enumerate(cells)}
    for shard in shards:
        assert [order[c.key] for c in shard] == sorted(order[c.key] for c in shard)


def test_the_split_is_the_same_every_time(default) -> None:
    loaded, cells = default
    first = [[c.key for c in s] for s in split(loaded, cells, 4, rounds=2)]
    again = [[c.key for c in s] for s in split(loaded, list(cells), 4, rounds=2)]
    assert first == again


def test_cells_sharing_a_max_batch_search_stay_in_one_shard(default) -> None:
    loaded, cells = default
    for shard_index, shard in enumerate(split(loaded, cells, 3, rounds=1)):
        for other_index, other in enumerate(split(loaded, cells, 3, rounds=1)):
            if other_index != shard_index:
                assert not {max_batch_key(c) for c in shard} & {max_batch_key(c) for c in other}


def test_no_shard_costs_more_than_the_lpt_bound(default) -> None:
    # Graham's LPT rule: the heaviest shard is at most the mean load plus the heaviest single group
    loaded, cells = default
    groups: dict[tuple[str, str, int, str], float] = {}
    for cell in cells:
        key = max_batch_key(cell)
        groups[key] = groups.get(key, search_cost_s(loaded, cell)) + cell_cost_s(loaded, cell, 1)
    count = 3
    loads = [
        sum(cell_cost_s(loaded, c, 1) for c in shard)
        + sum(search_cost_s(loaded, c) for c in {max_batch_key(c): c for c in shard}.values())
        for shard in split(loaded, cells, count, rounds=1)
    ]
    assert max(loads) <= sum(groups.values()) / count + max(groups.values()) + 1e-9
    assert min(loads) > 0


def test_a_bigger_cell_is_predicted_to_cost_more(default) -> None:
    loaded, cells = default
    small = min(cells, key=lambda c: (c.batch_size, c.context_len))
    big = max(cells, key=lambda c: (c.batch_size, c.context_len) if c.variant == small.variant else (0, 0))
    assert big.variant == small.variant and (big.batch_size, big.context_len) > (small.batch_size, small.context_len)
    assert cell_cost_s(loaded, big, 1) > cell_cost_s(loaded, small, 1)
    assert cell_cost_s(loaded, small, 3) == pytest.approx(3 * cell_cost_s(loaded, small, 1))


def test_k_of_n_is_parsed() -> None:
    assert parse_shard("2/4", {}) == Shard(index=2, count=4)


def test_index_of_n_takes_k_from_the_job_completion_index() -> None:
    assert parse_shard("index/3", {"JOB_COMPLETION_INDEX": "0"}) == Shard(index=1, count=3)
    assert parse_shard("index/3", {"JOB_COMPLETION_INDEX": "2"}) == Shard(index=3, count=3)


@pytest.mark.parametrize(
    ("text", "env", "reason"),
    [
        ("2-4", {}, "'2-4' is not K/N (e.g. 2/4) or index/N"),
        ("0/4", {}, "'0/4': K must be 1 to N and N at least 1 (got shard 0 of 4)"),
        ("5/4", {}, "'5/4': K must be 1 to N and N at least 1 (got shard 5 of 4)"),
        ("index/2", {}, "index/N takes K from $JOB_COMPLETION_INDEX, which is None"),
        ("index/2", {"JOB_COMPLETION_INDEX": "2"}, "'index/2': K must be 1 to N and N at least 1 (got shard 3 of 2)"),
    ],
)
def test_a_bad_shard_is_a_one_line_error_naming_the_option(text: str, env: dict[str, str], reason: str) -> None:
    with pytest.raises(UserError) as info:
        parse_shard(text, env)
    assert str(info.value) == f"--shard: {reason}"


def test_the_example_indexed_job_runs_every_shard_once(default) -> None:
    """examples/k8s-indexed-job.yaml: N pods with indexes 0..N-1 and --shard index/N measure every cell once."""
    import re

    text = (REPO / "examples" / "k8s-indexed-job.yaml").read_text()
    assert re.search(r"^\s+completionMode: Indexed$", text, re.MULTILINE)
    (completions,) = re.findall(r"^\s+completions: (\d+)", text, re.MULTILINE)
    (count,) = set(re.findall(r"--shard index/(\d+)", text))
    assert count == completions
    loaded, cells = default
    shards = [parse_shard(f"index/{count}", {"JOB_COMPLETION_INDEX": str(i)}) for i in range(int(completions))]
    assert [s.index for s in shards] == list(range(1, int(count) + 1))
    parts = split(loaded, cells, int(count), rounds=1)
    assert sorted(c.key for s in shards for c in parts[s.index - 1]) == sorted(c.key for c in cells)
