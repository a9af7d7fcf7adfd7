"""Scenario files: the TOML format, its validation, and expansion into measurable cells."""

from harness.scenario.cells import Cell, expand_cells
from harness.scenario.load import LoadedScenario, load_scenario
from harness.scenario.schema import Scenario

__all__ = ["Cell", "LoadedScenario", "Scenario", "expand_cells", "load_scenario"]
