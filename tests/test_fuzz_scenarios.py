"""Property-based tests of scenario files: valid, near-valid and garbage TOML through every command
that reads one (validate, plan). Each keeps the contract of helpers_fuzz: exit 0 or 2, one line per
problem on stderr, no traceback; a valid scenario always passes. Examples are seeded (see conftest).
Besides the random examples, every field of a full scenario gets every edge value once."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from helpers_fuzz import (
    EDGE_VALUES,
    HOSTILE_VALUES,
    assert_contract,
    attnbench,
    delete_at,
    field_paths,
    paths,
    replace_at,
    toml_document,
)
from hypothesis import given
from hypothesis import strategies as st

from harness.scenario.schema import MAX_SIZE
from harness.variants import sharing_map

DTYPES = ["float32", "bfloat16", "float16"]
BACKENDS = ["eager", "sdpa", "grouped", "native", "flex", "auto"]
NAMES = st.text(min_size=1, max_size=30)


@st.composite
def variants(draw: st.DrawFn, head_dim: int, n_heads: int, n_layers: int) -> dict[str, Any]:
    """One valid variant: a CLA-paper name, or fields with an explicit KV map."""
    groups = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    sharing = draw(st.integers(1, n_layers))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["MHA", "MQA", *(f"GQA{g}" for g in groups)]))
        return {"name": f"H{head_dim}-{kind}" + (f"-CLA{sharing}" if sharing > 1 else "")}
    return {
        "name": draw(NAMES),
        "attention": "gqa",
        "head_dim": head_dim,
        "n_kv_heads": draw(st.sampled_from(groups)),
        "kv_layers": list(sharing_map(n_layers, sharing)),
    }


@st.composite
def valid_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    head_dim = draw(st.sampled_from([8, 16, 64, 128, 256]))
    n_heads = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 64]))
    n_layers = draw(st.integers(1, 200))
    model: dict[str, Any] = {
        "d_model": head_dim * n_heads,
        "n_layers": n_layers,
        "d_ff": draw(st.integers(1, MAX_SIZE)),
        "vocab_size": draw(st.integers(1, MAX_SIZE)),
        "dtype": draw(st.sampled_from(DTYPES)),
    }
    if draw(st.booleans()):
        model["rope_theta"] = draw(st.floats(1e-3, 1e12))
    drawn = draw(st.lists(variants(head_dim, n_heads, n_layers), min_size=1, max_size=4))
    unique = list({v["name"]: v for v in drawn}.values())
    sweep: dict[str, Any] = {
        "batch_size": draw(st.lists(st.integers(1, MAX_SIZE), min_size=1, max_size=3, unique=True)),
        "context_len": draw(st.lists(st.integers(1, MAX_SIZE), min_size=1, max_size=3, unique=True)),
        "backend": draw(st.lists(st.sampled_from(BACKENDS), min_size=1, max_size=3, unique=True)),
    }
    if draw(st.booleans()):
        sweep["dtype"] = draw(st.lists(st.sampled_from(DTYPES), min_size=1, unique=True))
    measure: dict[str, Any] = {}
    if draw(st.booleans()):
        amount = draw(st.integers(1, 2**20))
        measure["memory_budget"] = draw(st.sampled_from([f"{amount}MiB", f"{amount}GB", amount]))
    if draw(st.booleans()):
        low = draw(st.integers(5, 10_000))
        measure |= {"min_samples": low, "max_samples": draw(st.integers(low, 10**6)), "rounds": draw(st.integers(1, 9))}
    if draw(st.booleans()):
        measure |= {"warmup_s": draw(st.floats(1e-6, 1e4)), "min_time_s": draw(st.floats(1e-6, 1e4))}
    doc: dict[str, Any] = {"name": draw(NAMES), "description": draw(st.text(max_size=40))}
    return doc | {"model": model, "variant": unique, "sweep": sweep} | ({"measure": measure} if measure else {})


def _no_none(value: Any) -> Any:
    """TOML has no null: write it as the string "null" (still the wrong type for any field)."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return [_no_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _no_none(v) for k, v in value.items()}
    return value


