"""Which SDPA kernel runs: the plan (from PyTorch's dispatcher, faked here as CUDA's) and the observation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.model import sdpa
from harness.model.attention import attend

FLASH, EFFICIENT, MATH = int(SDPBackend.FLASH_ATTENTION), int(SDPBackend.EFFICIENT_ATTENTION), int(SDPBackend.MATH)


def cuda_like_choice(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> int:
    """CUDA's dispatcher as the kernels' documented limits have it: flash takes 16-bit dtypes and
    head_dim <= 256 and reads shared KV heads natively; memory-efficient takes float32 too but not
    enable_gqa; anything else is math."""
    head_dim = q.shape[-1]
    if q.dtype in (torch.float16, torch.bfloat16) and head_dim <= 256:
        return FLASH
    if not enable_gqa and head_dim <= 256:
        return EFFICIENT
    return MATH


def qkv(n_heads: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, n_heads, 1, head_dim, generator=generator).to(dtype)
    k = torch.randn(2, n_kv_heads, 33, head_dim, generator=generator).to(dtype)
    v = torch.randn(2, n_kv_heads, 33, head_dim, generator=generator).to(dtype)
    return q, k, v


@pytest.mark.parametrize(
    ("n_kv_heads", "head_dim", "dtype", "expected"),
    [
        (8, 128, torch.bfloat16, sdpa.SdpaPlan("flash", enable_gqa=False, expand_kv=False)),
        (2, 128, torch.bfloat16, sdpa.SdpaPlan("flash", enable_gqa=True, expand_kv=False)),
        (1, 128, torch.float32, sdpa.SdpaPlan("efficient", enable_gqa=False, expand_kv=True)),
        (8, 128, torch.float32, sdpa.SdpaPlan("efficient", enable_gqa=False, expand_kv=False)),
        (1, 512, torch.bfloat16, sdpa.SdpaPlan("math", enable_gqa=True, expand_kv=False)),
    ],
)
def test_plan_passes_enable_gqa_only_to_a_kernel_that_takes_it(
    monkeypatch: pytest.MonkeyPatch, n_kv_heads: int, head_dim: int, dtype: torch.dtype, expected: sdpa.SdpaPlan
) -> None:
    monkeypatch.setattr(torch, "_fused_sdp_choice", cuda_like_choice)
    assert sdpa.plan(*qkv(8, n_kv_heads, head_dim, dtype)) == expected


def test_the_expanded_view_for_the_dispatcher_has_the_copys_shape_and_no_storage_of_its_own() -> None:
    _, k, _ = qkv(8, 2, 64, torch.float32)
    view = sdpa._expanded_view(k, 8)
    assert view.shape == (2, 8, 33, 64) and view.stride()[-1] == 1
    assert view.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()


def test_sdpa_with_kv_expanded_by_the_plan_agrees_with_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = qkv(8, 2, 64, torch.float32)
    expected = attend(q, k, v, start_pos=32, backend="eager")
    monkeypatch.setattr(sdpa, "plan", lambda *args: sdpa.SdpaPlan("efficient", enable_gqa=False, expand_kv=True))
    torch.testing.assert_close(attend(q, k, v, start_pos=32, backend="sdpa"), expected)


def test_kernel_of_ops_names_the_first_kernel_op_and_any_repeat_of_kv() -> None:
    ops = ["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_efficient_attention", "aten::empty"]
    assert sdpa.kernel_of_ops(ops) == sdpa.SdpaObservation("efficient", kv_copied=False)
    ops = ["aten::repeat_interleave", "aten::_scaled_dot_product_attention_math", "aten::bmm"]
    assert sdpa.kernel_of_ops(ops) == sdpa.SdpaObservation("math", kv_copied=True)
    assert sdpa.kernel_of_ops(["aten::bmm"]) == sdpa.SdpaObservation("unknown", kv_copied=False)


def test_observe_sees_the_cpu_flash_kernel_read_shared_kv_heads_without_a_copy() -> None:
    q, k, v = qkv(8, 1, 64, torch.float32)
    with torch.inference_mode():
        seen = sdpa.observe(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert seen == sdpa.SdpaObservation("flash", kv_copied=False)


def test_observe_sees_the_math_fallback_repeat_kv_to_every_query_head() -> None:
    q, k, v = qkv(8, 1, 64, torch.float32)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        seen = sdpa.observe(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert seen == sdpa.SdpaObservation("math", kv_copied=True)


def test_observe_keeps_the_profilers_announcements_off_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    q, k, v = qkv(8, 8, 64, torch.float32)
    sdpa.observe(lambda: F.scaled_dot_product_attention(q, k, v))
    assert capfd.readouterr().err == ""
