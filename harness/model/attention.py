"""The core attention operation over a static KV cache, with interchangeable backends.

Every backend computes the same thing: softmax(q kᵀ / sqrt(head_dim)) v (Vaswani et al. 2017, eq. 1)
for ``T`` new query positions ``start_pos .. start_pos + T - 1`` against the first
``start_pos + T`` cache positions, causal within the new tokens. Query head ``h`` reads KV head
``h // group_size`` (Ainslie et al. 2023, GQA), so MHA, GQA and MQA differ only in ``n_kv_heads``.

- ``eager``: the textbook reference: K/V repeated to every query head, matmul, mask, softmax, matmul.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, with ``enable_gqa`` where the kernel
  PyTorch picks reads shared KV heads natively, else with K/V repeated to every query head so that a
  fused kernel still runs (:mod:`harness.model.sdpa` says which kernel, and records which one ran).
- ``grouped``: no copy of K/V: the queries sharing a KV head are stacked and multiplied against it.
  On CPU a decode step runs the split-KV kernel of :mod:`harness.model.decode_kernels`, which reads
  the cache once, in streaming order, close to the memory-bandwidth limit.
- ``native``: attnbench's compiled CPU kernel (:mod:`harness.model.native`): one pass over the cache
  per decode step, split-KV across threads, online softmax, every cache element widened to float32
  in registers and used by all the query heads of its group. Built on first use with the system C++
  compiler; CPU only. Steps it does not take (prefill, head_dim not a multiple of 16) run ``grouped``.
- ``flex``: ``torch.nn.attention.flex_attention``, compiled; CUDA only. With one query per sequence
  it runs FlexAttention's split-KV decoding kernel (flash-decoding).

The decode step (``T == 1``) needs no mask: its one query sees every valid position.

Keys and values may differ in width (MLA's absorbed form reads a d_c + d_h^R latent as keys and its
first d_c columns as values) and the score scale may be given (MLA scales by 1/sqrt(d_h + d_h^R), not
by the latent's width). A float8 cache is read by the backends that can read it (eager, which widens
the slice it reads as it already repeats it per head; grouped on CPU, whose split-KV kernel widens
it chunk by chunk in the CPU caches); the others refuse it with the reason, never widening the
whole cache behind the caller's back (harness/backend_support.py says which and why). A paged cache
(harness/model/paged.py) is read by ``native`` in place through its block table and by ``eager`` from a
gathered copy of the attended positions; the other backends refuse it with the reason.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from harness import backends
from harness.backend_support import kv_dtype_unsupported, paged_backends, ragged_backends, unsupported_reason
from harness.backends.spec import BackendSpec, resolve
from harness.model import native, sdpa
from harness.model.decode_kernels import split_kv_decode
from harness.model.kvcache import LayerCache, Visible
from harness.model.paged import PagedVisible
from harness.model.quant import dequantize, is_fp8
from harness.variants import Variant

# Each backend's spec (harness/backends/) says where it runs, what it computes and where its kernel is;
# a kernel takes (q, k, v, *, start_pos, scale, k_scale, v_scale, lengths) as docs/backends.md describes.


def available_backends(device_type: str) -> tuple[str, ...]:
    """The backends ``auto`` times on a device of this type (``"cpu"``, ``"cuda"``, ...), in registry order:
    those that run there, and can here (``native`` where a C++ compiler is on the path, an adapter where its
    package is installed)."""
    return tuple(
        spec.name
        for spec in backends.registry().specs
        if spec.auto_candidate and spec.runs_on(device_type) and spec.missing() is None
    )


def auto_preference(device_type: str) -> tuple[str, ...]:
    """What ``auto`` starts from on this device type before it measures, most preferred first: the backend that
    measured fastest there (scenarios/kernels.toml on CPU; sdpa on CUDA until a GPU run says otherwise).
    harness.measure.autotune.choose_backend then picks by timing every candidate on the actual shape."""
    specs = backends.registry().specs
    key = device_type if any(device_type in spec.auto_rank for spec in specs) else "*"  # "*": any other type
    ranked = sorted((spec.auto_rank[key], spec.name) for spec in specs if key in spec.auto_rank)
    return tuple(name for _, name in ranked)


def _spec(backend: str) -> BackendSpec:
    try:
        return backends.get(backend)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None


def resolve_backend(backend: str, device_type: str, variant: Variant | None = None) -> str:
    """The concrete backend a scenario's ``backend`` names on this device (for this variant, when given);
    ValueError if it cannot run there. ``auto`` starts from the first preferred backend that can."""
    if backend == backends.AUTO:
        available = [
            name
            for name in available_backends(device_type)
            if variant is None or unsupported_reason(name, variant, device_type) is None
        ]
        preferred = auto_preference(device_type)
        fallback = available[0] if available else preferred[-1]
        return next((name for name in preferred if name in available), fallback)
    spec = _spec(backend)
    if variant is not None:
        reason = unsupported_reason(backend, variant, device_type)
        if reason is not None:
            raise ValueError(reason)
    reason = spec.where() if not spec.runs_on(device_type) else spec.missing()
    if reason is not None:
        raise ValueError(
            f"attention backend {backend!r} {reason}; on {device_type!r} use one of {available_backends(device_type)}"
        )
    return backend


def kernel_of(backend: str) -> Callable[..., Tensor]:
    """The kernel a backend's spec names, imported on first use; ValueError naming the backend if it cannot be."""
    return _kernel(_spec(backend).kernel)


