"""Which attention backend can run which variant on which device, and which variants train (no torch import).

The reasons read what each backend declares in the registry (harness/backends/).

The runner records a cell whose backend cannot run its variant as ``unsupported``, with the reason,
instead of measuring something else under that backend's name; the decoder refuses such a backend
with the same reason. Nothing here silently widens an 8-bit cache: a backend that cannot read
float8 says so.
"""

from __future__ import annotations

from harness import backends
from harness.backends import BackendSpec
from harness.backends.spec import KernelMemory
from harness.variants import Variant


def _spec(backend: str) -> BackendSpec | None:
    try:
        return backends.get(backend)
    except KeyError:
        return None


def kernel_memory(backend: str, device_type: str | None) -> KernelMemory | None:
    """What ``backend``'s attention holds on a device of this type, as it declares (harness/backends/spec.py), for
    the max-batch accounting; None for ``auto`` before it is resolved, or a name nothing registers. Without a
    device type (``plan``, shards) a backend that runs on one device type only is taken there."""
    spec = _spec(backend)
    if spec is None or backend == backends.AUTO:
        return None
    if device_type is None and spec.devices is not None and len(spec.devices) == 1:
        device_type = spec.devices[0]
    return spec.kernel_memory(device_type)


def mla_forms() -> tuple[str, ...]:
    """Backends that are an MLA form of their own (decompress the latent), not a kernel over a K/V cache."""
    return tuple(spec.name for spec in backends.registry().specs if not spec.kv_cache)


def paged_backends() -> tuple[str, ...]:
    """Backends that read a paged KV cache (harness/model/paged.py)."""
    return tuple(spec.name for spec in backends.registry().specs if spec.paged)


def paged_unsupported(backend: str) -> str | None:
    """Why ``backend`` cannot read a paged KV cache, or None if it can."""
    spec = _spec(backend)
    if backend == backends.AUTO or spec is None or spec.paged:
        return None
    return (
        f"attention backend {backend!r} reads a contiguous KV cache only; a paged cache is read by "
        f"{', '.join(paged_backends())}"
    )


def ragged_backends() -> tuple[str, ...]:
    """Backends that run a ragged batch (each sequence at its own context)."""
    return tuple(spec.name for spec in backends.registry().specs if spec.ragged)


def ragged_unsupported(backend: str) -> str | None:
    """Why ``backend`` cannot run a ragged batch, or None if it can."""
    spec = _spec(backend)
    if backend == backends.AUTO or spec is None or spec.ragged:
        return None
    return (
        f"attention backend {backend!r} takes one context length for the whole batch; a ragged batch is run by "
        f"{', '.join(ragged_backends())}"
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


def kv_dtype_unsupported(backend: str, device_type: str | None, kv_dtype: str | None = None) -> str | None:
    """Why ``backend`` cannot read a float8 cache (of ``kv_dtype``; None: any) on ``device_type`` (None: on any
    device), or None if it can."""
    spec = _spec(backend)
    if spec is None:
        return None
    if not spec.kv_dtypes or (kv_dtype is not None and kv_dtype not in spec.kv_dtypes):
        why = spec.refusals.get("fp8", f"it reads {', '.join(spec.kv_dtypes) or 'no float8 format'}")
        return f"attention backend {backend!r} cannot read a float8 KV cache: {why}"
    if spec.fp8_devices is not None and device_type is not None and device_type not in spec.fp8_devices:
        why = spec.refusals.get("fp8_device", "reads a float8 KV cache on {where} only, not on {device!r}")
        return f"attention backend {backend!r} " + why.format(device=device_type, where=", ".join(spec.fp8_devices))
    return None


def _mla_unsupported(spec: BackendSpec, variant: Variant) -> str | None:
    if variant.mla is None:
        if spec.kv_cache and spec.heads:
            return None
        if not spec.kv_cache:
            return f"backend {spec.name!r} decompresses an MLA latent; {variant.name} caches K and V, not a latent"
        return f"attention backend {spec.name!r} runs MLA's latent attention only; {variant.name} caches K and V"
    if spec.mla:
        return None
    width, rank = variant.mla.latent_width, variant.mla.kv_lora_rank
    why = spec.refusals.get("mla", "attention backend {name!r} does not run MLA's latent attention")
    return why.format(name=spec.name, width=width, rank=rank)


def _layout_unsupported(spec: BackendSpec, page_size: int | None) -> str | None:
    """Why a backend that reads only some cache layouts cannot read this one (page_size None: contiguous)."""
    sizes = ", ".join(str(size) for size in spec.page_sizes or ())
    if page_size is None and not spec.contiguous:
        return f"attention backend {spec.name!r} reads a paged cache only (pages of {sizes} positions: sweep.page_size)"
    if page_size is not None and spec.page_sizes is not None and page_size not in spec.page_sizes:
        return f"attention backend {spec.name!r} reads pages of {sizes} positions, not {page_size}"
    return None


def _shape_unsupported(spec: BackendSpec, variant: Variant, dtype: str | None) -> str | None:
    """The declared capabilities a plugin may lack and no built-in does: head layout, sharing map, windows, dtype."""
    layout = variant.attention
    if variant.mla is None and layout not in spec.heads:
        return f"attention backend {spec.name!r} runs {', '.join(spec.heads).upper()} only, not {layout.upper()}"
    if not spec.cla and variant.n_kv_layers < variant.n_layers:
        return f"attention backend {spec.name!r} does not run a cross-layer sharing map (every layer its own KV)"
    if not spec.windows and variant.is_windowed:
        return f"attention backend {spec.name!r} does not run sliding-window layers"
    if dtype is not None and dtype not in spec.dtypes:
        return f"attention backend {spec.name!r} takes {', '.join(spec.dtypes)}, not {dtype}"
    return None


def unsupported_reason(
    backend: str, variant: Variant, device_type: str | None = None, dtype: str | None = None
) -> str | None:
    """Why ``backend`` cannot run ``variant`` (on ``device_type``, in ``dtype``; None: the reasons that hold
    everywhere only), or None if it can. ``auto`` picks among the backends that can; an unknown name is
    refused where it is resolved, not here."""
    spec = _spec(backend)
    if backend == backends.AUTO or spec is None:
        return None
    if device_type is not None and spec.origin != "built-in":  # an adapter or a plugin: where and whether it runs
        if not spec.runs_on(device_type):
            return f"attention backend {backend!r} {spec.where()}"
        if (missing := spec.missing()) is not None:
            return f"attention backend {backend!r} {missing}"
    if (reason := _mla_unsupported(spec, variant)) is not None:
        return reason
    if variant.page_size is not None and (reason := paged_unsupported(backend)) is not None:
        return reason
    if (reason := _layout_unsupported(spec, variant.page_size)) is not None:
        return reason
    if variant.lengths is not None and variant.lengths.ragged and (reason := ragged_unsupported(backend)) is not None:
        return reason
    if variant.q_len > 1 or variant.prefill or variant.chunk is not None:
        if (reason := multi_token_unsupported(variant)) is not None:
            return reason
        if not spec.multi_token:
            return f"attention backend {backend!r} takes one new token per sequence; this step has several"
    if (reason := _shape_unsupported(spec, variant, dtype)) is not None:
        return reason
    if variant.kv_dtype is not None:
        return kv_dtype_unsupported(backend, device_type, variant.kv_dtype)
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
