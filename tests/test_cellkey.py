"""One key names a cell wherever cells are matched: in a scenario, in a result file, in a max-batch group."""

from __future__ import annotations

from harness.cellkey import CellKey
from harness.scenario import Cell
from harness.variants import Variant, sharing_map


def test_a_scenario_cell_and_its_key_spell_the_cell_alike() -> None:
    cell = Cell(Variant("H64-GQA2", 64, 2, 1, sharing_map(2, 1)), 4, 256, "float32", "sdpa")
    assert cell.key == CellKey("H64-GQA2", 4, 256, "float32", "sdpa")
    assert cell.label == cell.key.label == "H64-GQA2 b4 ctx256 float32 sdpa"


def test_cells_that_differ_only_in_batch_size_share_a_max_batch_group() -> None:
    small, large = CellKey("H64-MQA", 1, 512, "bfloat16", "auto"), CellKey("H64-MQA", 8, 512, "bfloat16", "auto")
    assert small.max_batch_group == large.max_batch_group == ("H64-MQA", "bfloat16", 512, "auto")
    assert small.max_batch_group != small._replace(context_len=1024).max_batch_group