@functools.cache
def _kernel(path: str) -> Callable[..., Tensor]:
    try:
        return resolve(path)
    except ImportError as exc:
        raise ValueError(f"attention kernel {path!r} cannot be imported: {exc}") from None


def prepare_backend(backend: str) -> None:
    """One-time setup a backend needs before its first step (building or loading the native kernel, importing a
    plugin's module), so that it happens outside timed and memory-tracked regions. RuntimeError if it cannot be
    done."""
    if backend == "native":
        native.load()
    if backend != backends.AUTO:
        try:
            kernel_of(backend)
        except ValueError as exc:
            raise RuntimeError(str(exc)) from None


def causal_mask(start_pos: int, n_new: int, device: torch.device) -> Tensor:
    """Boolean [n_new, start_pos + n_new] mask: query i (position start_pos + i) sees keys 0 .. start_pos + i."""
    query_pos = torch.arange(start_pos, start_pos + n_new, device=device)
    key_pos = torch.arange(start_pos + n_new, device=device)
    return key_pos[None, :] <= query_pos[:, None]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start_pos: int,
    backend: str,
    scale: float | None = None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Attention of new queries over a static cache.

    q: [B, n_heads, T, head_dim] for positions start_pos .. start_pos + T - 1.
    k: [B, n_kv_heads, S, head_dim], v: [B, n_kv_heads, S, v_dim] with S >= start_pos + T; positions
    past start_pos + T are not read. ``scale`` multiplies the scores (default 1/sqrt(head_dim)).
    A float8 cache comes with its float32 scales ``k_scale``, ``v_scale`` ([1] or [n_kv_heads]); a
    backend that cannot read float8 raises ValueError rather than widening the cache.
    A ragged decode step (T == 1) passes ``lengths`` [B]: sequence b attends its first lengths[b]
    positions (``start_pos`` counts for the longest); eager masks the rest, native reads only them.
    Returns [B, n_heads, T, v_dim] in q's dtype.
    """
    n_heads, n_new = q.shape[1], q.shape[2]
    n_kv_heads, max_len = k.shape[1], k.shape[2]
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    n_valid = start_pos + n_new
    if start_pos < 0 or n_valid > max_len:
        raise ValueError(f"positions {start_pos}..{n_valid - 1} do not fit a cache of {max_len} positions")
    k, v = k[:, :, :n_valid], v[:, :, :n_valid]  # [B, n_kv_heads, L, width], L = start_pos + T
    if is_fp8(k.dtype):
        reason = kv_dtype_unsupported(backend, q.device.type)
        if reason is not None:
            raise ValueError(reason)
        if k_scale is None or v_scale is None:
            raise ValueError("a float8 cache needs its k_scale and v_scale")
    spec = _spec(backend)
    if lengths is not None and not spec.ragged:
        raise ValueError(
            f"attention backend {backend!r} cannot run a ragged batch; {' and '.join(ragged_backends())} can"
        )
    if not spec.runs_on(q.device.type):
        raise ValueError(f"attention backend {backend!r} {spec.where()}; tensors are on {q.device.type!r}")
    kernel = kernel_of(backend)
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return kernel(q, k, v, start_pos=start_pos, scale=factor, k_scale=k_scale, v_scale=v_scale, lengths=lengths)


def eager_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start_pos: int,
    scale: float | None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """The textbook form (backend ``eager``): K/V widened from float8 and repeated per query head."""
    if lengths is not None:
        return _ragged_masked(q, k, v, lengths, scale, k_scale, v_scale)
    return _eager(q, *_widened(k, v, k_scale, v_scale, q.dtype), start_pos, scale)


def sdpa_kernel(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float | None, **_: Tensor | None) -> Tensor:
    """Backend ``sdpa`` (contiguous, non-float8 caches; its spec refuses the rest before a call)."""
    return _sdpa(q, k, v, start_pos, scale)


def grouped_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start_pos: int,
    scale: float | None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    **_: Tensor | None,
) -> Tensor:
    """Backend ``grouped``."""
    return _grouped(q, k, v, start_pos, scale, k_scale, v_scale)


def native_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    start_pos: int,
    scale: float | None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Backend ``native``; a ragged step runs its paged kernel with each sequence's slice as one page (block
    table [[0], [1], ...]), which reads only the attended positions, or, where the kernel does not take the
    step, the masked textbook form."""
    if lengths is not None:
        if _native_takes(q, k, v):
            table = torch.arange(k.shape[0], device=k.device)[:, None]  # sequence b's slice is page b
            return native.run_paged(q, k, v, table, torch.zeros_like(lengths), lengths, scale=scale)
        return _ragged_masked(q, k, v, lengths, scale, k_scale, v_scale)
    return _native(q, k, v, start_pos, scale)


