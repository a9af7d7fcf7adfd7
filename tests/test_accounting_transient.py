"""The attention transient each backend declares (harness/backends/spec.py) and what the max-batch accounting
makes of it: exact arithmetic per kind, and the per-sequence slope of real CPU probes against the prediction."""

from __future__ import annotations

import dataclasses

import pytest

from harness import accounting as acc
from harness import backends
from harness.backend_support import kernel_memory
from harness.backends.builtin import native_unavailable
from harness.backends.spec import BackendSpec, KernelMemory, Transient
from harness.lengths import LengthMix, iter_lengths
from harness.measure.protocol import CellRequest, Entry
from harness.run.maxbatch import RESIDENT_SET_NOISE_BYTES
from harness.run.worker import IsolatedRunner
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map

TINY = ModelSpec(d_model=8, n_layers=2, d_ff=16, vocab_size=10, dtype="float32")
GQA = Variant("gqa", 16, 8, 2, sharing_map(2, 1))  # 8 query heads over 2 KV heads of 16
POSITIONS = 101  # a decode step at context 100 attends 101 positions
SCORES = 8 * 1 * POSITIONS * 4  # float32, per query head and position


def memory(decode: str | None, multi_token: str | None = None, paged_in_place: bool = False) -> KernelMemory:
    return KernelMemory(Transient(decode=decode, multi_token=multi_token), paged_in_place)


def test_an_undeclared_kernel_is_charged_one_float32_scores_tensor_as_before():
    assert acc.attention_transient_bytes(GQA, "float32", POSITIONS, 1, None) == SCORES
    assert acc.attention_transient_bytes(GQA, "float32", POSITIONS, 1, memory(None)) == SCORES


def test_a_streaming_kernel_holds_nothing_that_grows_with_the_positions():
    assert acc.attention_transient_bytes(GQA, "float32", POSITIONS, 1, memory("streaming")) == 0


def test_a_scores_kernel_holds_float32_scores_and_probabilities():
    assert acc.attention_transient_bytes(GQA, "bfloat16", POSITIONS, 1, memory("scores")) == 2 * SCORES


def test_an_expanded_kernel_adds_k_and_v_repeated_to_every_query_head_in_the_weights_dtype():
    expanded = 8 * POSITIONS * (16 + 16) * 2  # 8 heads, K and V of 16, bfloat16
    assert acc.attention_transient_bytes(GQA, "bfloat16", POSITIONS, 1, memory("expanded")) == 2 * SCORES + expanded


def test_an_expanded_mla_kernel_repeats_the_latent_as_keys_and_its_first_columns_as_values():
    shape = MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    mla = Variant("mla", 24, 4, 1, sharing_map(2, 1), mla=shape)
    scores = 4 * POSITIONS * 4
    expanded = 4 * POSITIONS * (40 + 32) * 4
    assert acc.attention_transient_bytes(mla, "float32", POSITIONS, 1, memory("expanded")) == 2 * scores + expanded


def test_the_multi_token_form_is_charged_for_every_new_query():
    kernel = memory("streaming", "scores")
    assert acc.attention_transient_bytes(GQA, "float32", POSITIONS, 4, kernel) == 2 * 4 * SCORES


def test_a_paged_cell_without_a_paged_kernel_adds_a_gathered_copy_of_one_layers_positions():
    paged = dataclasses.replace(GQA, page_size=16)
    gathered = POSITIONS * 2 * (16 + 16) * 4  # 2 KV heads, K and V, float32
    assert acc.attention_transient_bytes(paged, "float32", POSITIONS, 1, memory("streaming")) == gathered
    in_place = memory("streaming", paged_in_place=True)
    assert acc.attention_transient_bytes(paged, "float32", POSITIONS, 1, in_place) == 0


