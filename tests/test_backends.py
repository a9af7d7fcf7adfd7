"""The backend registry: one spec per backend, read by the schema, the reasons, auto and the dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import backends
from harness.backend_support import paged_backends, ragged_backends, unsupported_reason
from harness.backends.spec import BackendSpec, resolve, split_path
from harness.errors import UserError
from harness.scenario import load_scenario
from harness.variants import Variant, sharing_map

SCENARIO = """
name = "t"
[model]
d_model = 256
n_layers = 4
d_ff = 512
vocab_size = 100
[[variant]]
name = "H64-MHA"
[sweep]
batch_size = [1]
context_len = [16]
backend = [{backends}]
"""


def scenario(tmp_path: Path, backends_toml: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.format(backends=backends_toml))
    return path


def test_the_registry_lists_the_built_ins_in_their_order() -> None:
    assert backends.names()[:6] == ("eager", "sdpa", "grouped", "native", "flex", "naive")


def test_every_built_in_kernel_resolves_to_a_callable() -> None:
    for spec in backends.registry().specs:
        assert callable(resolve(spec.kernel)), spec.name
        if spec.paged_kernel is not None:
            assert callable(resolve(spec.paged_kernel)), spec.name


def test_a_scenario_naming_an_unknown_backend_is_refused_with_file_field_and_reason(tmp_path: Path) -> None:
    path = scenario(tmp_path, '"sdpa", "flashy"')
    with pytest.raises(UserError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: sweep.backend[1]: unknown attention backend 'flashy'; expected one of eager")
    assert "\n" not in message


def test_a_scenario_kernel_path_must_name_a_module_on_the_path(tmp_path: Path) -> None:
    path = scenario(tmp_path, '"no_such_module_anywhere:attend"')
    with pytest.raises(UserError, match=r"sweep.backend\[0\]: backend 'no_such_module_anywhere:attend': no module"):
        load_scenario(path)


def test_a_scenario_may_name_a_kernel_by_import_path(tmp_path: Path) -> None:
    loaded = load_scenario(scenario(tmp_path, '"harness.model.attention:eager_kernel", "auto"'))
    assert loaded.scenario.sweep.backend == ["harness.model.attention:eager_kernel", "auto"]


def test_split_path_accepts_module_function_only() -> None:
    assert split_path("pkg.mod:fn") == ("pkg.mod", "fn")
    assert split_path("pkg.mod") is None
    assert split_path("pkg mod:fn") is None
    assert split_path(":fn") is None


def test_the_reasons_name_the_backends_the_registry_says_read_pages_and_ragged_batches() -> None:
    assert paged_backends() == ("eager", "native", "naive", "flashmla")
    assert ragged_backends() == ("eager", "native")


def test_a_declared_capability_a_plugin_lacks_is_an_unsupported_reason() -> None:
    spec = BackendSpec(name="mha-only", kernel="m:f", heads=("mha",), cla=False, dtypes=("float16",))
    registry = backends.Registry((*backends.registry().specs, spec), ())
    gqa_cla = Variant("H64-GQA2-CLA2", 64, 4, 2, sharing_map(4, 2))
    mha = Variant("H64-MHA", 64, 4, 4, sharing_map(4, 1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backends, "registry", lambda: registry)
        assert unsupported_reason("mha-only", gqa_cla) == "attention backend 'mha-only' runs MHA only, not GQA"
        cla = Variant("H64-MHA-CLA2", 64, 4, 4, sharing_map(4, 2))
        assert "cross-layer sharing map" in str(unsupported_reason("mha-only", cla))
        assert unsupported_reason("mha-only", mha, dtype="float32") == (
            "attention backend 'mha-only' takes float16, not float32"
        )
        assert unsupported_reason("mha-only", mha, dtype="float16") is None


def test_reading_the_registry_imports_no_torch() -> None:
    code = (
        "import sys; from harness import backends; from harness.backend_support import unsupported_reason; "
        "backends.names(); [s.missing() for s in backends.registry().specs]; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_kernel_docs_backends_md_shows_computes_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from harness.model.attention import attend

    doc = (Path(__file__).resolve().parent.parent / "docs" / "backends.md").read_text()
    source = doc.split("# mykernels/kernel.py: imported by the measuring worker only\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc_kernel.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from doc_kernel import attend as documented  # type: ignore[import-not-found]

    generator = torch.Generator().manual_seed(0)
    for n_new in (1, 3):
        q = torch.randn(2, 4, n_new, 16, generator=generator)
        k, v = torch.randn(2, 2, 40, 16, generator=generator), torch.randn(2, 2, 40, 16, generator=generator)
        got = documented(q, k[:, :, : 30 + n_new], v[:, :, : 30 + n_new], start_pos=30, scale=0.25)
        torch.testing.assert_close(got, attend(q, k, v, start_pos=30, backend="eager", scale=0.25))
