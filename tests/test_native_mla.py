"""The native CPU kernel runs MLA's absorbed form: a latent of d_c + d_h^R columns as keys, its first d_c as values.

Widths here are multiples of 16, so the compiled kernel itself takes every step (a spy counts its calls);
the decode equals the float64 full-history reference, contiguous and across page boundaries, and the kernel
alone equals float64 attention with its own scale over ragged paged batches.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers_reference import reference_logits
from torch import Tensor

from harness.backend_support import unsupported_reason
from harness.model import Decoder, build_decoder, native
from harness.scenario.schema import ModelSpec
from harness.scenario.serving import with_layout
from harness.variants import MLAShape, Variant, sharing_map

pytestmark = pytest.mark.skipif(not native.available(), reason="no C++ compiler to build the native kernel")

SHAPE = MLAShape(kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=12)  # latent 48, values 32
CASES = {
    "MLA": Variant("MLA", 32, 4, 1, sharing_map(3, 1), mla=SHAPE),
    "MLA-CLA2": Variant("MLA-CLA2", 32, 4, 1, sharing_map(4, 2), mla=SHAPE),
}
TOKENS = 21


def decoder_for(model: ModelSpec, variant: Variant) -> Decoder:
    spec = model.model_copy(update={"n_layers": variant.n_layers})
    return build_decoder(spec, variant, dtype="float32", device="cpu", backend="native", seed=4)


def decode_one_by_one(decoder: Decoder, tokens: Tensor, prompt: int = 3) -> Tensor:
    cache = decoder.allocate_cache(tokens.shape[0], tokens.shape[1], page_seed=2)
    steps = [decoder.prefill(tokens[:, :prompt], cache)]
    steps += [decoder.decode_step(tokens[:, p : p + 1], cache, p) for p in range(prompt, tokens.shape[1])]
    return torch.cat(steps, dim=1)


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    run, run_paged = native.run, native.run_paged

    def counted_run(*args: object, **kwargs: object) -> Tensor:
        calls.append("run")
        return run(*args, **kwargs)  # type: ignore[arg-type]

    def counted_run_paged(*args: object, **kwargs: object) -> Tensor:
        calls.append("run_paged")
        return run_paged(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(native, "run", counted_run)
    monkeypatch.setattr(native, "run_paged", counted_run_paged)
    return calls


@pytest.mark.parametrize("layout", ["contiguous", 4, 16])
@pytest.mark.parametrize("name", CASES)
def test_native_mla_decode_equals_the_float64_full_history_reference(
    tiny_model: ModelSpec, name: str, layout: int | str, kernel_calls: list[str]
) -> None:
    variant = with_layout(CASES[name], layout)
    assert unsupported_reason("native", variant, "cpu") is None
    decoder = decoder_for(tiny_model, variant)
    tokens = torch.randint(0, 97, (2, TOKENS), generator=torch.Generator().manual_seed(8))
    expected = reference_logits(decoder, tokens)
    torch.testing.assert_close(decode_one_by_one(decoder, tokens).double(), expected, atol=2e-5, rtol=1e-4)
    decode_steps = (TOKENS - 3) * variant.n_layers
    assert kernel_calls.count("run" if layout == "contiguous" else "run_paged") == decode_steps


def attention64(q: Tensor, latent: Tensor, rank: int, scale: float, lengths: Tensor) -> Tensor:
    """softmax(q · latentᵀ · scale) · latent[..., :rank], sequence b over its first lengths[b] positions, float64."""
    scores = (q.double() @ latent.double().transpose(-1, -2)) * scale  # [B, H, 1, T]
    beyond = torch.arange(latent.shape[2])[None, :] >= lengths[:, None]
    scores = scores.masked_fill(beyond[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ latent[..., :rank].double()


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_the_kernel_reads_a_latent_as_keys_and_its_first_columns_as_values_in_scattered_pages(
    dtype: torch.dtype, tolerance: float
) -> None:
    generator = torch.Generator().manual_seed(3)
    batch, heads, width, rank, page = 3, 32, 576, 512, 16
    lengths = torch.tensor([700, 233, 17])
    pages_per_sequence = -(-700 // page)
    pool = torch.randn(batch * pages_per_sequence + 5, 1, page, width, generator=generator).to(dtype)
    table = torch.randperm(pool.shape[0], generator=generator)[: batch * pages_per_sequence].view(batch, -1)
    q = torch.randn(batch, heads, 1, width, generator=generator).to(dtype)
    scale = 1.0 / math.sqrt(128 + 64)  # MLA's: 1/sqrt(d_h + d_h^R), not 1/sqrt(the latent's width)
    out = native.run_paged(q, pool, pool[..., :rank], table, torch.zeros(batch, dtype=torch.long), lengths, scale=scale)
    latent = pool[table].permute(0, 2, 1, 3, 4).reshape(batch, 1, -1, width)  # each sequence's pages in order
    expected = attention64(q, latent, rank, scale, lengths)
    assert out.shape == (batch, heads, 1, rank) and out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=tolerance, rtol=tolerance)
    contiguous = native.run(q, latent[:, :, :17], latent[:, :, :17, :rank], scale=scale)
    torch.testing.assert_close(
        contiguous.double(),
        attention64(q, latent[:, :, :17], rank, scale, torch.full((batch,), 17)),
        atol=tolerance,
        rtol=tolerance,
    )


def test_a_value_width_the_kernel_cannot_step_through_is_named() -> None:
    q, k = torch.randn(1, 4, 1, 48), torch.randn(1, 1, 9, 48)
    assert native.supports(q, k, k[..., :40]) == "the native kernel needs V's width a multiple of 16, got 40"