@st.composite
def near_valid_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A valid scenario with one to three fields deleted, retyped or added."""
    doc = draw(valid_scenarios())
    for _ in range(draw(st.integers(1, 3))):
        where = paths(doc)
        if not where:
            break
        path = draw(st.sampled_from(field_paths(doc)))
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if action == "delete":
            delete_at(doc, path)
        elif action == "replace":
            replace_at(doc, path, _no_none(draw(HOSTILE_VALUES)))
        else:
            tables = [p for p in [(), *where] if isinstance(_at(doc, p), dict)]
            table = _at(doc, draw(st.sampled_from(tables)))
            table[draw(st.text(min_size=1, max_size=10))] = _no_none(draw(HOSTILE_VALUES))
    return doc


def _at(doc: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


TOML_PIECES = st.sampled_from(
    [
        *("[", "]", "[[variant]]", "[model]", "[sweep]", "name", " = ", '"x"', "'", '"""', "{", "}", ",", ".", "="),
        *("#", "\n", "1", "-1", "inf", "nan", "1e999", "9" * 5000, "true", "d_model = 64", "\\u0000"),
    ]
)
GARBAGE = st.one_of(
    st.text(max_size=200),
    st.lists(TOML_PIECES, max_size=40).map("".join),
    st.binary(max_size=200),
)


def check_scenario(content: str | bytes, *, valid: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        allowed = (0,) if valid else (0, 2)
        for argv in (["validate", str(path)], ["plan", str(path)], ["plan", "--json", str(path)]):
            outcome = attnbench(argv)
            assert_contract(outcome, argv[0], allowed)
            if outcome.code == 2:
                assert all(f": error: {path}" in line for line in outcome.stderr.splitlines())
            if argv[1] == "--json" and outcome.code == 0:
                assert json.loads(outcome.stdout)["cells"]


@given(valid_scenarios())
def test_a_valid_scenario_passes_validate_and_plan(doc: dict[str, Any]) -> None:
    check_scenario(toml_document(doc), valid=True)


@given(near_valid_scenarios())
def test_a_near_valid_scenario_is_accepted_or_refused_one_line_per_problem(doc: dict[str, Any]) -> None:
    check_scenario(toml_document(doc))


@given(GARBAGE)
def test_garbage_instead_of_a_scenario_is_refused_one_line_per_problem(content: str | bytes) -> None:
    check_scenario(content)


# Every field a scenario can have, each set once.
FULL = {
    "name": "full",
    "description": "every field",
    "model": {
        "d_model": 256,
        "n_layers": 4,
        "d_ff": 512,
        "vocab_size": 1000,
        "dtype": "float32",
        "norm_eps": 1e-5,
        "rope_theta": 10000.0,
    },
    "variant": [
        {"name": "H64-GQA2-CLA2"},
        {
            "name": "custom",
            "attention": "gqa",
            "head_dim": 64,
            "n_heads": 4,
            "n_kv_heads": 2,
            "kv_layers": [0, 0, 2, 3],
        },
        {"name": "shared", "attention": "mqa", "head_dim": 32, "kv_sharing": 2},
    ],
    "sweep": {"batch_size": [1, 8], "context_len": [16, 4096], "backend": ["sdpa", "auto"], "dtype": ["float16"]},
    "measure": {
        "memory_budget": "1GiB",
        "metrics": ["decode", "attention", "memory", "max_batch"],
        "warmup_s": 0.5,
        "min_time_s": 1.0,
        "min_samples": 15,
        "max_samples": 200,
        "cold": True,
        "rounds": 2,
        "seed": 7,
    },
}


def test_the_full_scenario_is_valid(tmp_path: Path) -> None:
    check_scenario(toml_document(FULL), valid=True)


def test_every_field_set_to_every_edge_value_or_deleted_keeps_the_contract(tmp_path: Path) -> None:
    files = []
    for index, path in enumerate(field_paths(FULL)):
        for variant, value in enumerate([*EDGE_VALUES, "<delete>"]):
            doc = copy.deepcopy(FULL)
            if value == "<delete>":
                delete_at(doc, path)
            else:
                replace_at(doc, path, _no_none(value))
            file = tmp_path / f"{index}-{variant}.toml"
            file.write_text(toml_document(doc), encoding="utf-8")
            files.append(file)
    outcome = attnbench(["validate", *map(str, files)])
    assert_contract(outcome, "validate", (2,))
    refused = {line.split(": ")[2] for line in outcome.stderr.splitlines()}
    accepted = {line.split(": ")[0] for line in outcome.stdout.splitlines()}
    assert refused | accepted == {str(f) for f in files}
    assert not refused & accepted
    for file in sorted(accepted):
        assert_contract(attnbench(["plan", file]), "plan", (0,))