def test_a_paged_multi_token_step_is_gathered_and_a_scores_kernel_copies_its_strided_values_once_more():
    paged = dataclasses.replace(GQA, page_size=16)
    kernel = memory("streaming", "scores", paged_in_place=True)
    gathered, copy = POSITIONS * 2 * 32 * 4, POSITIONS * 2 * 16 * 4
    assert acc.attention_transient_bytes(paged, "float32", POSITIONS, 2, kernel) == 2 * 2 * SCORES + gathered + copy
    mqa = dataclasses.replace(paged, n_kv_heads=1)  # one KV head: the gathered copy batches as it is
    assert acc.attention_transient_bytes(mqa, "float32", POSITIONS, 2, kernel) == 2 * 2 * SCORES + gathered // 2


def test_an_unknown_transient_kind_is_refused_with_the_field():
    with pytest.raises(ValueError, match=r"transient\.decode 'tiled' is not one of streaming, scores, expanded"):
        Transient(decode="tiled")


def test_kernel_memory_takes_the_devices_declaration_then_any_devices():
    eager, native, sdpa = backends.get("eager"), backends.get("native"), backends.get("sdpa")
    assert eager.kernel_memory("cuda").transient == Transient("expanded", "expanded")
    assert native.kernel_memory("cpu") == KernelMemory(Transient("streaming", "scores"), paged_in_place=True)
    assert sdpa.kernel_memory("cpu").transient == Transient(decode="streaming")
    assert sdpa.kernel_memory("cuda").transient is None  # PyTorch's choice there depends on dtype and heads
    assert BackendSpec(name="plugin", kernel="m:f").kernel_memory("cpu") == KernelMemory(None, False)


def test_kernel_memory_of_auto_is_unknown_and_a_one_device_backend_needs_no_device():
    assert kernel_memory("auto", "cpu") is None
    assert kernel_memory("native", None) == backends.get("native").kernel_memory("cpu")
    assert kernel_memory("eager", None) == backends.get("eager").kernel_memory(None)


def test_every_builtin_but_naive_and_every_adapter_declares_its_decode_transient_where_it_runs():
    for spec in backends.registry().specs:
        if spec.origin not in ("built-in", "adapter") or spec.name == "naive":
            continue
        for device in spec.devices or ("cpu",):
            declared = spec.kernel_memory(device).transient
            assert declared is not None and declared.decode is not None, (spec.name, device)


def test_predicted_max_batch_divides_by_the_declared_per_sequence_bytes():
    model = ModelSpec(d_model=128, n_layers=2, d_ff=64, vocab_size=32, dtype="float32")
    variant = Variant("gqa", 16, 8, 2, sharing_map(2, 1))
    expanded, streaming = memory("expanded"), memory("streaming")
    per_expanded = acc.bytes_per_sequence(model, variant, "float32", 1000, expanded)
    per_streaming = acc.bytes_per_sequence(model, variant, "float32", 1000, streaming)
    budget = acc.weight_bytes(model, variant, "float32") + 10 * per_expanded
    assert acc.predicted_max_batch(model, variant, "float32", 1000, budget, kernel=expanded) == 10
    assert acc.predicted_max_batch(model, variant, "float32", 1000, budget, kernel=streaming) == (
        10 * per_expanded // per_streaming
    )


def test_the_marginal_bytes_of_a_paged_long_tail_batch_are_those_of_the_sequences_near_the_batch():
    model = ModelSpec(d_model=128, n_layers=2, d_ff=64, vocab_size=32, dtype="float32")
    variant = Variant("gqa", 16, 8, 2, sharing_map(2, 1), page_size=16, lengths=LengthMix("long-tail"))
    kernel = memory("streaming", paged_in_place=True)
    lengths = [n for _, n in zip(range(112), iter_lengths(variant.lengths, 2000), strict=False)]  # an endless stream
    activations = acc.activation_bytes_per_sequence(model, variant, "float32", 2000, kernel)
    near = [acc._paged_sequence_bytes(variant, "float32", n, 2000) + activations for n in lengths[88:112]]  # 100 ± 12
    marginal = acc.marginal_bytes_per_sequence(model, variant, "float32", 2000, 100, kernel)
    assert marginal == sum(near) // len(near)
    assert marginal < acc.bytes_per_sequence(model, variant, "float32", 2000, kernel) / 2  # the longest's is far more


