"""Scenario files: paper names, sharing maps, and every rejection as one line with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.scenario import expand_cells, load_scenario
from harness.variants import Variant, parse_paper_name, sharing_map

SCENARIOS = sorted(Path(__file__).resolve().parent.parent.joinpath("scenarios").rglob("*.toml"))

BASE = """
name = "t"
[model]
d_model = 256
n_layers = 4
d_ff = 512
vocab_size = 100
dtype = "float32"
[sweep]
batch_size = [1, 2]
context_len = [16]
[measure]
memory_budget = "1GiB"
"""


def write(tmp_path: Path, variants: str, base: str = BASE) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(base + variants)
    return path


def variants_of(tmp_path: Path, variants: str) -> tuple[Variant, ...]:
    return load_scenario(write(tmp_path, variants)).variants


@pytest.mark.parametrize(
    ("name", "head_dim", "attention", "n_kv_heads", "sharing"),
    [
        ("H128-MHA", 128, "mha", None, 1),
        ("H128-GQA4", 128, "gqa", 4, 1),
        ("H64-MQA", 64, "mqa", 1, 1),
        ("H128-MQA-CLA2", 128, "mqa", 1, 2),
        ("H256-GQA4-CLA2", 256, "gqa", 4, 2),
        ("H64-MHA-CLA3", 64, "mha", None, 3),
    ],
)
def test_paper_names_parse_into_their_parts(name: str, head_dim: int, attention: str, n_kv_heads: int, sharing: int):
    parsed = parse_paper_name(name)
    assert parsed is not None
    assert (parsed.head_dim, parsed.attention, parsed.n_kv_heads, parsed.kv_sharing) == (
        head_dim,
        attention,
        n_kv_heads,
        sharing,
    )


@pytest.mark.parametrize("name", ["MHA", "H128-MHA-CLA", "h128-mha", "H128-GQA", "H128-XQA", "H128-MHA-CLA2-x"])
def test_non_paper_names_do_not_parse(name: str):
    assert parse_paper_name(name) is None


def test_sharing_factor_gives_ceil_layers_over_s_producers_with_a_short_last_group():
    assert sharing_map(5, 2) == (0, 0, 2, 2, 4)
    assert sharing_map(4, 3) == (0, 0, 0, 3)
    assert sharing_map(3, 1) == (0, 1, 2)


def test_paper_name_alone_fully_specifies_a_variant(tmp_path: Path):
    (v,) = variants_of(tmp_path, '[[variant]]\nname = "H64-GQA2-CLA2"\n')
    assert (v.head_dim, v.n_heads, v.n_kv_heads, v.kv_layers) == (64, 4, 2, (0, 0, 2, 2))
    assert v.n_kv_layers == 2


def test_explicit_fields_beside_a_paper_name_override_it(tmp_path: Path):
    (v,) = variants_of(tmp_path, '[[variant]]\nname = "H46-MQA"\nn_heads = 5\n')
    assert (v.head_dim, v.n_heads, v.n_kv_heads) == (46, 5, 1)


def test_a_variant_with_an_attention_field_is_specified_by_its_fields(tmp_path: Path):
    text = '[[variant]]\nname = "mine"\nattention = "gqa"\nhead_dim = 32\nn_kv_heads = 2\nkv_layers = [0, 0, 2, 3]\n'
    (v,) = variants_of(tmp_path, text)
    assert (v.head_dim, v.n_heads, v.n_kv_heads, v.kv_layers, v.producers) == (32, 8, 2, (0, 0, 2, 3), (0, 2, 3))


def test_mqa_field_implies_one_kv_head_and_mha_all_heads(tmp_path: Path):
    text = (
        '[[variant]]\nname = "a"\nattention = "mqa"\nhead_dim = 64\n'
        '[[variant]]\nname = "b"\nattention = "mha"\nhead_dim = 64\nkv_sharing = 2\n'
    )
    a, b = variants_of(tmp_path, text)
    assert (a.n_kv_heads, b.n_kv_heads, b.kv_layers) == (1, 4, (0, 0, 2, 2))


def test_query_width_need_not_equal_d_model(tmp_path: Path):
    (v,) = variants_of(tmp_path, '[[variant]]\nname = "H96-MQA"\nn_heads = 3\n')
    assert v.n_heads * v.head_dim == 288


def test_cells_cross_every_variant_with_every_sweep_value(tmp_path: Path):
    loaded = load_scenario(write(tmp_path, '[[variant]]\nname = "H64-MHA"\n[[variant]]\nname = "H64-MQA"\n'))
    cells = expand_cells(loaded.scenario, loaded.variants)
    assert len(cells) == 2 * 2 * 1
    assert {c.dtype for c in cells} == {"float32"}
    assert len({c.key for c in cells}) == len(cells)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path: Path):
    loaded = load_scenario(path)
    assert loaded.variants and expand_cells(loaded.scenario, loaded.variants)


# Each rejected input: (variant block or whole file, dotted field expected in the message, reason fragment)
REJECTIONS = [
    ('[[variant]]\nname = "H64-GQA3"\n', "variant[0].n_kv_heads", "not divisible"),
    (
        '[[variant]]\nname = "x"\nattention = "gqa"\nhead_dim = 64\nn_kv_heads = 8\n',
        "variant[0].n_kv_heads",
        "more KV heads",
    ),
    ('[[variant]]\nname = "MyVariant"\n', "variant[0].name", "not a CLA-paper name"),
    ('[[variant]]\nname = "H64-MHA"\nkv_sharing = 0\n', "variant[0].kv_sharing", "greater than 0"),
    ('[[variant]]\nname = "H64-MHA"\nkv_sharing = 5\n', "variant[0].kv_sharing", "larger than model.n_layers"),
    ('[[variant]]\nname = "H64-MHA-CLA9"\n', "variant[0].name", "larger than model.n_layers"),
    (
        '[[variant]]\nname = "x"\nattention = "mha"\nhead_dim = 64\nkv_layers = [0, 2, 2, 3]\n',
        "variant[0].kv_layers[1]",
        "later layer",
    ),
    (
        '[[variant]]\nname = "x"\nattention = "mha"\nhead_dim = 64\nkv_layers = [0, 0, 1, 3]\n',
        "variant[0].kv_layers[2]",
        "itself a consumer",
    ),
    (
        '[[variant]]\nname = "x"\nattention = "mha"\nhead_dim = 64\nkv_layers = [0, 0]\n',
        "variant[0].kv_layers",
        "has 2 entries",
    ),
    ('[[variant]]\nname = "H64-MHA"\n[[variant]]\nname = "H64-MHA"\n', "variant[1].name", "duplicate variant name"),
    ('[[variant]]\nname = "H64-MHA"\nheads = 4\n', "variant[0].heads", "unknown key"),
    ('[[variant]]\nname = "H64-MHA"\nhead_dim = -64\n', "variant[0].head_dim", "greater than 0"),
    ('[[variant]]\nname = "H' + "9" * 5000 + '-MHA"\n', "variant[0].name", "not a CLA-paper name"),
]


@pytest.mark.parametrize(("variants", "field", "reason"), REJECTIONS, ids=[r[2] for r in REJECTIONS])
def test_bad_variants_are_rejected_with_file_field_and_reason(tmp_path: Path, variants: str, field: str, reason: str):
    path = write(tmp_path, variants)
    with pytest.raises(UserError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: ")
    assert reason in message
    assert "\n" not in message


FILE_REJECTIONS = [
    (BASE.replace("d_model = 256", "d_model = 0"), "model.d_model", "greater than 0"),
    (BASE.replace("batch_size = [1, 2]", "batch_size = []"), "sweep.batch_size", "at least 1"),
    (BASE.replace("context_len = [16]", "context_len = []"), "sweep.context_len", "at least 1"),
    (BASE.replace('"1GiB"', '"lots"'), "measure.memory_budget", "cannot parse size"),
    (BASE.replace('"1GiB"', '"3 parsecs"'), "measure.memory_budget", "unknown size unit"),
    (BASE.replace('dtype = "float32"', 'dtype = "float8"'), "model.dtype", "Input should be"),
    (BASE.replace('name = "t"', 'name = "t"\ncolour = 1'), "colour", "unknown key"),
    (BASE.replace("[sweep]", "[sweep\n"), None, "TOML syntax error"),
    (BASE.replace("[sweep]", "[sweep]\ntp = [2, 2]"), "sweep", "sweep.tp repeats a value: [2, 2]"),
    (BASE.replace("[sweep]", "[sweep]\ntp = [0]"), "sweep.tp[0]", "greater than 0"),
    (BASE.replace('"1GiB"', '"1GiB"\nmetrics = ["train"]'), "measure.metrics[0]", "'train_step'"),
    (BASE, "variant", "required field is missing"),
    (BASE.replace("n_layers = 4", "n_layers = 1000000000000"), "model.n_layers", "less than or equal to 65536"),
    (BASE.replace("d_model = 256", f"d_model = {2**63}"), "model.d_model", "less than or equal to 9223372036854775807"),
    (BASE.replace('"1GiB"', "1" + "0" * 400), "measure.memory_budget", "larger than 9223372036854775807 bytes"),
    (BASE.replace('"1GiB"', '"' + "9" * 400 + 'GiB"'), "measure.memory_budget", "larger than"),
    (BASE.replace('"1GiB"', "1.5"), "measure.memory_budget", "expected a size such as '40GiB'"),
    (BASE.replace("[measure]", "[measure]\nwarmup_s = inf"), "measure.warmup_s", "finite number"),
    (BASE.replace("[model]", "[model]\nrope_theta = nan"), "model.rope_theta", "finite number"),
    (BASE.replace("[measure]", "[measure]\nrounds = 10000000000"), "measure.rounds", "less than or equal to"),
    (
        BASE.replace("[measure]", "[measure]\nwarmup_s = 1.0\nwarmup_max_s = 0.5"),
        "measure",
        "warmup_max_s (0.5) is below",
    ),
    (
        BASE.replace("[measure]", "[measure]\nmin_time_s = 1.0\nmax_time_s = 0.5"),
        "measure",
        "max_time_s (0.5) is below",
    ),
    (BASE.replace("[measure]", "[measure]\ntarget_ci = 1.5"), "measure.target_ci", "less than 1"),
    (BASE.replace("[measure]", "[measure]\nthreads = 0"), "measure.threads", "greater than or equal to 1"),
]


@pytest.mark.parametrize(("text", "field", "reason"), FILE_REJECTIONS, ids=[r[2] for r in FILE_REJECTIONS])
def test_bad_files_are_rejected_with_field_and_reason(tmp_path: Path, text: str, field: str | None, reason: str):
    path = tmp_path / "s.toml"
    path.write_text(text + ('[[variant]]\nname = "H64-MHA"\n' if field != "variant" else ""))
    with pytest.raises(UserError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field + ': ' if field else ''}")
    assert reason in message


def test_every_format_problem_of_a_file_is_reported_on_its_own_line(tmp_path: Path):
    text = BASE.replace("d_model = 256", "d_model = 0").replace("batch_size = [1, 2]", 'batch_size = ["one"]')
    path = write(tmp_path, '[[variant]]\nname = "H64-MHA"\nheads = 4\n', base=text)
    with pytest.raises(UserError) as info:
        load_scenario(path)
    assert [line.split(": ")[1] for line in str(info.value).splitlines()] == [
        "model.d_model",
        "variant[0].heads",
        "sweep.batch_size[0]",
    ]


def test_every_variant_problem_of_a_file_is_reported_on_its_own_line(tmp_path: Path):
    path = write(tmp_path, '[[variant]]\nname = "H64-GQA3"\n[[variant]]\nname = "H64-MHA"\n[[variant]]\nname = "x"\n')
    with pytest.raises(UserError) as info:
        load_scenario(path)
    assert [line.split(": ")[1] for line in str(info.value).splitlines()] == [
        "variant[0].n_kv_heads",
        "variant[2].name",
    ]


def test_tables_nested_too_deeply_to_read_are_refused_in_one_line(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        load_scenario(path)


def test_an_integer_of_thousands_of_digits_is_refused_in_one_line(tmp_path: Path):
    path = write(tmp_path, "", base=BASE.replace("d_model = 256", "d_model = " + "9" * 5000))
    with pytest.raises(UserError, match="cannot read: Exceeds the limit"):
        load_scenario(path)


def test_a_missing_file_is_named_in_the_error(tmp_path: Path):
    with pytest.raises(UserError, match=r"nope\.toml: no such file"):
        load_scenario(tmp_path / "nope.toml")


def test_an_unreadable_file_is_named_in_the_error(tmp_path: Path):
    with pytest.raises(UserError, match="is a directory"):
        load_scenario(tmp_path)


def test_validate_prints_one_line_and_exits_2_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, '[[variant]]\nname = "H64-GQA3"\n')
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path}: variant[0].n_kv_heads: n_heads (4) is not divisible by n_kv_heads (3)" in err


def test_the_console_script_shows_no_traceback_for_a_bad_file(tmp_path: Path):
    path = write(tmp_path, '[[variant]]\nname = "H64-MHA"\nkv_sharing = 9\n')
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("variant[0].kv_sharing: sharing factor 9 is larger than model.n_layers (4)")


def test_schema_prints_the_json_schema_of_the_format(capsys: pytest.CaptureFixture[str]):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["required"]) >= {"name", "model", "variant", "sweep"}
    assert schema["$defs"]["VariantSpec"]["additionalProperties"] is False


def test_a_closed_pipe_ends_the_command_quietly():
    script = "import sys; sys.stdin.close()"
    big = str(SCENARIOS[0].parent / "cla-1b.toml")  # the reader has exited long before this is printed
    plan = subprocess.Popen(
        [sys.executable, "-m", "harness", "plan", "--json", big],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = subprocess.run([sys.executable, "-c", script], stdin=plan.stdout, check=False)
    assert plan.stdout is not None
    plan.stdout.close()
    _, err = plan.communicate()
    assert reader.returncode == 0
    assert "Traceback" not in err


def test_the_warm_up_and_window_caps_are_never_below_the_minimums_they_cap():
    from harness.scenario.schema import DEFAULT_MAX_TIME_S, DEFAULT_WARMUP_MAX_S, MeasureSpec

    assert MeasureSpec().warmup_cap_s == DEFAULT_WARMUP_MAX_S
    assert MeasureSpec(warmup_s=DEFAULT_WARMUP_MAX_S + 1).warmup_cap_s == DEFAULT_WARMUP_MAX_S + 1
    assert MeasureSpec(min_time_s=DEFAULT_MAX_TIME_S + 1).time_cap_s == DEFAULT_MAX_TIME_S + 1
    assert MeasureSpec(min_time_s=0.1, max_time_s=0.2).time_cap_s == 0.2
