"""Models from a Hugging Face config.json: exact shapes and KV bytes, named omissions, one-line errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from harness import accounting
from harness.cli import main
from harness.errors import UserError
from harness.scenario import load_scenario
from harness.scenario.hf_config import ImportedModel, import_config, load_config
from harness.scenario.load import resolve_variant
from harness.scenario.schema import ModelSpec, VariantSpec
from harness.variants import Variant

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "data" / "hf_configs"
PRESETS = ROOT / "scenarios" / "models"

# file -> (spelling, KV bytes per token in bfloat16, (context, KV bytes per sequence) at a long context)
PUBLISHED = {
    "llama-3.1-8b": ("H128-GQA8", 32 * 2 * 8 * 128 * 2, None),
    "llama-3.1-70b": ("H128-GQA8", 80 * 2 * 8 * 128 * 2, None),
    "mistral-7b-v0.1": ("H128-GQA8-SWA4096", 131_072, (32768, 131_072 * 4096)),
    "qwen2.5-7b": ("H128-GQA4", 28 * 2 * 4 * 128 * 2, None),
    "gemma-2-9b": ("H256-GQA8-SWA4096-1:1", 42 * 2 * 8 * 256 * 2, (8191, 21 * 8192 * 4096 + 21 * 8192 * 8192)),
    "deepseek-v2-lite": ("MLA512-R64", 31_104, None),  # 27 · (512 + 64) · 2 (arXiv 2405.04434)
    "deepseek-v3": ("MLA512-R64-Q1536", 70_272, None),  # 61 · (512 + 64) · 2
}


def imported_variant(name: str) -> tuple[ImportedModel, ModelSpec, Variant]:
    imported = load_config(CONFIGS / f"{name}.json")
    model = ModelSpec(**imported.model)
    return imported, model, resolve_variant(VariantSpec(**imported.variant), model)


@pytest.mark.parametrize("name", PUBLISHED)
def test_an_imported_config_gives_the_published_kv_bytes_per_token_exactly(name: str):
    spelling, per_token, long_context = PUBLISHED[name]
    _, _, variant = imported_variant(name)
    assert variant.describe() == spelling
    assert accounting.kv_bytes_per_token(variant, "bfloat16") == per_token
    if long_context is not None:
        context, per_sequence = long_context
        assert accounting.kv_bytes_per_sequence(variant, "bfloat16", context) == per_sequence


@pytest.mark.parametrize(("name", "params"), [("llama-3.1-8b", 8_030_261_248), ("llama-3.1-70b", 70_553_706_496)])
def test_a_dense_model_imports_with_its_published_parameter_count(name: str, params: int):
    _, model, variant = imported_variant(name)
    assert accounting.param_counts(model, variant).total == params


def test_the_deepseek_v2_lite_shape_reads_every_attention_field():
    imported, model, variant = imported_variant("deepseek-v2-lite")
    assert imported.model == {
        "d_model": 2048,
        "n_layers": 27,
        "d_ff": 10944,
        "vocab_size": 102400,
        "dtype": "bfloat16",
        "norm_eps": 1e-6,
        "rope_theta": 10000.0,
    }
    assert variant.mla is not None
    assert (variant.n_heads, variant.mla.q_lora_rank, variant.mla.v_head_dim, variant.head_dim) == (16, None, 128, 192)
    # the parameter count covers a dense SwiGLU of intermediate_size in every layer, as the warning says
    assert accounting.param_counts(model, variant).mlp == 27 * 3 * 2048 * 10944


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("deepseek-v3", {"n_routed_experts", "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"}),
        ("deepseek-v3", {"rope_scaling", "quantization_config", "moe_intermediate_size", "num_experts_per_tok"}),
        ("gemma-2-9b", {"attn_logit_softcapping", "final_logit_softcapping", "tie_word_embeddings", "hidden_act"}),
        ("llama-3.1-8b", {"rope_scaling"}),
        ("qwen2.5-7b", {"model_type"}),
    ],
)
def test_what_the_decoder_leaves_out_is_named_one_field_per_warning_line(name: str, fields: set[str]):
    imported = load_config(CONFIGS / f"{name}.json")
    named = [warning.split(":", 1)[0] for warning in imported.warnings]
    assert fields <= set(named)
    assert len(named) == len(set(named)) and all("\n" not in w for w in imported.warnings)


def test_a_config_with_nothing_left_out_warns_about_nothing():
    assert load_config(CONFIGS / "mistral-7b-v0.1.json").warnings == ()


@pytest.mark.parametrize(
    ("config", "windows"),
    [
        ({"model_type": "gemma3_text", "sliding_window": 512, "sliding_window_pattern": 3}, [512, 512, None] * 2),
        ({"model_type": "gemma2", "sliding_window": 64}, [64, None] * 3),
        ({"model_type": "mistral", "sliding_window": None}, [None] * 6),
        (
            {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 4},
            [None] * 4 + [32] * 2,
        ),
        ({"model_type": "qwen2", "use_sliding_window": False, "sliding_window": 32}, [None] * 6),
        (
            {"model_type": "llama", "sliding_window": 99, "layer_types": ["full_attention", "sliding_attention"] * 3},
            [None, 99] * 3,
        ),
    ],
)
def test_windows_come_from_layer_types_or_the_architectures_pattern(
    config: dict[str, object], windows: list[int | None]
):
    shape = {"hidden_size": 256, "num_hidden_layers": 6, "intermediate_size": 512, "vocab_size": 100}
    imported = import_config({**shape, "num_attention_heads": 4, "head_dim": 64, **config})
    variant = resolve_variant(VariantSpec(**imported.variant), ModelSpec(**imported.model))
    assert list(variant.windows) == windows


def test_a_multimodal_gemma3_file_reads_its_text_config_and_names_every_default_it_takes():
    data = {
        "model_type": "gemma3",
        "torch_dtype": "bfloat16",
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_hidden_layers": 34,
            "sliding_window": 1024,
        },
    }
    imported = import_config(data)
    variant = resolve_variant(VariantSpec(**imported.variant), ModelSpec(**imported.model))
    assert (variant.n_heads, variant.n_kv_heads, variant.head_dim) == (8, 4, 256)
    assert variant.windows[:6] == (1024,) * 5 + (None,)
    defaulted = {w.split(":", 1)[0] for w in imported.warnings if "absent; using" in w}
    assert {"text_config.num_attention_heads", "text_config.num_key_value_heads", "text_config.vocab_size"} <= defaulted


BAD_CONFIGS = [
    ("{not json", None, "not JSON"),
    ("[1, 2]", None, "not a JSON object but a JSON list"),
    ('{"model_type": "gpt2", "n_embd": 768}', "model_type", "unknown architecture 'gpt2'"),
    ('{"hidden_size": 768}', "model_type", "cannot tell the architecture"),
    ('{"model_type": "llama", "num_hidden_layers": 2}', "hidden_size", "required for llama but absent"),
    (
        '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 8, "vocab_size": 9, '
        '"num_attention_heads": 4, "num_key_value_heads": 3}',
        "num_key_value_heads",
        "not a multiple",
    ),
    (
        '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": "two", "intermediate_size": 8}',
        "num_hidden_layers",
        "expected a positive integer, got 'two'",
    ),
]


@pytest.mark.parametrize(("text", "field", "reason"), BAD_CONFIGS, ids=[r[2] for r in BAD_CONFIGS])
def test_a_bad_config_is_one_line_naming_file_field_and_reason(
    tmp_path: Path, text: str, field: str | None, reason: str
):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field + ': ' if field else ''}") and reason in message
    assert "\n" not in message


def test_import_config_exits_2_with_one_line_for_an_unknown_architecture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "bert"}')
    assert main(["import-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: model_type: unknown architecture 'bert'" in err


@pytest.mark.parametrize("name", PUBLISHED)
def test_import_config_prints_a_scenario_that_validates_to_the_same_model_and_variant(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
):
    assert main(["import-config", str(CONFIGS / f"{name}.json")]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "imported.toml"
    path.write_text(text)
    loaded = load_scenario(path)
    imported, model, variant = imported_variant(name)
    assert loaded.scenario.model == model
    assert loaded.variants == (variant,)
    assert tomllib.loads(text)["name"] == name
    assert all(f"#   {warning}" in text for warning in imported.warnings)


def test_a_scenario_takes_its_model_from_a_config_and_overrides_it(tmp_path: Path):
    path = tmp_path / "from.toml"
    path.write_text(
        f'name = "x"\n[model]\nfrom = "{CONFIGS / "gemma-2-9b.json"}"\nn_layers = 4\n'
        '[[variant]]\nname = "gemma"\nfrom_model = true\n'
        '[[variant]]\nname = "all windowed"\nfrom_model = true\nwindow_pattern = "all"\nwindow = 1024\n'
        '[[variant]]\nname = "H256-MQA"\n'
        "[sweep]\nbatch_size = [1]\ncontext_len = [16]\n"
    )
    loaded = load_scenario(path)
    assert (loaded.scenario.model.d_model, loaded.scenario.model.n_layers) == (3584, 4)
    own, windowed, mqa = loaded.variants
    assert (own.name, own.n_heads, own.head_dim, own.windows) == ("gemma", 16, 256, (4096, None, 4096, None))
    assert windowed.windows == (1024,) * 4
    assert (mqa.n_heads, mqa.n_kv_heads) == (14, 1)
    assert any(w.startswith(f"{CONFIGS / 'gemma-2-9b.json'}: attn_logit_softcapping:") for w in loaded.warnings)


def test_a_scenario_with_only_a_model_source_measures_the_models_own_attention(tmp_path: Path):
    (tmp_path / "config.json").write_text((CONFIGS / "deepseek-v2-lite.json").read_text())
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\n[model]\nfrom = "config.json"\n[sweep]\nbatch_size = [1]\ncontext_len = [16]\n')
    (variant,) = load_scenario(path).variants
    assert variant.name == "MLA512-R64" and accounting.kv_bytes_per_token(variant, "bfloat16") == 31_104


@pytest.mark.parametrize(
    ("model", "variant", "field", "reason"),
    [
        ('from = "missing.json"', "", "model.from", "missing.json: no such file"),
        ('from = "bad.json"', "", "model.from", "bad.json: not JSON"),
        ('from = "gpt2.json"', "", "model.from", "gpt2.json: model_type: unknown architecture 'gpt2'"),
        (
            "d_model = 64\nn_layers = 2\nd_ff = 8\nvocab_size = 9",
            'from_model = true\nname = "x"',
            "variant[0].from_model",
            "needs [model] from",
        ),
    ],
)
def test_a_bad_model_source_is_one_line_naming_the_scenario_and_the_field(
    tmp_path: Path, model: str, variant: str, field: str, reason: str
):
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "gpt2.json").write_text(json.dumps({"model_type": "gpt2"}))
    path = tmp_path / "s.toml"
    blocks = f"[[variant]]\n{variant}\n" if variant else ""
    path.write_text(f'name = "x"\n[model]\n{model}\n{blocks}[sweep]\nbatch_size = [1]\ncontext_len = [16]\n')
    with pytest.raises(UserError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: ") and reason in message
    assert "\n" not in message


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_preset_scenario_holds_the_numbers_of_its_published_config(name: str):
    loaded = load_scenario(PRESETS / f"{name}.toml")
    _, model, variant = imported_variant(name)
    assert loaded.scenario.model == model
    own = loaded.variants[0]
    assert own.describe() == variant.describe()
    assert (own.n_heads, own.n_kv_heads, own.head_dim, own.windows, own.mla) == (
        variant.n_heads,
        variant.n_kv_heads,
        variant.head_dim,
        variant.windows,
        variant.mla,
    )


def test_the_json_schema_lets_a_model_come_from_a_config_instead_of_its_fields(capsys: pytest.CaptureFixture[str]):
    assert main(["schema"]) == 0
    model = json.loads(capsys.readouterr().out)["$defs"]["ModelSpec"]
    assert model["properties"]["from"]["type"] == "string"
    assert {"required": ["from"]} in model["anyOf"]
    assert {"d_model", "n_layers"} <= set(model["anyOf"][0]["required"])
