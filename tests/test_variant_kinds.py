"""Scenario fields of the cache-saving kinds: names, sliding windows, MLA and 8-bit caches."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import UserError
from harness.scenario import load_scenario
from harness.variants import MLAShape, Variant, parse_paper_name, window_layers

BASE = """
name = "t"
[model]
d_model = 512
n_layers = 4
d_ff = 512
vocab_size = 100
dtype = "float32"
[sweep]
batch_size = [1]
context_len = [16]
"""


def load_variants(tmp_path: Path, variants: str, base: str = BASE) -> tuple[Variant, ...]:
    path = tmp_path / "s.toml"
    path.write_text(base + variants)
    return load_scenario(path).variants


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("H128-GQA8-SWA4096", {"head_dim": 128, "n_kv_heads": 8, "window": 4096, "window_pattern": None}),
        ("H256-GQA8-SWA4096-1:1", {"window": 4096, "window_pattern": (1, 1)}),
        ("H128-MQA-CLA2-SWA512-5:1", {"kv_sharing": 2, "window": 512, "window_pattern": (5, 1)}),
        ("H128-GQA8-KV8", {"kv_dtype": "float8_e4m3fn", "window": None}),
        ("H64-MHA-KV8E5", {"kv_dtype": "float8_e5m2"}),
        ("MLA512-R64", {"attention": "mla", "kv_lora_rank": 512, "qk_rope_head_dim": 64, "q_lora_rank": None}),
        ("MLA512-R64-Q1536-CLA2-KV8", {"q_lora_rank": 1536, "kv_sharing": 2, "kv_dtype": "float8_e4m3fn"}),
    ],
)
def test_extended_names_parse_into_their_parts(name: str, expected: dict[str, object]):
    parsed = parse_paper_name(name)
    assert parsed is not None
    assert {key: getattr(parsed, key) for key in expected} == expected


@pytest.mark.parametrize("name", ["H128-GQA8-SWA", "H128-GQA8-KV4", "MLA512", "MLA512-R64-KV8-SWA4", "H128-SWA8"])
def test_names_outside_the_grammar_do_not_parse(name: str):
    assert parse_paper_name(name) is None


def test_window_patterns_put_the_local_layers_first_in_each_period():
    assert window_layers(4, 8) == (8, 8, 8, 8)
    assert window_layers(4, 8, (1, 1)) == (8, None, 8, None)
    assert window_layers(12, 4, (5, 1)) == (4, 4, 4, 4, 4, None) * 2


@pytest.mark.parametrize(
    "name", ["H128-GQA2-SWA64", "H128-MHA-SWA64-1:1", "H64-MQA-CLA2-KV8", "MLA256-R32", "MLA256-R32-Q64-CLA2-KV8E5"]
)
def test_a_name_in_the_grammar_is_its_own_spelling(tmp_path: Path, name: str):
    (variant,) = load_variants(tmp_path, f'[[variant]]\nname = "{name}"\n')
    assert variant.describe() == name


def test_a_windowed_name_gives_every_layer_its_window(tmp_path: Path):
    every, alternating = load_variants(
        tmp_path, '[[variant]]\nname = "H128-GQA2-SWA64"\n[[variant]]\nname = "H128-GQA2-SWA64-1:1"\n'
    )
    assert every.windows == (64, 64, 64, 64)
    assert alternating.windows == (64, None, 64, None)


def test_a_per_layer_window_list_takes_global_for_a_full_attention_layer(tmp_path: Path):
    text = '[[variant]]\nname = "mixed"\nattention = "gqa"\nhead_dim = 128\nn_kv_heads = 2\n'
    text += 'layer_windows = [32, "global", 16, "global"]\n'
    (variant,) = load_variants(tmp_path, text)
    assert variant.windows == (32, None, 16, None)
    assert variant.describe() == "H128-GQA2-SWA[32, global, 16, global]"


def test_window_fields_beside_a_name_override_the_name(tmp_path: Path):
    text = '[[variant]]\nname = "H128-GQA2-SWA64"\nwindow = 32\nwindow_pattern = "1:1"\n'
    (variant,) = load_variants(tmp_path, text)
    assert variant.windows == (32, None, 32, None)


def test_an_mla_name_takes_deepseek_v2_head_widths_and_heads_from_d_model(tmp_path: Path):
    (variant,) = load_variants(tmp_path, '[[variant]]\nname = "MLA512-R64"\n')
    assert variant.mla == MLAShape(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128)
    assert (variant.n_heads, variant.n_kv_heads, variant.head_dim) == (4, 1, 192)
    assert variant.cache_width == 576


def test_an_mla_variant_by_fields_keeps_its_own_widths(tmp_path: Path):
    text = '[[variant]]\nname = "small latent"\nattention = "mla"\nkv_lora_rank = 64\nqk_rope_head_dim = 16\n'
    text += "qk_nope_head_dim = 32\nv_head_dim = 48\nn_heads = 6\nq_lora_rank = 96\n"
    (variant,) = load_variants(tmp_path, text)
    assert variant.mla == MLAShape(64, 16, 32, 48, 96)
    assert (variant.n_heads, variant.head_dim, variant.score_width, variant.value_width) == (6, 48, 80, 64)


def test_an_8bit_cache_keeps_a_scale_per_tensor_or_per_kv_head(tmp_path: Path):
    text = '[[variant]]\nname = "H128-GQA2-KV8"\n[[variant]]\nname = "per head"\nattention = "gqa"\n'
    text += 'head_dim = 128\nn_kv_heads = 2\nkv_dtype = "float8_e5m2"\nkv_scale = "head"\n'
    per_tensor, per_head = load_variants(tmp_path, text)
    assert (per_tensor.kv_dtype, per_tensor.kv_scale, per_tensor.scales_per_producer) == ("float8_e4m3fn", "tensor", 2)
    assert (per_head.kv_dtype, per_head.kv_scale, per_head.scales_per_producer) == ("float8_e5m2", "head", 4)


def test_variants_cross_the_process_boundary_unchanged(tmp_path: Path):
    text = '[[variant]]\nname = "MLA256-R32-Q64-SWA8-1:1-KV8"\n[[variant]]\nname = "MLA256-R32-CLA2"\n'
    text += '[[variant]]\nname = "per head"\nattention = "gqa"\nhead_dim = 128\nn_kv_heads = 2\n'
    text += 'kv_dtype = "float8_e5m2"\nkv_scale = "head"\n'
    for variant in load_variants(tmp_path, text):
        assert Variant.from_payload(variant.to_payload()) == variant


# (variant block, dotted field in the message, reason fragment)
REJECTIONS = [
    ('[[variant]]\nname = "H128-GQA2"\nwindow = 0\n', "variant[0].window", "positive number of positions"),
    ('[[variant]]\nname = "H128-GQA2"\nwindow = -4096\n', "variant[0].window", "positive number of positions"),
    ('[[variant]]\nname = "H128-GQA2-SWA0"\n', "variant[0].name", "positive number of positions"),
    ('[[variant]]\nname = "H128-GQA2"\nwindow_pattern = "1:1"\n', "variant[0].window_pattern", "needs window"),
    ('[[variant]]\nname = "H128-GQA2-SWA8"\nwindow_pattern = "0:1"\n', "variant[0].window_pattern", "at least one"),
    ('[[variant]]\nname = "H128-GQA2-SWA8"\nwindow_pattern = "5"\n', "variant[0].window_pattern", "match pattern"),
    (
        '[[variant]]\nname = "H128-GQA2"\nlayer_windows = [8, 8]\n',
        "variant[0].layer_windows",
        "has 2 entries; model.n_layers is 4",
    ),
    ('[[variant]]\nname = "H128-GQA2"\nlayer_windows = [8, 0, 8, 8]\n', "variant[0].layer_windows[1]", "positive"),
    (
        '[[variant]]\nname = "H128-GQA2-CLA2-SWA8-1:1"\n',
        "variant[0].name",
        "a consumer must have its producer's window",
    ),
    (
        '[[variant]]\nname = "H128-GQA2"\nkv_layers = [0, 0, 2, 2]\nlayer_windows = [8, "global", 8, 8]\n',
        "variant[0].layer_windows[1]",
        "a consumer must have its producer's window",
    ),
    (
        '[[variant]]\nname = "latent"\nattention = "mla"\nqk_rope_head_dim = 64\n',
        "variant[0].kv_lora_rank",
        "needs kv_lora_rank",
    ),
    ('[[variant]]\nname = "H128-GQA2"\nkv_lora_rank = 512\n', "variant[0].kv_lora_rank", "only for attention 'mla'"),
    ('[[variant]]\nname = "MLA512-R64"\nn_kv_heads = 2\n', "variant[0].n_kv_heads", "no n_kv_heads"),
    ('[[variant]]\nname = "MLA512-R64"\nhead_dim = 128\n', "variant[0].head_dim", "no head_dim"),
    ('[[variant]]\nname = "MLA512-R63"\n', "variant[0].name", "must be even"),
    ('[[variant]]\nname = "H128-GQA2"\nkv_scale = "head"\n', "variant[0].kv_scale", "set kv_dtype"),
    ('[[variant]]\nname = "H128-GQA2"\nkv_dtype = "int8"\n', "variant[0].kv_dtype", "Input should be"),
]


@pytest.mark.parametrize(("variants", "field", "reason"), REJECTIONS, ids=[r[0].split("\n")[1] for r in REJECTIONS])
def test_bad_kind_fields_are_rejected_with_file_field_and_reason(
    tmp_path: Path, variants: str, field: str, reason: str
):
    path = tmp_path / "s.toml"
    path.write_text(BASE + variants)
    with pytest.raises(UserError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert reason in message
    assert "\n" not in message
