"""Commands that measure or train for minutes check where they will write before they start: a place that
cannot take their files is one line and exit 2, with nothing measured and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import TINY

from harness.cli import main
from harness.model import build_decoder
from harness.scenario.schema import ModelSpec
from harness.train.checkpoint import save_checkpoint
from harness.variants import Variant

REPO = Path(__file__).resolve().parents[1]
QUALITY = str(REPO / "scenarios" / "quality-toy.toml")


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_train_refuses_a_results_folder_that_is_a_file_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["train", QUALITY, "--quick", "--quiet", "--out", str(taken)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"attnbench train: error: {taken}/") and ": cannot write here: " in line
    assert taken.read_text() == "x"


def test_train_refuses_a_checkpoint_folder_that_is_a_file_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("x")
    out = tmp_path / "out"
    assert main(["train", QUALITY, "--quick", "--quiet", "--out", str(out), "--save-checkpoints", str(taken)]) == 2
    assert _one_line(capsys).startswith(f"attnbench train: error: {taken}: cannot write here: ")
    assert list(out.rglob("*.json")) == []  # no result claimed, nothing trained


def test_a_slurm_run_refuses_a_results_folder_that_is_a_file_before_submitting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    taken = tmp_path / "taken"
    taken.write_text("x")
    command = ["run", str(scenario), "--executor", "slurm", "--shards", "1", "--out", str(taken)]
    assert main([*command, "--slurm-folder", str(tmp_path / "slurm")]) == 2
    assert _one_line(capsys).startswith(f"attnbench run: error: {taken}: cannot write here: ")
    assert not (tmp_path / "slurm").exists()  # nothing submitted


def test_convert_refuses_a_save_folder_that_is_a_file_before_uptraining(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ModelSpec(d_model=32, n_layers=2, d_ff=48, vocab_size=256, dtype="float32")
    mha = Variant(name="H8-MHA", head_dim=8, n_heads=4, n_kv_heads=4, kv_layers=(0, 1))
    save_checkpoint(build_decoder(model, mha, dtype="float32", device="cpu", seed=0), 4, tmp_path / "mha.pt")
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["convert", str(tmp_path / "mha.pt"), "--to", "H8-MQA", "--save", str(taken)]) == 2
    assert _one_line(capsys).startswith(f"attnbench convert: error: {taken}: cannot write here: ")
