"""Which kernel ``scaled_dot_product_attention`` runs, chosen before the call and observed after it.

PyTorch's SDPA dispatches to one of several kernels (flash, memory-efficient, cuDNN, or the math
fallback that materialises the scores in eager ops) from the dtype, head dim, mask and device, and
falls back to math silently. On CUDA the fused kernels differ in what they accept: flash and (from
PyTorch 2.10, first in SDPA's order on Hopper) cuDNN read shared KV heads natively (``enable_gqa``),
memory-efficient does not, so GQA/MQA with ``enable_gqa`` outside them (float32, or head_dim > 256)
runs math, which repeats K/V to every query head: a copy of the cache per step that a benchmark of
KV-cache traffic must not hide. Which fused kernel is tried first is SDPA's priority order
(:func:`priority`), recorded in every result's fingerprint.

- :func:`plan` asks PyTorch's own dispatcher (``torch._fused_sdp_choice``) which kernel a call would
  take, and passes ``enable_gqa`` only where a fused kernel takes it; elsewhere it repeats K/V to
  every query head itself (``expand_kv``), so that a fused kernel still runs on the copy.
- :func:`observe` records what one call actually ran, from the operators the PyTorch profiler saw:
  the kernel, and whether K or V was repeated per query head (``aten::repeat_interleave``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# torch.nn.attention.SDPBackend values returned by torch._fused_sdp_choice, as the names results use.
KERNEL_NAMES: dict[int, str] = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
FUSED_KERNELS = frozenset({"flash", "efficient", "cudnn", "overrideable"})
# Profiler operator names of each kernel (CUDA and CPU spellings).
KERNEL_OPS: dict[str, str] = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_attention_math_for_mps": "math",
}
COPY_OPS = frozenset({"aten::repeat_interleave"})


@dataclass(frozen=True)
class SdpaPlan:
    """How one SDPA call is made."""

    kernel: str  # what PyTorch's dispatcher says it will run: flash, efficient, cudnn, math
    enable_gqa: bool  # pass enable_gqa: the kernel reads shared KV heads without a copy
    expand_kv: bool  # repeat K/V to every query head before the call (a copy), so that a fused kernel runs


@dataclass(frozen=True)
class SdpaObservation:
    """What one SDPA call ran, as the profiler saw it."""

    kernel: str  # flash, efficient, cudnn, math (or "unknown" when no known kernel op was seen)
    kv_copied: bool  # K or V was repeated to every query head inside or before the call


def _choose(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, enable_gqa: bool) -> str:
    try:
        index = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal, scale=None, enable_gqa=enable_gqa)
    except TypeError:  # a PyTorch whose dispatcher predates enable_gqa
        index = torch._fused_sdp_choice(q, k, v, mask, 0.0, is_causal)
    return KERNEL_NAMES.get(int(index), "unknown")


def _expanded_view(kv: Tensor, n_heads: int) -> Tensor:
    """A [B, n_heads, S, head_dim] view of ``kv`` with every query head reading KV head 0 (no copy).

    Only for asking the dispatcher which kernel takes the expanded layout: the shapes, dtype and
    innermost strides are those of the real copy.
    """
    batch, _, seq, head_dim = kv.shape
    return kv.as_strided((batch, n_heads, seq, head_dim), (kv.stride(0), 0, kv.stride(2), kv.stride(3)))


def plan(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> SdpaPlan:
    """The SDPA call for q [B, n_heads, T, D] over k, v [B, n_kv_heads, S, D] (see the module doc)."""
    if q.shape[1] == k.shape[1]:
        return SdpaPlan(_choose(q, k, v, mask, is_causal, False), enable_gqa=False, expand_kv=False)
    native = _choose(q, k, v, mask, is_causal, True)
    if native in FUSED_KERNELS:
        return SdpaPlan(native, enable_gqa=True, expand_kv=False)
    n_heads = q.shape[1]
    expanded = _choose(q, _expanded_view(k, n_heads), _expanded_view(v, n_heads), mask, is_causal, False)
    if expanded in FUSED_KERNELS:
        return SdpaPlan(expanded, enable_gqa=False, expand_kv=True)
    return SdpaPlan(native, enable_gqa=True, expand_kv=False)  # math repeats K/V itself


def priority() -> list[str] | None:
    """SDPA's backend priority order on this PyTorch, by kernel name (None where torch cannot say)."""
    try:
        order = torch._C._get_sdp_priority_order()
    except (AttributeError, RuntimeError):
        return None
    return [KERNEL_NAMES.get(int(index), "unknown") for index in order]


def kernel_of_ops(op_names: list[str]) -> SdpaObservation:
    """The kernel and copy behaviour shown by a profiler's operator names, in call order."""
    kernel = next((KERNEL_OPS[name] for name in op_names if name in KERNEL_OPS), "unknown")
    return SdpaObservation(kernel=kernel, kv_copied=any(name in COPY_OPS for name in op_names))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: the profiler's C++ side announces every
    start and stop there, which would interleave with a run's progress display."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def observe(call: Callable[[], object]) -> SdpaObservation:
    """Run ``call`` once under the profiler (CPU-side operators only) and report what SDPA ran."""
    with _stderr_silenced(), torch.autograd.profiler.profile(use_kineto=False) as profile:
        call()
    return kernel_of_ops([event.name for event in profile.function_events])
