"""A user's mistake is printed as one line per problem, whatever characters the input held."""

from __future__ import annotations

import pytest

from harness.cli import print_problems
from harness.errors import Problem, UserError, UserErrors


def test_a_problem_reads_source_field_and_reason_joined_by_colons() -> None:
    assert str(Problem("must be positive", "s.toml", "model.d_model")) == "s.toml: model.d_model: must be positive"


def test_newlines_and_control_characters_from_an_input_are_escaped_onto_one_line() -> None:
    problem = Problem("unknown key", "r.json", "cells[0].a\nb\r\x1b[2J\u202e")
    assert str(problem) == "r.json: cells[0].a\\nb\\r\\x1b[2J\\u202e: unknown key"


def test_letters_beyond_ascii_are_kept_as_they_are() -> None:
    assert str(Problem("Größe unbekannt", "données.toml")) == "données.toml: Größe unbekannt"


def test_several_problems_are_printed_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    error = UserErrors([Problem("first", "f.json", "a"), Problem("second\nhalf", "f.json", "b")])
    print_problems("validate", error)
    assert capsys.readouterr().err == (
        "attnbench validate: error: f.json: a: first\nattnbench validate: error: f.json: b: second\\nhalf\n"
    )


def test_a_single_error_is_its_one_problem() -> None:
    error = UserError("no such file", source="x.toml")
    assert error.problems == (Problem("no such file", "x.toml"),)
    assert str(error) == "x.toml: no such file"


def test_several_problems_need_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UserErrors([])
