"""Accounting of the cache-saving kinds, worked out by hand: MLA, windows, 8-bit caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import accounting as acc
from harness.cli import main
from harness.scenario.schema import ModelSpec
from harness.units import parse_bytes
from harness.variants import MLAShape, Variant, sharing_map, window_layers

TINY = ModelSpec(d_model=8, n_layers=2, d_ff=16, vocab_size=10, dtype="float32")


def mla(n_layers: int, n_heads: int, rank: int = 512, rope: int = 64, q_lora: int | None = None, s: int = 1) -> Variant:
    shape = MLAShape(kv_lora_rank=rank, qk_rope_head_dim=rope, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=q_lora)
    return Variant("mla", 128 + rope, n_heads, 1, sharing_map(n_layers, s), mla=shape)


def gqa(n_layers: int, windows: tuple[int | None, ...] = (), kv_dtype: str | None = None, scale: str = "tensor"):
    return Variant("gqa", 128, 32, 8, sharing_map(n_layers, 1), windows, kv_dtype, scale)


def test_mla_caches_the_latent_and_the_rotary_key_once_per_token_per_layer():
    # DeepSeek-V2-Lite: 27 layers x (512 + 64) x 2 bytes (arXiv 2405.04434, table 1)
    assert acc.kv_bytes_per_token(mla(27, 16), "bfloat16") == 31_104
    # DeepSeek-V3: 61 layers x 576 x 2 bytes
    assert acc.kv_bytes_per_token(mla(61, 128, q_lora=1536), "bfloat16") == 70_272


def test_mla_with_cla2_caches_half_the_layers_latents():
    assert acc.kv_bytes_per_token(mla(4, 16, s=2), "bfloat16") == 2 * 576 * 2


def test_mla_parameters_count_every_projection_and_the_latent_norms():
    model = ModelSpec(d_model=64, n_layers=2, d_ff=32, vocab_size=10)
    shape = MLAShape(kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6, q_lora_rank=12)
    variant = Variant("m", 12, 3, 1, (0, 0), mla=shape)  # layer 1 reads layer 0's latent
    params = acc.param_counts(model, variant)
    per_layer = 64 * 12 + 12 * 3 * 12 + 16 * 3 * (8 + 6) + 3 * 6 * 64  # W^DQ, W^UQ+W^QR, W^UK+W^UV, W^O
    assert params.kv_projection == 64 * (16 + 4)  # one producer: W^DKV and W^KR
    assert params.attention == 2 * per_layer + 64 * 20
    assert params.norms == 5 * 64 + 2 * 12 + 1 * 16  # c^Q norm per layer, c^KV norm per producer


def test_a_windowed_layer_holds_at_most_its_window():
    assert acc.held_len(4096, 100) == 101
    assert acc.held_len(4096, 4095) == 4096
    assert acc.held_len(4096, 32768) == 4096
    assert acc.held_len(None, 32768) == 32769


def test_sliding_window_cache_bytes_stop_growing_at_the_window():
    swa = gqa(32, window_layers(32, 4096))
    per_position = 32 * 2 * 8 * 128 * 2  # every layer K and V, 8 heads of 128, bfloat16
    assert acc.kv_bytes_per_token(swa, "bfloat16") == per_position
    assert acc.kv_bytes_per_sequence(swa, "bfloat16", 1000) == per_position * 1001
    assert acc.kv_bytes_per_sequence(swa, "bfloat16", 32768) == per_position * 4096
    assert acc.kv_cache_bytes(swa, "bfloat16", 3, 32768) == 3 * per_position * 4096


def test_local_global_layers_hold_window_and_context_positions_each():
    mixed = gqa(4, window_layers(4, 64, (1, 1)))  # local, global, local, global
    per_layer_position = 2 * 8 * 128 * 4
    assert acc.kv_bytes_per_sequence(mixed, "float32", 999) == per_layer_position * (64 + 1000 + 64 + 1000)


def test_traffic_and_flops_of_a_windowed_step_read_only_the_held_positions():
    full, windowed = gqa(2), gqa(2, (16, 16))
    context = 1000
    read_full = acc.attention_bytes_per_step(full, "float32", 1, context)
    read_windowed = acc.attention_bytes_per_step(windowed, "float32", 1, context)
    q_and_out = 2 * 32 * 2 * 128 * 4
    assert read_full - q_and_out == 2 * 1001 * 2 * 8 * 128 * 4
    assert read_windowed - q_and_out == 2 * 16 * 2 * 8 * 128 * 4
    assert acc.flops_per_step(TINY.model_copy(update={"d_model": 4096}), full, 1, context) - acc.flops_per_step(
        TINY.model_copy(update={"d_model": 4096}), windowed, 1, context
    ) == 2 * 4 * 32 * 128 * (1001 - 16)


def test_an_8bit_cache_counts_one_byte_per_element_plus_its_scales():
    per_tensor = gqa(4, kv_dtype="float8_e4m3fn")
    per_head = gqa(4, kv_dtype="float8_e5m2", scale="head")
    assert acc.kv_bytes_per_token(per_tensor, "bfloat16") == 4 * 2 * 8 * 128
    assert acc.kv_scale_bytes(per_tensor) == 4 * 2 * 4  # a float32 for K and one for V per producer
    assert acc.kv_scale_bytes(per_head) == 4 * 2 * 8 * 4  # one per KV head
    assert acc.kv_cache_bytes(per_head, "bfloat16", 2, 99) == 2 * 100 * 4 * 2 * 8 * 128 + 4 * 2 * 8 * 4


def test_an_8bit_mla_latent_keeps_one_scale_per_producer():
    variant = Variant("m", 192, 16, 1, sharing_map(27, 1), kv_dtype="float8_e4m3fn", mla=mla(27, 16).mla)
    assert acc.kv_bytes_per_token(variant, "bfloat16") == 27 * 576
    assert acc.kv_scale_bytes(variant) == 27 * 4


def test_mla_flops_count_the_absorbed_form_over_the_latent():
    variant = mla(1, 16)
    model = ModelSpec(d_model=2048, n_layers=1, d_ff=16, vocab_size=10)
    params = acc.param_counts(model, variant)
    attention = 2 * 16 * (576 + 512) * 101  # q·[c; k^R] and p·c per head per position
    assert acc.flops_per_step(model, variant, 1, 100) == 2 * params.matmul + attention


def test_predicted_max_batch_of_a_windowed_variant_divides_by_its_held_positions():
    model = ModelSpec(d_model=4096, n_layers=32, d_ff=14336, vocab_size=32000, dtype="bfloat16")
    swa = gqa(32, window_layers(32, 4096))
    budget = parse_bytes("80GiB")
    per_sequence = 32 * 2 * 8 * 128 * 2 * 4096 + acc.activation_bytes_per_sequence(model, swa, "bfloat16", 32768)
    expected = (budget - acc.weight_bytes(model, swa, "bfloat16")) // per_sequence
    assert acc.predicted_max_batch(model, swa, "bfloat16", 32768, budget) == expected
    assert expected > 8 * acc.predicted_max_batch(model, gqa(32), "bfloat16", 32768, budget)


def test_cache_scales_come_off_the_budget_before_the_sequences():
    fp8 = gqa(2, kv_dtype="float8_e4m3fn", scale="head")
    budget = (
        acc.weight_bytes(TINY, fp8, "float32")
        + acc.kv_scale_bytes(fp8)
        + acc.bytes_per_sequence(TINY, fp8, "float32", 10)
    )
    assert acc.predicted_max_batch(TINY, fp8, "float32", 10, budget) == 1
    assert acc.predicted_max_batch(TINY, fp8, "float32", 10, budget - 1) == 0


PLAN_SCENARIO = """
name = "kinds"
[model]
d_model = 4096
n_layers = 4
d_ff = 14336
vocab_size = 32000
dtype = "bfloat16"
[[variant]]
name = "H128-GQA8-SWA4096"
[[variant]]
name = "H128-GQA8-SWA4096-1:1"
[[variant]]
name = "MLA512-R64"
[[variant]]
name = "H128-GQA8-KV8"
[sweep]
batch_size = [1]
context_len = [1024, 16384]
backend = ["sdpa"]
"""


def test_plan_shows_kv_bytes_per_token_and_per_sequence_at_each_context_for_every_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "kinds.toml"
    path.write_text(PLAN_SCENARIO)
    assert main(["plan", str(path), "--json"]) == 0
    variants = {v["name"]: v for v in json.loads(capsys.readouterr().out)["variants"]}
    per_layer = 2 * 8 * 128 * 2
    swa = variants["H128-GQA8-SWA4096"]["kv_at_context"]
    assert [c["kv_bytes_per_sequence"] for c in swa] == [4 * per_layer * 1025, 4 * per_layer * 4096]
    assert swa[1]["kv_bytes_per_token"] == 4 * per_layer * 4096 / 16385
    mixed = variants["H128-GQA8-SWA4096-1:1"]["kv_at_context"][1]
    assert mixed["kv_bytes_per_sequence"] == 2 * per_layer * (4096 + 16385)
    assert variants["MLA512-R64"]["kv_bytes_per_token"] == 4 * 576 * 2
    assert variants["H128-GQA8-KV8"]["kv_bytes_per_token"] == 4 * per_layer // 2
    assert variants["H128-GQA8-KV8"]["kv_scale_bytes"] == 4 * 2 * 4
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ctx 16384" in out and "4096 on 2/4 layers" in out and "float8_e4m3fn (tensor scale)" in out
    assert "H128-GQA8-KV8 with backend sdpa: not run (attention backend 'sdpa' cannot read a float8 KV cache" in out