def native_paged(q: Tensor, visible: PagedVisible, scale: float | None) -> Tensor | None:
    """``native`` over a paged slot: its kernel reads the pages in place through the block table; None where
    the kernel does not take the step (the caller then attends a gathered copy)."""
    assert visible.block_table is not None
    if not _native_takes(q, visible.k, visible.v):
        return None
    starts, stops = visible.spans()
    return native.run_paged(q, visible.k, visible.v, visible.block_table, starts, stops, scale=scale)


def flex_kernel(q: Tensor, k: Tensor, v: Tensor, *, start_pos: int, scale: float | None, **_: Tensor | None) -> Tensor:
    """Backend ``flex`` (CUDA only)."""
    if q.device.type != "cuda":
        raise ValueError(f"attention backend 'flex' needs CUDA; tensors are on {q.device.type!r}")
    return _flex(q, k, v, start_pos, scale)


def _widened(
    k: Tensor, v: Tensor, k_scale: Tensor | None, v_scale: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """K and V slices in ``dtype``: float8 slices dequantised with their scales, others as they are.

    Only the textbook paths take this (eager, and grouped's multi-token steps), which widen the slice
    they read as eager already repeats it per query head.
    """
    if k_scale is None or v_scale is None or not is_fp8(k.dtype):
        return k, v
    return dequantize(k, k_scale, dtype), dequantize(v, v_scale, dtype)


def attend_visible(
    q: Tensor, visible: Visible, slot: LayerCache, *, backend: str, scale: float | None = None
) -> Tensor:
    """Attention of q [B, n_heads, T, width] over what a cache slot shows it (see :meth:`LayerCache.visible`):
    through ``backend``, or for a windowed slot's multi-token step through the masked textbook form."""
    if isinstance(visible, PagedVisible):
        return _paged(q, visible, slot, backend, scale)
    if visible.mask is None:
        return attend(
            q,
            visible.k,
            visible.v,
            start_pos=visible.start_pos,
            backend=backend,
            scale=scale,
            k_scale=slot.k_scale,
            v_scale=slot.v_scale,
            lengths=visible.lengths,
        )
    return attend_masked(q, visible.k, visible.v, visible.mask, scale=scale, k_scale=slot.k_scale, v_scale=slot.v_scale)


def _paged(q: Tensor, visible: PagedVisible, slot: LayerCache, backend: str, scale: float | None) -> Tensor:
    """Attention over a paged slot (harness/model/paged.py): a backend whose spec names a paged kernel reads the
    pages in place (``native``, through the block table); the others that read paged caches (``eager``), and
    the steps a paged kernel does not take, attend a gathered copy of the positions. Backends that read
    contiguous caches only are refused (harness/backend_support.py)."""
    spec = _spec(backend)
    if not spec.paged:
        raise ValueError(
            f"attention backend {backend!r} cannot read a paged KV cache; {' and '.join(paged_backends())} can"
        )
    if spec.paged_kernel is not None:
        out = _kernel(spec.paged_kernel)(q, visible, scale)
        if out is not None:
            return out
    gathered = visible.gathered()  # [B, heads, stop - first, width]: the textbook paged form's copy
    return attend(
        q,
        gathered.k,
        gathered.v,
        start_pos=gathered.start_pos,
        backend=backend,
        scale=scale,
        k_scale=slot.k_scale,
        v_scale=slot.v_scale,
        lengths=gathered.lengths,
    )


def _ragged_masked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lengths: Tensor,
    scale: float | None,
    k_scale: Tensor | None,
    v_scale: Tensor | None,
) -> Tensor:
    """A ragged decode step over k, v [B, n_kv_heads, S, width] in the textbook form: sequence b attends its first
    lengths[b] positions, the rest masked."""
    if q.shape[2] != 1:
        raise ValueError(f"a ragged batch takes one new query per sequence, got {q.shape[2]}")
    k, v = _widened(k, v, k_scale, v_scale, q.dtype)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [B, n_heads, S, head_dim]
    v = v.repeat_interleave(group, dim=1)  # [B, n_heads, S, v_dim]
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q * factor, k.transpose(-2, -1)).float()  # [B, n_heads, 1, S]
    beyond = torch.arange(k.shape[2], device=k.device)[None, :] >= lengths[:, None]  # [B, S]
    scores = scores.masked_fill(beyond[:, None, None, :], float("-inf"))
    return torch.matmul(_softmax_f32(scores, v.dtype), v).to(q.dtype)  # [B, n_heads, 1, v_dim]


