"""Training at toy scale: the corpus split, a deterministic run per seed, conversions, checkpoints, the
[quality] table's errors, and `attnbench train` end to end on a tiny stack."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import UserError
from harness.model import build_decoder
from harness.results.quality import load_quality
from harness.results.store import result_files
from harness.scenario import load_scenario
from harness.scenario.quality import QualitySpec
from harness.scenario.schema import ModelSpec
from harness.train.checkpoint import load_checkpoint, restore, save_checkpoint
from harness.train.conversion import convert
from harness.train.corpus import load_corpus, pydoc_topics_bytes, training_batch, validation_windows
from harness.train.loop import learning_rate, train, validation_loss
from harness.train.run import uptrain_steps
from harness.variants import Variant, sharing_map

BYTES_MODEL = ModelSpec(d_model=32, n_layers=2, d_ff=48, vocab_size=256, dtype="float32")
MHA = Variant(name="H8-MHA", head_dim=8, n_heads=4, n_kv_heads=4, kv_layers=(0, 1))
QUALITY = QualitySpec(corpus_bytes=20_000, seq_len=16, batch_size=2, steps=4, warmup_steps=1, eval_tokens=128)
TINY_SCENARIO = """
name = "tiny-quality"
[model]
d_model = 32
n_layers = 2
d_ff = 48
vocab_size = 256
dtype = "float32"
[[variant]]
name = "H8-MHA"
[[variant]]
name = "H8-MQA"
[sweep]
batch_size = [1]
context_len = [16]
[quality]
corpus_bytes = 20000
seq_len = 16
batch_size = 2
steps = 4
warmup_steps = 1
seeds = [0, 1]
eval_tokens = 128
convert_from = "H8-MHA"
convert_to = ["H8-MQA", "H8-MHA-CLA2"]
"""


def trained_state(seed: int) -> tuple[dict[str, torch.Tensor], list[tuple[int, float]], float]:
    corpus = load_corpus(QUALITY, Path("."), "test")
    decoder = build_decoder(BYTES_MODEL, MHA, dtype="float32", device="cpu", backend="sdpa", seed=seed)
    log = train(decoder, corpus, QUALITY.model_copy(update={"log_every": 1}), seed, QUALITY.steps, 1)
    return decoder.state_dict(), log.train_loss, validation_loss(decoder, corpus, QUALITY)[0]


def test_a_training_run_is_the_same_bit_for_bit_for_a_seed_and_differs_for_another():
    state, curve, loss = trained_state(3)
    again_state, again_curve, again_loss = trained_state(3)
    assert curve == again_curve and loss == again_loss
    assert all(torch.equal(state[name], again_state[name]) for name in state)
    _, other_curve, _ = trained_state(4)
    assert other_curve != curve


def test_the_corpus_keeps_its_last_bytes_for_validation_and_windows_stay_inside_each_split():
    corpus = load_corpus(QUALITY, Path("."), "test")
    data = pydoc_topics_bytes()[:20_000]
    assert corpus.validation.numel() == 2_000 and corpus.n_bytes == 20_000
    assert bytes(corpus.validation.tolist()) == data[-2_000:]
    batch = training_batch(corpus.train, 3, 16, torch.Generator().manual_seed(0))
    assert batch.shape == (3, 17) and batch.dtype == torch.int64
    windows = validation_windows(corpus.validation, 16, 128)
    assert windows.shape == (8, 17)  # 128 predicted bytes
    assert torch.equal(windows[1, 0], corpus.validation[16].long())  # consecutive windows share one byte


def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_its_floor():
    rates = [learning_rate(step, 11, 2, 1.0, 0.1) for step in range(11)]
    assert rates[:2] == [0.5, 1.0]
    assert rates[2] == 1.0 and math.isclose(rates[-1], 0.1)
    assert math.isclose(rates[6], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert rates[2:] == sorted(rates[2:], reverse=True)


def test_uptraining_takes_the_stated_fraction_of_the_original_steps_rounded_up():
    assert [uptrain_steps(0.05, steps) for steps in (150, 200, 12, 1)] == [8, 10, 1, 1]


def test_converting_to_mqa_cla_averages_the_kv_heads_of_the_producers_and_drops_the_consumers():
    mha = build_decoder(BYTES_MODEL, MHA, dtype="float32", device="cpu", seed=1)
    target = Variant(name="H8-MQA-CLA2", head_dim=8, n_heads=4, n_kv_heads=1, kv_layers=sharing_map(2, 2))
    converted = convert(mha, target)
    state, source = converted.state_dict(), mha.state_dict()
    for proj in ("wk", "wv"):
        expected = source[f"layers.0.attention.{proj}.weight"].view(4, 8, 32).mean(dim=0)  # [head_dim, d_model]
        torch.testing.assert_close(state[f"layers.0.attention.{proj}.weight"], expected, atol=1e-7, rtol=0)
        assert f"layers.1.attention.{proj}.weight" not in state
    assert converted.variant == target


def test_a_checkpoint_comes_back_with_its_shape_steps_and_weights(tmp_path: Path):
    decoder = build_decoder(BYTES_MODEL, MHA, dtype="float32", device="cpu", seed=2)
    save_checkpoint(decoder, 40, tmp_path / "mha.pt")
    checkpoint = load_checkpoint(tmp_path / "mha.pt")
    assert (checkpoint.model, checkpoint.variant, checkpoint.trained_steps) == (BYTES_MODEL, MHA, 40)
    restored = restore(checkpoint, "float32", "cpu", "mha.pt")
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in decoder.state_dict().items())


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    assert main(["convert", str(path), "--to", "H8-MQA"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnbench convert: error: {path}: not a readable checkpoint") and err.count("\n") == 1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quality.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("old", "new", "field", "reason"),
    [
        ("seeds = [0, 1]", "seeds = [0, 0]", "quality", "quality.seeds repeats a value: [0, 0]"),
        ('convert_from = "H8-MHA"', 'convert_from = "H8-GQA"', "quality.convert_from", "not a variant of this"),
        ('"H8-MHA-CLA2"]', '"H16-MQA"]', "quality.convert_to[1]", "head_dim and n_heads must stay 8 and 4"),
        ("vocab_size = 256", "vocab_size = 97", "model.vocab_size", "needs at least 256 tokens, got 97"),
        ("steps = 4", "steps = 4\ncolour = 1", "quality.colour", "unknown key"),
        ("warmup_steps = 1", "warmup_steps = 4", "quality", "warmup_steps (4) must be fewer than steps (4)"),
    ],
)
def test_a_bad_quality_table_is_named_by_file_and_field(tmp_path: Path, old: str, new: str, field: str, reason: str):
    assert old in TINY_SCENARIO
    path = write(tmp_path, TINY_SCENARIO.replace(old, new))
    with pytest.raises(UserError) as caught:
        load_scenario(path)
    assert caught.value.source == str(path) and caught.value.field == field and reason in caught.value.reason


def test_a_missing_corpus_file_fails_the_train_command_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, TINY_SCENARIO.replace("corpus_bytes = 20000", 'corpus_file = "absent.txt"'))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"attnbench train: error: {path}: quality.corpus_file: {tmp_path / 'absent.txt'}: no such file\n")


def test_train_writes_every_seeds_numbers_conversions_and_a_report_beside_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "results"
    assert main(["train", str(write(tmp_path, TINY_SCENARIO)), "--out", str(out), "--quiet"]) == 0
    (path,) = out.glob("*/quality_*.json")
    result = load_quality(path)
    assert [(v.variant, [r.seed for r in v.runs]) for v in result.variants] == [("H8-MHA", [0, 1]), ("H8-MQA", [0, 1])]
    run = result.variants[0].runs[0]
    assert run.tokens_seen == 4 * 2 * 16 and run.validation_tokens == 128
    assert math.isclose(run.validation_perplexity, math.exp(run.validation_loss))
    assert [(c.target, len(c.runs), c.runs[0].uptrain_steps) for c in result.conversions] == [
        ("H8-MQA", 2, 1),
        ("H8-MHA-CLA2", 2, 1),
    ]
    assert result.finished_utc is not None and result.corpus.validation_bytes == 2_000
    report = (path.parent / "QUALITY-tiny-quality.md").read_text()
    assert "toy scale: d_model 32, 2 layers, 128 training bytes per run, 2 seeds" in report
    assert (path.parent / "tiny-quality-quality-pareto.png").read_bytes().startswith(b"\x89PNG")
    assert result_files(out) == []  # decode reports never mistake it for a run
    assert json.loads(path.read_text())["variants"][1]["runs"][1]["seed"] == 1
