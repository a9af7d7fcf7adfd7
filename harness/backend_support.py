"""Which attention backend can run which variant on which device, and which variants train (no torch import).

The runner records a cell whose backend cannot run its variant as ``unsupported``, with the reason,
instead of measuring something else under that backend's name; the decoder refuses such a backend
with the same reason. Nothing here silently widens an 8-bit cache: a backend that cannot read
float8 says so.
"""

from __future__ import annotations

from harness.variants import Variant

# The MLA form that decompresses the latent into per-head K and V every step (not a kernel of its own:
# it runs sdpa over the decompressed K and V).
MLA_FORMS: tuple[str, ...] = ("naive",)

_FP8_UNREADABLE: dict[str, str] = {
    "sdpa": "scaled_dot_product_attention takes no float8 K and V",
    "native": "the native kernel widens float32, bfloat16 and float16 caches only",
    "flex": "FlexAttention takes no float8 K and V here",
}


# Backends that read a paged cache (harness/model/paged.py): native's kernel through the block table,
# eager and MLA's naive form from a gathered copy.
PAGED_BACKENDS: tuple[str, ...] = ("eager", "native", "naive")


def paged_unsupported(backend: str) -> str | None:
    """Why ``backend`` cannot read a paged KV cache, or None if it can."""
    if backend in PAGED_BACKENDS or backend == "auto":
        return None
    return (
        f"attention backend {backend!r} reads a contiguous KV cache only; a paged cache is read by "
        f"{', '.join(PAGED_BACKENDS)}"
    )


# Backends that run a ragged batch (each sequence at its own context): native's kernel over each
# sequence's span, eager with the positions past a sequence's length masked.
RAGGED_BACKENDS: tuple[str, ...] = ("eager", "native")


def ragged_unsupported(backend: str) -> str | None:
    """Why ``backend`` cannot run a ragged batch, or None if it can."""
    if backend in RAGGED_BACKENDS or backend == "auto":
        return None
    return (
        f"attention backend {backend!r} takes one context length for the whole batch; a ragged batch is run by "
        f"{', '.join(RAGGED_BACKENDS)}"
    )


def multi_token_unsupported(variant: Variant) -> str | None:
    """Why a step of ``variant.q_len`` new tokens per sequence (or a prefill of the whole prompt) is not measured
    for ``variant``, or None."""
    if variant.lengths is not None and variant.lengths.ragged:
        return "a ragged batch takes one new token per sequence; multi-token steps run on uniform batches"
    if variant.is_windowed:
        return (
            "a windowed layer's multi-token step attends the history its producer kept during the step, which "
            "the core-attention metric cannot replay alone; not measured"
        )
    return None


def kv_dtype_unsupported(backend: str, device_type: str | None) -> str | None:
    """Why ``backend`` cannot read a float8 cache on ``device_type`` (None: on any device), or None if it can."""
    if backend in _FP8_UNREADABLE:
        return f"attention backend {backend!r} cannot read a float8 KV cache: {_FP8_UNREADABLE[backend]}"
    if backend == "grouped" and device_type is not None and device_type != "cpu":
        return (
            "attention backend 'grouped' reads a float8 KV cache chunk by chunk only on CPU; "
            f"on {device_type!r} it would widen the whole cache every step"
        )
    return None


def unsupported_reason(backend: str, variant: Variant, device_type: str | None = None) -> str | None:
    """Why ``backend`` cannot run ``variant`` (on ``device_type``; None: the device-independent reasons
    only), or None if it can. ``auto`` picks among the backends that can."""
    if backend == "auto":
        return None
    if backend in MLA_FORMS and variant.mla is None:
        return f"backend {backend!r} decompresses an MLA latent; {variant.name} caches K and V, not a latent"
    if variant.mla is not None and backend == "native":
        width = variant.mla.latent_width
        return (
            f"the native kernel reads K and V of one width; MLA's absorbed form reads a {width}-wide latent as keys "
            f"and its first {variant.mla.kv_lora_rank} columns as values"
        )
    if variant.mla is not None and backend == "flex":
        return "the flex backend is not verified for MLA's different key and value widths"
    if variant.page_size is not None and (reason := paged_unsupported(backend)) is not None:
        return reason
    if variant.lengths is not None and variant.lengths.ragged and (reason := ragged_unsupported(backend)) is not None:
        return reason
    several = variant.q_len > 1 or variant.prefill or variant.chunk is not None
    if several and (reason := multi_token_unsupported(variant)) is not None:
        return reason
    if variant.kv_dtype is not None:
        return kv_dtype_unsupported(backend, device_type)
    return None


def training_problem(variant: Variant) -> str | None:
    """Why a training step of ``variant`` is not built (harness/model/training.py), or None if it is."""
    if variant.mla is not None:
        return (
            "MLA trains from per-head K and V decompressed from the latent, which is not built here "
            "(the absorbed decode form would make SDPA repeat the latent for every head)"
        )
    if variant.kv_dtype is not None:
        return "an 8-bit KV cache is a serving choice: training keeps K/V activations in the weights' dtype"
    if variant.is_windowed:
        return "a windowed layer's ring buffer holds only its window, while training keeps K/V of every position"
    return None
