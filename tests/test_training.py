"""The training forward pass and the train_step metric: same numbers as inference, K/V activations as accounted."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_requests import cell_request

from harness import accounting
from harness.measure.train_step import measure_train_step
from harness.model import build_decoder
from harness.model.training import causal_forward, next_token_loss, saved_bytes
from harness.run.worker import IsolatedRunner
from harness.scenario.schema import ModelSpec
from harness.variants import MLAShape, Variant, sharing_map

MHA = Variant(name="H16-MHA", head_dim=16, n_heads=4, n_kv_heads=4, kv_layers=(0, 1, 2, 3))
GQA = Variant(name="H16-GQA2", head_dim=16, n_heads=4, n_kv_heads=2, kv_layers=(0, 1, 2, 3))
MQA_CLA2 = Variant(name="H16-MQA-CLA2", head_dim=16, n_heads=4, n_kv_heads=1, kv_layers=sharing_map(4, 2))
MLA = Variant(
    name="MLA32-R8",
    head_dim=24,
    n_heads=4,
    n_kv_heads=1,
    kv_layers=(0, 1, 2, 3),
    mla=MLAShape(kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16),
)


def tokens(batch_size: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, 97, (batch_size, seq_len), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("variant", [MHA, GQA, MQA_CLA2], ids=lambda v: v.name)
def test_the_training_forward_gives_the_logits_of_an_inference_prefill(tiny_model: ModelSpec, variant: Variant):
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", seed=2)
    sequence = tokens(2, 12)
    logits, _ = causal_forward(decoder, sequence)
    assert logits.requires_grad
    torch.testing.assert_close(logits, decoder.prefill(sequence, decoder.allocate_cache(2, 12)), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", [MHA, GQA, MQA_CLA2], ids=lambda v: v.name)
def test_autograd_keeps_exactly_the_producers_kv_that_the_accounting_counts(tiny_model: ModelSpec, variant: Variant):
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu", seed=2)
    with saved_bytes() as saved:
        _, cache = causal_forward(decoder, tokens(3, 10))
    assert saved.of(cache.tensors()) == accounting.train_kv_activation_bytes(variant, "float32", 3, 10)


def test_training_kv_activations_are_producers_times_kv_width_times_tokens():
    # 2 producers · 2 · 1 KV head · 16 wide · 4 bytes · 3 sequences · 10 tokens
    assert accounting.train_kv_activation_bytes(MQA_CLA2, "float32", 3, 10) == 2 * 2 * 16 * 4 * 30
    assert accounting.train_kv_activation_bytes(MQA_CLA2, "bfloat16", 3, 10) == 2 * 2 * 16 * 2 * 30


def test_the_training_loss_gets_a_gradient_in_every_parameter(tiny_model: ModelSpec):
    decoder = build_decoder(tiny_model, MQA_CLA2, dtype="float32", device="cpu", seed=2)
    next_token_loss(decoder, tokens(2, 9)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        (
            dataclasses.replace(MHA, name="H16-MHA-SWA4", layer_windows=(4, 4, 4, 4)),
            "ring buffer holds only its window",
        ),
        (dataclasses.replace(MHA, name="H16-MHA-KV8", kv_dtype="float8_e4m3fn"), "8-bit KV cache is a serving choice"),
        (MLA, "MLA trains from per-head K and V"),
    ],
    ids=["window", "kv8", "mla"],
)
def test_variants_whose_training_kv_differs_from_their_cache_are_refused(
    tiny_model: ModelSpec, variant: Variant, reason: str
):
    decoder = build_decoder(tiny_model, variant, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match=reason):
        causal_forward(decoder, tokens(1, 8))


@pytest.mark.slow
def test_training_step_peak_memory_decreases_with_kv_sharing():
    # K/V activations dominate the differences: 8 layers of 256-wide K and V over 4 x 512 tokens are 32 MiB
    # for MHA; each doubling of the sharing factor halves them, while the weights barely change.
    model = ModelSpec(d_model=256, n_layers=8, d_ff=256, vocab_size=64, dtype="float32")
    workers = IsolatedRunner()
    peaks, kv = [], []
    for sharing in (1, 2, 4):
        variant = Variant(name=f"cla{sharing}", head_dim=32, n_heads=8, n_kv_heads=8, kv_layers=sharing_map(8, sharing))
        payload = cell_request(model=model, variant=variant, batch_size=4, context_len=512)
        outcome = workers.call(measure_train_step, payload, timeout_s=120)
        assert outcome.status == "ok" and outcome.value is not None, outcome.error
        kv.append(accounting.train_kv_activation_bytes(variant, "float32", 4, 512))
        assert outcome.value["kv_activation_bytes"] == kv[-1]
        peaks.append(outcome.value["peak_memory_bytes"])
    assert kv == [32 * 2**20, 16 * 2**20, 8 * 2**20]
    # each step down in the peak is at least most of the K/V activations it drops (the weights drop a little too)
    assert peaks[0] - peaks[1] > 0.8 * (kv[0] - kv[1])
    assert peaks[1] - peaks[2] > 0.8 * (kv[1] - kv[2])
