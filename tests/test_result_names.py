"""Result file names sort by when their run started, including runs that started in the same second."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from helpers_results import make_cell, make_run

from harness.results.quality import claim_quality_path
from harness.results.store import claim_result_path, name_order, newest_results, result_files, save_result


def test_a_run_claimed_later_in_the_same_second_sorts_after_the_first():
    names = [
        "20261130T010203Z_abc1234-2.json",
        "20261130T010204Z_abc1234.json",
        "20261130T010203Z_abc1234-10.json",
        "20261130T010203Z_abc1234.json",
        "20261130T010202Z_abc1234-3.json",
    ]
    assert sorted(names, key=name_order) == [
        "20261130T010202Z_abc1234-3.json",
        "20261130T010203Z_abc1234.json",
        "20261130T010203Z_abc1234-2.json",
        "20261130T010203Z_abc1234-10.json",
        "20261130T010204Z_abc1234.json",
    ]


def test_shard_parts_keep_their_order_and_their_own_later_claims():
    names = [
        "20261130T010203Z_abc1234_shard-2-of-4.json",
        "20261130T010203Z_abc1234_shard-1-of-4-2.json",
        "20261130T010203Z_abc1234_shard-1-of-4.json",
    ]
    assert sorted(names, key=name_order) == [
        "20261130T010203Z_abc1234_shard-1-of-4.json",
        "20261130T010203Z_abc1234_shard-1-of-4-2.json",
        "20261130T010203Z_abc1234_shard-2-of-4.json",
    ]


def test_the_newest_result_of_a_folder_is_the_last_run_claimed_in_that_second(tmp_path: Path):
    started = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    folder = tmp_path / "cpu-test"
    for variant in ("H64-MHA", "H64-GQA2", "H64-MQA"):  # three runs of one scenario, one second
        save_result(make_run([make_cell(variant)]), claim_result_path(folder, started, "abc1234"))
    files = result_files(tmp_path)
    assert [p.name for p in files] == [
        "20261130T010203Z_abc1234.json",
        "20261130T010203Z_abc1234-2.json",
        "20261130T010203Z_abc1234-3.json",
    ]
    (newest,) = newest_results(tmp_path).values()
    assert newest == folder / "20261130T010203Z_abc1234-3.json"


def test_two_trainings_started_in_the_same_second_claim_different_quality_files(tmp_path: Path):
    started = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    first = claim_quality_path(tmp_path, started, "abc1234")
    first.write_text("the first training's file")
    second = claim_quality_path(tmp_path, started, "abc1234")
    assert (first.name, second.name) == (
        "quality_20261130T010203Z_abc1234.json",
        "quality_20261130T010203Z_abc1234-2.json",
    )
    assert first.read_text() == "the first training's file"
    assert result_files(tmp_path) == []  # not decode results: report and compare do not read them
