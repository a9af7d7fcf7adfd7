"""Input files are read within a limit, so a device or a pipe that never ends cannot fill memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.inputs import MIB, read_input, read_json, read_toml
from harness.results.quality import load_quality


def test_a_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"x" * 100)
    assert read_input(path, 100, "scenario file") == b"x" * 100


def test_a_file_one_byte_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"x" * (MIB + 1))
    with pytest.raises(UserError, match=r"s\.toml: larger than 1 MiB, too large for a scenario file"):
        read_input(path, MIB, "scenario file")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize(
    ("name", "limit"),
    [("zero.toml", "16 MiB, too large for a scenario file"), ("zero.json", "256 MiB, too large for a result file")],
)
def test_validate_of_a_device_that_never_ends_is_one_line(
    name: str, limit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.symlink_to("/dev/zero")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == f"attnbench validate: error: {path}: larger than {limit}\n"


HOSTILE_JSON = [
    ("[" * 100_000 + "]" * 100_000, r"not a quality result \(JSON nested too deeply to read\)"),
    ('{"x": ' + "9" * 5000 + "}", "not a quality result: Exceeds the limit"),
    ("{not json", "not JSON: Expecting property name"),
    ('{"x": "\xff"}', r"not a quality result \(not UTF-8 text\)"),
]


@pytest.mark.parametrize(("text", "reason"), HOSTILE_JSON)
def test_a_quality_result_that_json_cannot_read_is_refused_in_one_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "q.json"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(UserError, match=r"q\.json: " + reason) as raised:
        load_quality(path)
    assert len(str(raised.value).splitlines()) == 1


@pytest.mark.parametrize(("text", "reason"), HOSTILE_JSON)
def test_json_inputs_of_every_kind_are_refused_alike(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    with pytest.raises(UserError, match=r"c\.json: " + reason.replace("a quality result", "a config.json")):
        read_json(path, MIB, "config.json")


def test_a_toml_integer_of_thousands_of_digits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("x = " + "9" * 5000)
    with pytest.raises(UserError, match=r"s\.toml: cannot read: Exceeds the limit"):
        read_toml(path, MIB, "scenario file")
