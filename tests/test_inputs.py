"""Input files are read within a limit, so a device or a pipe that never ends cannot fill memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.inputs import MIB, read_input


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
