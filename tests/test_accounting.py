"""Accounting: exact values worked out by hand for small shapes and the CLA paper's 1B model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import accounting as acc
from harness.cli import main
from harness.scenario.schema import ModelSpec
from harness.units import parse_bytes
from harness.variants import Variant, sharing_map

TINY = ModelSpec(d_model=8, n_layers=2, d_ff=16, vocab_size=10, dtype="float32")
DEFAULT_SCENARIO = str(Path(__file__).resolve().parent.parent / "scenarios" / "default.toml")
PAPER_1B = ModelSpec(d_model=2048, n_layers=20, d_ff=5472, vocab_size=50304, dtype="bfloat16")


def variant(head_dim: int, n_heads: int, n_kv_heads: int, n_layers: int, sharing: int = 1) -> Variant:
    return Variant("v", head_dim, n_heads, n_kv_heads, sharing_map(n_layers, sharing))


def test_parameters_of_a_tiny_mha_stack_count_every_matrix():
    params = acc.param_counts(TINY, variant(4, 2, 2, 2))
    # per layer: wq, wk, wv, wo each 8x8 = 256; MLP 3 x 8x16 = 384; norms 2 x 8
    assert params.attention == 2 * 256
    assert params.kv_projection == 2 * 128
    assert params.mlp == 2 * 384
    assert params.norms == 5 * 8
    assert params.embedding == params.lm_head == 80
    assert params.total == 512 + 768 + 40 + 160


def test_cla_consumers_have_no_kv_projection_parameters():
    base = acc.param_counts(TINY, variant(4, 2, 2, 2))
    cla = acc.param_counts(TINY, variant(4, 2, 2, 2, sharing=2))
    assert base.total - cla.total == 128  # layer 1's wk and wv, 8x8 each


def test_kv_bytes_per_token_of_the_paper_1b_variants():
    # 2 (K and V) x producers x kv heads x head dim x 2 bytes (bfloat16)
    assert acc.kv_bytes_per_token(variant(128, 16, 16, 20), "bfloat16") == 2 * 20 * 16 * 128 * 2
    assert acc.kv_bytes_per_token(variant(128, 16, 1, 20), "bfloat16") == 10240
    assert acc.kv_bytes_per_token(variant(128, 16, 1, 20, sharing=2), "bfloat16") == 5120
    assert acc.kv_bytes_per_token(variant(128, 16, 4, 20, sharing=3), "float32") == 2 * 7 * 4 * 128 * 4


def test_kv_cache_holds_the_context_plus_the_decoded_token():
    v = variant(4, 2, 1, 2)
    assert acc.kv_bytes_per_token(v, "float32") == 2 * 2 * 1 * 4 * 4
    assert acc.kv_cache_bytes(v, "float32", batch_size=3, context_len=99) == 64 * 3 * 100


def test_cla2_halves_the_kv_cache_of_its_base():
    base = acc.kv_cache_bytes(variant(128, 16, 1, 20), "bfloat16", 8, 4096)
    cla2 = acc.kv_cache_bytes(variant(128, 16, 1, 20, sharing=2), "bfloat16", 8, 4096)
    assert base == 2 * cla2


def test_bytes_per_step_reads_weights_once_and_the_cache_once_per_layer():
    v = variant(4, 2, 1, 2, sharing=2)  # one producer, two attention layers
    params = acc.param_counts(TINY, v)
    weights = (params.total - params.embedding + 3 * TINY.d_model) * 4  # only 3 embedding rows read
    kv_read = 2 * 3 * 51 * 2 * 1 * 4 * 4  # L layers x batch x cache_len x (K,V) x kv heads x head dim x 4 B
    kv_written = acc.kv_bytes_per_token(v, "float32") * 3
    assert acc.bytes_per_step(TINY, v, "float32", batch_size=3, context_len=50) == weights + kv_read + kv_written


def test_attention_traffic_is_unchanged_by_cla_and_cut_by_mqa():
    mha = acc.attention_bytes_per_step(variant(128, 16, 16, 20), "bfloat16", 4, 1000)
    mha_cla2 = acc.attention_bytes_per_step(variant(128, 16, 16, 20, sharing=2), "bfloat16", 4, 1000)
    mqa = acc.attention_bytes_per_step(variant(128, 16, 1, 20), "bfloat16", 4, 1000)
    assert mha == mha_cla2
    assert mqa < mha / 10


def test_flops_per_step_are_two_per_matmul_parameter_plus_attention():
    v = variant(4, 2, 2, 2)
    params = acc.param_counts(TINY, v)
    assert params.matmul == 512 + 768 + 80
    # attention: 4 x layers x heads x head dim x cache_len
    assert acc.flops_per_step(TINY, v, batch_size=2, context_len=9) == 2 * (2 * 1360 + 4 * 2 * 2 * 4 * 10)


def test_predicted_max_batch_divides_what_the_weights_leave_by_the_per_sequence_bytes():
    v = variant(128, 16, 1, 20, sharing=2)
    budget = parse_bytes("40GiB")
    per_sequence = acc.kv_bytes_per_token(v, "bfloat16") * 2049 + acc.activation_bytes_per_sequence(
        PAPER_1B, v, "bfloat16", 2048
    )
    expected = (budget - acc.weight_bytes(PAPER_1B, v, "bfloat16")) // per_sequence
    assert acc.predicted_max_batch(PAPER_1B, v, "bfloat16", 2048, budget) == expected
    assert 3000 < expected < 4000


def test_predicted_max_batch_on_cuda_leaves_room_for_cublas_workspace():
    v = variant(128, 16, 1, 20, sharing=2)
    budget = parse_bytes("40GiB")
    per_sequence = acc.bytes_per_sequence(PAPER_1B, v, "bfloat16", 2048)
    hopper = {"device": "cuda", "compute_capability": "9.0", "env": {"CUBLAS_WORKSPACE_CONFIG": None}}
    workspace = acc.fixed_workspace_bytes(hopper)
    assert workspace == 32 * 2**20  # PyTorch's default on sm90: 8 chunks of 4096 KiB
    expected = (budget - acc.weight_bytes(PAPER_1B, v, "bfloat16") - workspace) // per_sequence
    assert acc.predicted_max_batch(PAPER_1B, v, "bfloat16", 2048, budget, workspace) == expected


@pytest.mark.parametrize(
    ("environment", "workspace"),
    [
        ({"device": "cpu"}, 0),
        ({"device": "cuda", "compute_capability": "8.0", "env": {}}, 2 * 4096 * 1024 + 8 * 16 * 1024),
        ({"device": "cuda", "compute_capability": "9.0", "env": {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}}, 8 * 16 * 1024),
    ],
)
def test_the_fixed_workspace_follows_the_gpu_and_cublas_workspace_config(
    environment: dict[str, object], workspace: int
):
    assert acc.fixed_workspace_bytes(environment) == workspace


def test_predicted_max_batch_is_zero_when_the_weights_do_not_fit():
    assert acc.predicted_max_batch(PAPER_1B, variant(128, 16, 16, 20), "bfloat16", 2048, parse_bytes("1GiB")) == 0


@pytest.mark.parametrize(
    ("text", "size"),
    [("40GiB", 40 * 2**30), ("512MB", 512 * 10**6), ("1.5 GiB", 3 * 2**29), (1024, 1024), ("7", 7)],
)
def test_sizes_parse_in_binary_and_decimal_units(text: str | int, size: int):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "0", "12 furlongs"])
def test_sizes_that_are_not_positive_sizes_are_rejected(text: str):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_plan_json_lists_variants_and_cells_with_their_accounting(capsys: pytest.CaptureFixture[str]):
    assert main(["plan", DEFAULT_SCENARIO, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    variants = {v["name"]: v for v in plan["variants"]}
    for field in (
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "n_kv_layers",
        "kv_layers",
        "kv_bytes_per_token",
        "params_total",
    ):
        assert field in variants["H64-MHA"]
    assert variants["H64-MHA-CLA2"]["n_kv_layers"] == 4
    assert variants["H64-MHA-CLA2"]["kv_bytes_per_token"] * 2 == variants["H64-MHA"]["kv_bytes_per_token"]
    cell = plan["cells"][0]
    assert {"variant", "batch_size", "context_len", "kv_cache_bytes", "bytes_per_step", "predicted_max_batch"} <= set(
        cell
    )
    assert len(plan["cells"]) == 5 * 2 * 2
    assert cell["kv_cache_bytes"] == variants[cell["variant"]]["kv_bytes_per_token"] * cell["batch_size"] * (
        cell["context_len"] + 1
    )


def test_plan_prints_a_table_per_variant_and_per_cell(capsys: pytest.CaptureFixture[str]):
    assert main(["plan", DEFAULT_SCENARIO]) == 0
    out = capsys.readouterr().out
    assert "H64-MQA-CLA2" in out and "KV B/token" in out and "bytes/step" in out