# A CPU probe (harness/measure/cell_worker.py:probe_batch) at two batch sizes: the slope of the resident-set peak
# against the accounting's per-sequence bytes for the backend that ran. The shape makes one sequence 9-26 MiB
# and the probes 6 sequences apart, so the resident set's run-to-run movement (RESIDENT_SET_NOISE_BYTES at each
# end) is at most 0.33 MiB a sequence; the tolerance is that plus 3% for the small tensors the accounting rounds
# away (norm outputs, allocator slack). For eager, the undeclared (conservative) prediction lies outside it.
PROBE_MODEL = ModelSpec(d_model=1024, n_layers=2, d_ff=256, vocab_size=256, dtype="float32")
PROBE_VARIANT = Variant("H64-GQA4", 64, 16, 4, sharing_map(2, 1))
PROBE_CONTEXT, PROBE_BATCHES = 2048, (1, 7)


def _probe_peaks(runner: IsolatedRunner, variant: Variant, backend: str) -> list[int]:
    peaks = []
    for batch in PROBE_BATCHES:
        request = CellRequest(
            device="cpu", model=PROBE_MODEL, variant=variant, batch_size=batch, context_len=PROBE_CONTEXT,
            dtype="float32", backend=backend, seed=0, budget_bytes=2**40, threads=1,
        )  # fmt: skip
        outcome = runner.call(Entry.PROBE_BATCH, request, timeout_s=300)
        assert outcome.status == "ok" and outcome.value is not None, outcome.error
        peaks.append(int(outcome.value["peak_bytes"]))
    return peaks


@pytest.mark.parametrize("page_size", [None, 16])
@pytest.mark.parametrize("backend", ["eager", "native"])
def test_a_probes_bytes_per_sequence_match_the_backends_declared_transient(backend: str, page_size: int | None):
    if backend == "native" and native_unavailable() is not None:
        pytest.skip(str(native_unavailable()))
    variant = dataclasses.replace(PROBE_VARIANT, page_size=page_size)
    peaks = _probe_peaks(IsolatedRunner(), variant, backend)
    measured = (peaks[1] - peaks[0]) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    kernel = kernel_memory(backend, "cpu")
    predicted = acc.bytes_per_sequence(PROBE_MODEL, variant, "float32", PROBE_CONTEXT, kernel)
    undeclared = acc.bytes_per_sequence(PROBE_MODEL, variant, "float32", PROBE_CONTEXT, None)
    tolerance = 0.03 * predicted + 2 * RESIDENT_SET_NOISE_BYTES / (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    detail = (
        f"measured {measured / 2**20:.2f} MiB, predicted {predicted / 2**20:.2f}, undeclared {undeclared / 2**20:.2f}"
    )
    assert abs(measured - predicted) <= tolerance, detail
    if backend == "eager":  # K/V repeated to 16 heads (and a gathered copy): far beyond one scores tensor
        assert abs(measured - undeclared) > tolerance, detail


def test_the_cost_model_reads_a_cells_bytes_per_sequence_with_the_backend_that_ran(tmp_path):
    from helpers_predict import modelled_run

    from harness.predict.features import observations, variant_of

    run = modelled_run()
    cell = run.cells[0]
    model = ModelSpec.model_validate(run.scenario.model)
    per_sequence = {}
    for backend in ("eager", "native"):
        one = run.model_copy(update={"cells": [cell.model_copy(update={"backend_used": backend})]})
        [seen] = observations(one, tmp_path / "run.json")
        per_sequence[backend] = seen.features.bytes_per_sequence
        kernel = kernel_memory(backend, "cpu")
        assert per_sequence[backend] == acc.bytes_per_sequence(
            model, variant_of(cell), cell.dtype, cell.context_len, kernel
        )
    assert per_sequence["eager"] > per_sequence["native"]