def _native_takes(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the native kernel runs this step itself (else ``native`` runs ``grouped``, as documented)."""
    return native.supports(q, k, v) is None


def attend_masked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    *,
    scale: float | None = None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> Tensor:
    """softmax(q kᵀ · scale + mask) v with an explicit boolean mask [T, S] (True: seen), in the textbook form.

    For a windowed layer's multi-token step, whose queries each see their own window of positions.
    q: [B, n_heads, T, head_dim]; k, v: [B, n_kv_heads, S, width] (float8 with scales, or not).
    Returns [B, n_heads, T, v_dim] in q's dtype.
    """
    k, v = _widened(k, v, k_scale, v_scale, q.dtype)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [B, n_heads, S, head_dim]
    v = v.repeat_interleave(group, dim=1)  # [B, n_heads, S, v_dim]
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q * factor, k.transpose(-2, -1)).float()  # [B, n_heads, T, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(_softmax_f32(scores, v.dtype), v).to(q.dtype)  # [B, n_heads, T, v_dim]


def _softmax_f32(scores: Tensor, dtype: torch.dtype) -> Tensor:
    """Softmax over the last dim, accumulated in float32, returned in ``dtype``."""
    return torch.softmax(scores.float(), dim=-1).to(dtype)


def _eager(q: Tensor, k: Tensor, v: Tensor, start_pos: int, scale: float | None) -> Tensor:
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # [B, n_heads, L, head_dim]
    v = v.repeat_interleave(group, dim=1)  # [B, n_heads, L, v_dim]
    factor = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q * factor, k.transpose(-2, -1)).float()  # [B, n_heads, T, L]
    if q.shape[2] > 1:
        scores = scores.masked_fill(~causal_mask(start_pos, q.shape[2], q.device), float("-inf"))
    return torch.matmul(_softmax_f32(scores, v.dtype), v).to(q.dtype)  # [B, n_heads, T, v_dim]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, start_pos: int, scale: float | None) -> Tensor:
    n_new = q.shape[2]
    mask: Tensor | None = None
    is_causal = False
    if n_new > 1 and start_pos == 0:
        is_causal = True  # T == L: the usual lower triangle
    elif n_new > 1:
        mask = causal_mask(start_pos, n_new, q.device)  # [T, L]: the triangle is offset by start_pos
    call = sdpa.plan(q, k, v, mask, is_causal)
    if call.expand_kv:
        group = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)  # [B, n_heads, L, head_dim]
        v = v.repeat_interleave(group, dim=1)  # [B, n_heads, L, v_dim]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=call.enable_gqa, scale=scale
    )


def _grouped(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    start_pos: int,
    scale: float | None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> Tensor:
    batch_size, n_heads, n_new, head_dim = q.shape
    if n_new == 1 and q.device.type == "cpu":
        return split_kv_decode(q, k, v, scale=scale, k_scale=k_scale, v_scale=v_scale)
    k, v = _widened(k, v, k_scale, v_scale, q.dtype)  # a multi-token step (prefill): the slice, widened
    n_kv_heads, v_dim = k.shape[1], v.shape[-1]
    group = n_heads // n_kv_heads
    factor = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    # query head h = kv_head * group + g, so the heads sharing a KV head are adjacent
    q = (q * factor).reshape(batch_size, n_kv_heads, group * n_new, head_dim)  # [B, n_kv_heads, group*T, head_dim]
    scores = torch.matmul(q, k.transpose(-2, -1)).float()  # [B, n_kv_heads, group*T, L]
    if n_new > 1:
        scores = scores.view(batch_size, n_kv_heads, group, n_new, -1)  # [B, n_kv_heads, group, T, L]
        scores = scores.masked_fill(~causal_mask(start_pos, n_new, q.device), float("-inf"))
        scores = scores.view(batch_size, n_kv_heads, group * n_new, -1)  # [B, n_kv_heads, group*T, L]
    out = torch.matmul(_softmax_f32(scores, v.dtype), v)  # [B, n_kv_heads, group*T, v_dim]
    return out.view(batch_size, n_heads, n_new, v_dim).to(q.dtype)  # [B, n_heads, T, v_dim]


def _native(q: Tensor, k: Tensor, v: Tensor, start_pos: int, scale: float | None) -> Tensor:
    if q.device.type != "cpu":
        return native.decode_attention(q, k, v)  # refuses with the reason
    if native.supports(q, k, v) is not None:
        return _grouped(q, k, v, start_pos, scale)  # prefill, or a width the kernel does not take
    return native.run(q, k, v, scale=scale)


class FlexKernel:
    """``flex_attention`` compiled once; torch.compile re-specialises it per shape family.

    The cache length grows by one every decode step: after the second length torch.compile's
    automatic dynamic shapes make it symbolic, so one compiled kernel serves a whole decode run per
    (batch, heads, head_dim, dtype). ``enable_gqa`` lets query heads share KV heads without a copy.
    Decode (one query) runs without a block mask: the cache slice holds exactly the valid keys, and
    FlexAttention picks its split-KV decoding kernel for short query lengths.
    Several new queries get a causal block mask shifted by ``start_pos``.
    """

    def __init__(self) -> None:
        from torch.nn.attention.flex_attention import flex_attention

        self._attention: Callable[..., Tensor] = torch.compile(flex_attention)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, start_pos: int, scale: float | None = None) -> Tensor:
        from torch.nn.attention.flex_attention import create_block_mask

        n_new, n_valid = q.shape[2], k.shape[2]
        block_mask = None
        if n_new > 1:

            def shifted_causal(batch: Tensor, head: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
                return kv_idx <= q_idx + start_pos

            block_mask = create_block_mask(shifted_causal, None, None, n_new, n_valid, device=q.device)
        return self._attention(q, k, v, block_mask=block_mask, enable_gqa=True, scale=scale)


@functools.cache
def compiled_flex() -> FlexKernel:
    """The one compiled flex kernel of this process, built on first use."""
    return FlexKernel()


def _flex(q: Tensor, k: Tensor, v: Tensor, start_pos: int, scale: float | None) -> Tensor:
    return compiled_flex()(q, k, v, start_pos, scale).to(q.dtype)
