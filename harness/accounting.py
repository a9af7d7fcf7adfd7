"""Exact accounting of parameters, KV-cache bytes, traffic and FLOPs. Pure functions, no torch.

The model is the Llama-style stack of harness/model/decoder.py: token embedding, per layer
RMSNorm -> attention -> RMSNorm -> SwiGLU MLP, a final RMSNorm and an untied LM head, no biases.
Attention is grouped-query attention over K and V, or multi-head latent attention (MLA) over a
cached latent (harness/model/mla.py). Definitions follow docs/design.md; each formula names its source.

A layer with a sliding window caches at most ``window`` positions (a ring buffer): it holds
``min(cache_len, window)`` of them, and that is what is allocated, read and counted here.
An 8-bit cache counts one byte per element plus its float32 scales, which do not grow with the
batch or the context. A paged cache (``variant.page_size``) allocates whole pages per sequence and a
block table of int64 entries (harness/pages.py): the last page's unused tail is counted as allocated;
a step reads only the positions it attends. In a ragged batch (``variant.lengths``, harness/lengths.py)
each sequence has its own context, ``context_len`` the longest: a contiguous cache still gives every
sequence a slot for the longest, a paged one only the pages each sequence holds, and a step reads and
computes over each sequence's own positions. A multi-token step (``variant.q_len`` = T new tokens per
sequence, causal within them: speculative verification) writes T positions, reads the cache once per
layer and does T tokens' matmuls. A prefill step (``variant.prefill``) takes a whole prompt of
context_len tokens per sequence over an empty cache (:func:`step_span`): it writes and reads context_len
positions and scores the causal triangle. A chunked-prefill step (``variant.chunk`` = C, harness/model/chunked.py)
runs C prompt tokens of sequence 0 beside one decode token of each other sequence, all at context_len: every
sequence's slot holds context_len + C positions (as the chunk's does), the step runs C + B - 1 tokens, sequence
0 reads and scores as a C-token step, the others as a decode step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from harness.backends.spec import KernelMemory
from harness.lengths import MAX_RAGGED_BATCH, iter_lengths, sequence_lengths
from harness.pages import BLOCK_TABLE_ENTRY_BYTES, pages_per_sequence
from harness.scenario.schema import ModelSpec
from harness.units import DTYPE_BYTES, KV_DTYPE_BYTES
from harness.variants import SCALE_BYTES, Variant

# A decode step writes one new token per sequence, so the cache holds context_len + 1 positions.
DECODE_TOKENS = 1


def cache_len(context_len: int, q_len: int = DECODE_TOKENS) -> int:
    """Positions the static KV cache is allocated for: the context plus the step's new tokens."""
    return context_len + q_len


def step_span(variant: Variant, context_len: int) -> tuple[int, int]:
    """Positions each sequence holds before a cell's step, and the new tokens per sequence the step adds:
    (context_len, q_len) for a decode or verification step, (0, context_len) for a prefill (the whole prompt
    of context_len tokens through the stack, filling the cache: the time to first token)."""
    if variant.chunk is not None:
        return (context_len, variant.chunk)  # the chunk's sequence, which sizes every slot
    return (0, context_len) if variant.prefill else (context_len, variant.q_len)


def step_tokens(variant: Variant, batch_size: int, context_len: int) -> int:
    """Tokens one step runs through the stack: batch_size times the new tokens per sequence; a chunked-prefill
    step's chunk and one token of each other sequence."""
    if variant.chunk is not None:
        return variant.chunk + batch_size - 1
    return batch_size * step_span(variant, context_len)[1]


Count = Callable[[int | None, int, int], int]  # (window, positions before, new tokens) -> a count


def _uniform_sum(variant: Variant, batch_size: int, context_len: int, count: Count) -> int:
    """``count(window, before, new)`` over all L layers, summed over a uniform batch's sequences: each at the
    step's span, or for a chunked-prefill step sequence 0 at the chunk's and the others at a decode token's."""
    before, new = step_span(variant, context_len)

    def layers(n_new: int) -> int:
        return sum(count(window, before, n_new) for window in variant.windows)

    if variant.chunk is None:
        return batch_size * layers(new)
    return layers(new) + (batch_size - 1) * layers(1)


def held_len(window: int | None, context_len: int, q_len: int = DECODE_TOKENS) -> int:
    """Positions a layer's cache holds at this context: cache_len, or at most ``window`` for a windowed layer."""
    positions = cache_len(context_len, q_len)
    return positions if window is None else min(positions, window)


def read_len(window: int | None, context_len: int, q_len: int = DECODE_TOKENS) -> int:
    """Positions a layer reads in one step of q_len new tokens: what it holds, or for a windowed layer's
    multi-token step the window's last window - 1 positions before the step and the step's own."""
    if q_len == 1 or window is None:
        return held_len(window, context_len, q_len)
    return min(context_len, window - 1) + q_len


def attended_pairs(window: int | None, context_len: int, q_len: int = DECODE_TOKENS) -> int:
    """(query, key) pairs a layer scores in one step: new token t (0-based) sees context_len + t + 1 positions,
    at most ``window`` of them (causal within the new tokens)."""
    return sum(held_len(window, context_len + t, 1) for t in range(q_len))


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one variant's decoder stack."""

    embedding: int  # vocab_size x d_model token embedding
    attention: int  # all attention projections (MLA: query, latent, up- and output projections)
    kv_projection: int  # the projections that write the cache alone (producer layers only)
    mlp: int  # SwiGLU gate, up and down projections
    norms: int  # RMSNorm weights (2 per layer + final; MLA adds its latent and compressed-query norms)
    lm_head: int  # d_model x vocab_size output projection (untied)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def matmul(self) -> int:
        """Parameters used in a matrix multiply per token (all but embedding and norms)."""
        return self.attention + self.mlp + self.lm_head


def param_counts(model: ModelSpec, variant: Variant) -> ParamCounts:
    """Count parameters; CLA consumers have no K/V projection (paper §2.2, arXiv 2405.12981)."""
    layers, producers, d_model = model.n_layers, variant.n_kv_layers, model.d_model
    norms = (2 * layers + 1) * d_model
    if variant.mla is not None:
        # DeepSeek-V2 (arXiv 2405.04434) §2.1: W^DQ, W^UQ and W^QR (or one query projection without
        # a compressed query), W^DKV and W^KR (producers), W^UK and W^UV, W^O; RMSNorm on c^Q and c^KV.
        mla, heads = variant.mla, variant.n_heads
        qk_width = heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
        if mla.q_lora_rank is None:
            query = d_model * qk_width
        else:
            query = d_model * mla.q_lora_rank + mla.q_lora_rank * qk_width
            norms += layers * mla.q_lora_rank
        kv_projection = producers * d_model * mla.latent_width
        norms += producers * mla.kv_lora_rank
        up = mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        output = heads * mla.v_head_dim * d_model
        attention = layers * (query + up + output) + kv_projection
    else:
        q_width = variant.n_heads * variant.head_dim
        kv_projection = producers * 2 * d_model * variant.n_kv_heads * variant.head_dim
        attention = layers * 2 * d_model * q_width + kv_projection
    return ParamCounts(
        embedding=model.vocab_size * d_model,
        attention=attention,
        kv_projection=kv_projection,
        mlp=layers * 3 * d_model * model.d_ff,
        norms=norms,
        lm_head=d_model * model.vocab_size,
    )


def weight_bytes(model: ModelSpec, variant: Variant, dtype: str) -> int:
    """Bytes of all parameters at ``dtype``."""
    return param_counts(model, variant).total * DTYPE_BYTES[dtype]


def kv_element_bytes(variant: Variant, dtype: str) -> int:
    """Bytes of one cached element: the variant's KV dtype if it has one, else the weights' ``dtype``."""
    return KV_DTYPE_BYTES[variant.kv_dtype] if variant.kv_dtype is not None else DTYPE_BYTES[dtype]


def kv_bytes_per_token(variant: Variant, dtype: str) -> int:
    """Bytes one token adds to the cache while it is within every layer's window: P · width · bytes.

    width = 2 · n_kv_heads · head_dim for K and V (docs/design.md; paper §2), or d_c + d_h^R for
    MLA's latent and rotary key (DeepSeek-V2, arXiv 2405.04434, table 1). P = producer layers.
    """
    return variant.n_kv_layers * variant.cache_width * kv_element_bytes(variant, dtype)


def kv_scale_bytes(variant: Variant) -> int:
    """Bytes of an 8-bit cache's float32 scales: per producer, per cache tensor (or per KV head of it)."""
    return variant.n_kv_layers * variant.scales_per_producer * SCALE_BYTES


def kv_bytes_per_sequence(variant: Variant, dtype: str, context_len: int) -> int:
    """Cache bytes one sequence holds at this context: Σ over producers of width · bytes · held positions,
    where a windowed producer holds min(cache_len, window) positions (a ring buffer). A paged cache holds
    whole pages (the last one's unused tail included) and one block-table entry per page."""
    per_position = variant.cache_width * kv_element_bytes(variant, dtype)
    if variant.page_size is not None:
        page = variant.page_size
        positions = cache_len(*step_span(variant, context_len))
        pages = sum(pages_per_sequence(variant.windows[p], positions, page) for p in variant.producers)
        return pages * (page * per_position + BLOCK_TABLE_ENTRY_BYTES)
    return sum(
        per_position * held_len(variant.windows[layer], *step_span(variant, context_len)) for layer in variant.producers
    )


def kv_cache_bytes(variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """What the static cache allocates: kv_bytes_per_sequence · batch_size, plus the scales of an 8-bit cache.

    Without windows or an 8-bit cache this is kv_bytes_per_token · batch_size · cache_len (docs/design.md).
    A paged cache of a ragged batch holds each sequence's own pages, and block tables as wide as the
    longest sequence's.
    """
    if variant.page_size is not None and variant.lengths is not None and variant.lengths.ragged:
        lengths = sequence_lengths(variant.lengths, context_len, batch_size)
        return sum(_paged_sequence_bytes(variant, dtype, length, context_len) for length in lengths) + kv_scale_bytes(
            variant
        )
    return kv_bytes_per_sequence(variant, dtype, context_len) * batch_size + kv_scale_bytes(variant)


def _paged_sequence_bytes(variant: Variant, dtype: str, length: int, context_len: int) -> int:
    """Bytes of a paged cache one sequence of ``length`` tokens holds in a batch whose longest has context_len:
    its own whole pages, and a block-table row as wide as the longest sequence's."""
    assert variant.page_size is not None
    page, per_position = variant.page_size, variant.cache_width * kv_element_bytes(variant, dtype)
    total = 0
    for producer in variant.producers:
        window = variant.windows[producer]
        total += pages_per_sequence(window, cache_len(*step_span(variant, length)), page) * page * per_position
        total += pages_per_sequence(window, cache_len(*step_span(variant, context_len)), page) * BLOCK_TABLE_ENTRY_BYTES
    return total


def _kv_read_bytes(variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """Cache bytes every one of the L attention layers reads in a decode step: its producer's held
    positions (CLA consumers re-read them, paper §2.3), and its producer's scales."""
    per_position = variant.cache_width * kv_element_bytes(variant, dtype)
    return _held_positions(variant, batch_size, context_len) * per_position + (
        variant.n_layers * variant.scales_per_producer * SCALE_BYTES
    )


def _held_positions(variant: Variant, batch_size: int, context_len: int) -> int:
    """Cache positions all L layers attend in one decode step, summed over the batch's sequences (each at its
    own context in a ragged batch)."""
    if variant.lengths is None or not variant.lengths.ragged:
        return _uniform_sum(variant, batch_size, context_len, read_len)
    lengths = sequence_lengths(variant.lengths, context_len, batch_size)
    return sum(read_len(window, length, variant.q_len) for length in lengths for window in variant.windows)


def _attended_pairs(variant: Variant, batch_size: int, context_len: int) -> int:
    """(query, key) pairs all L layers score in one step, summed over the batch's sequences."""
    if variant.lengths is None or not variant.lengths.ragged:
        return _uniform_sum(variant, batch_size, context_len, attended_pairs)
    lengths = sequence_lengths(variant.lengths, context_len, batch_size)
    return sum(attended_pairs(window, length, variant.q_len) for length in lengths for window in variant.windows)


def attention_bytes_per_step(variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """Bytes core attention reads and writes in one decode step, over all L layers.

    Every attention layer reads its producer's cache for the positions it holds: CLA consumers
    re-read the producer's cache, so CLA does not cut this traffic while GQA/MQA do (paper §2.3);
    MLA's absorbed form reads the latent once for keys and values. Plus each layer's query read and
    output write (MLA: the absorbed query of width d_c + d_h^R and the latent-width output).
    """
    width = DTYPE_BYTES[dtype]
    tokens = step_tokens(variant, batch_size, context_len)
    q_and_out = variant.n_layers * tokens * variant.n_heads * (variant.score_width + variant.value_width) * width
    return _kv_read_bytes(variant, dtype, batch_size, context_len) + q_and_out


def bytes_per_step(model: ModelSpec, variant: Variant, dtype: str, batch_size: int, context_len: int) -> int:
    """Ideal memory traffic of one decode step (docs/design.md, "Bytes moved per step"); of a multi-token
    step, the same with q_len new tokens per sequence (the cache is still read once per layer).

    Every weight read once (the embedding table only for the batch_size rows looked up), the KV
    cache read by every one of the L attention layers, and the new token's K/V (or latent) written
    by the P producers. Activations are left out: they are small next to weights and cache and
    mostly stay in on-chip caches. This is the numerator of achieved bandwidth, as in gpt-fast's
    ``model_size * tokens/s``.
    """
    width = DTYPE_BYTES[dtype]
    params = param_counts(model, variant)
    tokens = step_tokens(variant, batch_size, context_len)
    weights = (params.total - params.embedding + min(tokens, model.vocab_size) * model.d_model) * width
    kv_written = kv_bytes_per_token(variant, dtype) * tokens
    return weights + _kv_read_bytes(variant, dtype, batch_size, context_len) + kv_written


def flops_per_step(model: ModelSpec, variant: Variant, batch_size: int, context_len: int) -> int:
    """FLOPs of one decode step: 2 per matmul parameter per token (Kaplan et al. 2020, §2.1; q_len tokens per
    sequence in a multi-token step), plus attention's QK^T and PV over each (query, key) pair a layer scores
    (each new token its causal prefix, at most its window), 2 · n_heads · (score width +
    value width) per position per layer: 4 · n_heads · head_dim for K/V attention (Chowdhery et al.
    2022, PaLM, appendix B), 2 · n_heads · (2 d_c + d_h^R) for MLA's absorbed form."""
    params = param_counts(model, variant)
    tokens = step_tokens(variant, batch_size, context_len)
    return tokens * 2 * params.matmul + attention_flops_per_step(variant, batch_size, context_len)


def attention_flops_per_step(variant: Variant, batch_size: int, context_len: int) -> int:
    """FLOPs of core attention in one step, over all L layers: QK^T and PV over each (query, key) pair a
    layer scores (each new token its causal prefix, at most its window; every sequence of a ragged batch
    its own length), 2 · n_heads · (score width + value width) per pair (the attention term of
    :func:`flops_per_step`)."""
    pairs = _attended_pairs(variant, batch_size, context_len)
    return 2 * variant.n_heads * (variant.score_width + variant.value_width) * pairs


FLOAT32_BYTES = 4  # the textbook kernels' scores and probabilities are float32 whatever the weights' dtype


def step_transient(variant: Variant, kernel: KernelMemory | None, new_tokens: int) -> str | None:
    """The transient kind (harness/backends/spec.py, TRANSIENTS) a kernel declares for a step of ``new_tokens``
    per sequence, or None where it declares none."""
    if kernel is None or kernel.transient is None:
        return None
    return kernel.transient.decode if new_tokens == 1 else kernel.transient.multi_token


def gathers(variant: Variant, kernel: KernelMemory | None, new_tokens: int) -> bool:
    """Whether a paged cell's layer attends a gathered copy of its positions (harness/model/attention.py,
    ``_paged``): a backend without a paged kernel, or a multi-token step, which the paged kernels do not take."""
    if variant.page_size is None or kernel is None:
        return False
    return not kernel.paged_in_place or new_tokens > 1


def attention_transient_bytes(
    variant: Variant, dtype: str, positions: int, new_tokens: int, kernel: KernelMemory | None
) -> int:
    """What one sequence's attention holds in one layer beyond its cache, query and output, over ``positions``
    attended positions for ``new_tokens`` new queries, as its kernel declares (docs/backends.md, *Transient
    memory*). H = n_heads, scores = H · new_tokens · positions · 4 (float32):

    - undeclared: scores once (the conservative term every kernel was charged before kernels declared theirs);
    - ``streaming``: nothing that grows with the positions; ``scores``: scores and probabilities, 2 · scores;
    - ``expanded``: those, and K and V repeated to every query head, H · positions · (score width + value width)
      in the weights' dtype;
    - a gathered copy of a paged layer's positions (:func:`gathers`): its K and V, positions · KV heads (MLA: the
      one latent) · (score width + value width) in the cache's dtype. The copy is [B, positions, heads, width]
      seen as [B, heads, positions, width], so with several KV heads a ``scores`` kernel's batched matmul copies
      K, then V, once more into a layout it can batch: positions · KV heads · value width more at its peak.
    """
    scores = variant.n_heads * new_tokens * positions * FLOAT32_BYTES
    kind = step_transient(variant, kernel, new_tokens)
    widths = variant.score_width + variant.value_width
    held = {None: scores, "streaming": 0, "scores": 2 * scores}.get(
        kind, 2 * scores + variant.n_heads * positions * widths * DTYPE_BYTES[dtype]
    )
    if gathers(variant, kernel, new_tokens):
        kv_heads = 1 if variant.mla is not None else variant.n_kv_heads
        held += positions * kv_heads * widths * kv_element_bytes(variant, dtype)
        if kind == "scores" and kv_heads > 1:
            held += positions * kv_heads * variant.value_width * DTYPE_BYTES[dtype]
    return held


def activation_bytes_per_sequence(
    model: ModelSpec, variant: Variant, dtype: str, context_len: int, kernel: KernelMemory | None = None
) -> int:
    """Transient memory one sequence needs during a decode step, beside weights and cache.

    The largest live tensors of the step: per new token the logits row, the SwiGLU hidden (gate and up), the
    residual, normed and projected vectors; and one layer's attention over the most positions a layer holds,
    as the cell's ``kernel`` declares it (:func:`attention_transient_bytes`; None: the conservative term).
    """
    return _activation_bytes(model, variant, dtype, context_len, step_span(variant, context_len)[1], kernel)


def _activation_bytes(
    model: ModelSpec, variant: Variant, dtype: str, context_len: int, new_tokens: int, kernel: KernelMemory | None
) -> int:
    """:func:`activation_bytes_per_sequence` of a sequence that adds ``new_tokens`` positions to context_len's."""
    width = DTYPE_BYTES[dtype]
    longest = max(read_len(window, step_span(variant, context_len)[0], new_tokens) for window in variant.windows)
    per_token = (
        model.vocab_size * width
        + 3 * model.d_ff * width
        + (4 * model.d_model + variant.n_heads * (variant.score_width + variant.value_width)) * width
    )
    return new_tokens * per_token + attention_transient_bytes(variant, dtype, longest, new_tokens, kernel)


def bytes_per_sequence(
    model: ModelSpec, variant: Variant, dtype: str, context_len: int, kernel: KernelMemory | None = None
) -> int:
    """Memory each further sequence of the batch takes: its cache plus its activations."""
    return kv_bytes_per_sequence(variant, dtype, context_len) + activation_bytes_per_sequence(
        model, variant, dtype, context_len, kernel
    )


def marginal_bytes_per_sequence(
    model: ModelSpec,
    variant: Variant,
    dtype: str,
    context_len: int,
    batch_size: int,
    kernel: KernelMemory | None = None,
) -> int:
    """Bytes one more sequence adds near ``batch_size``: :func:`bytes_per_sequence`, except in a paged ragged
    batch, whose later sequences hold only their own pages: there the mean over the sequences within an eighth
    of batch_size of it (at least 4 each side), each its pages, block-table row and activations."""
    if variant.page_size is None or variant.lengths is None or not variant.lengths.ragged:
        return bytes_per_sequence(model, variant, dtype, context_len, kernel)
    reach = max(4, batch_size // 8)
    first, stop = max(1, batch_size - reach), min(MAX_RAGGED_BATCH, batch_size + reach)
    activations = activation_bytes_per_sequence(model, variant, dtype, context_len, kernel)
    lengths = itertools.islice(iter_lengths(variant.lengths, context_len), first, stop)
    held = [_paged_sequence_bytes(variant, dtype, length, context_len) + activations for length in lengths]
    return sum(held) // len(held)


def predicted_max_batch(
    model: ModelSpec,
    variant: Variant,
    dtype: str,
    context_len: int,
    budget_bytes: int,
    workspace_bytes: int = 0,
    kernel: KernelMemory | None = None,
) -> int:
    """Largest batch the budget should hold (docs/design.md, "Max batch under a budget"):

    floor((budget - weights - cache scales - workspace) / (KV bytes per sequence + activations per
    sequence)), the design's formula with a fixed ``workspace_bytes`` (on CUDA cuBLAS's workspace,
    :func:`fixed_workspace_bytes`) and the per-sequence activations, which count the attention transient the
    cell's backend declares (``kernel``, harness/backends/spec.py; None: the conservative term), and the KV
    bytes per sequence counting each windowed layer's min(cache_len, window) positions. 0 when even the
    weights do not fit.
    """
    free = budget_bytes - weight_bytes(model, variant, dtype) - kv_scale_bytes(variant) - workspace_bytes
    if variant.page_size is not None and variant.lengths is not None and variant.lengths.ragged:
        return _ragged_paged_max_batch(model, variant, dtype, context_len, free, kernel)
    if variant.chunk is not None:
        # the chunk's sequence brings chunk tokens of activations, every other sequence one decode token's
        chunk = _activation_bytes(model, variant, dtype, context_len, variant.chunk, kernel)
        decode = _activation_bytes(model, variant, dtype, context_len, 1, kernel)
        free -= chunk - decode
        if free <= 0:
            return 0
        return max(0, free // (kv_bytes_per_sequence(variant, dtype, context_len) + decode))
    return max(0, free // bytes_per_sequence(model, variant, dtype, context_len, kernel))


def _ragged_paged_max_batch(
    model: ModelSpec, variant: Variant, dtype: str, context_len: int, free: int, kernel: KernelMemory | None
) -> int:
    """A ragged batch in pages: sequences join in batch order (harness/lengths.py) while their pages, block-table
    rows and activations (sized for the longest) fit ``free``; exact, since a larger batch only adds sequences.
    At most MAX_RAGGED_BATCH, the largest ragged batch a scenario may ask for."""
    activations = activation_bytes_per_sequence(model, variant, dtype, context_len, kernel)
    batch, used = 0, 0
    for length in iter_lengths(variant.lengths, context_len):
        used += _paged_sequence_bytes(variant, dtype, length, context_len) + activations
        if used > free or batch == MAX_RAGGED_BATCH:
            return batch
        batch += 1
    return batch  # the stream has no end; unreachable


KIB = 1024
# PyTorch's default cuBLAS workspace when CUBLAS_WORKSPACE_CONFIG is unset, as ":SIZE_KiB:COUNT" pairs
# (aten/src/ATen/cuda/CublasHandlePool.cpp): 8 chunks of 4 MiB on Hopper and later, else 2 x 4 MiB + 8 x 16 KiB.
CUBLAS_DEFAULT_CONFIG = {True: ":4096:8", False: ":4096:2:16:8"}


def cublas_workspace_bytes(config: str | None, compute_capability: str | None) -> int:
    """Bytes of cuBLAS's workspace, which PyTorch takes from its caching allocator on the first matmul of a
    stream and keeps: ``CUBLAS_WORKSPACE_CONFIG`` when set (``":4096:8"`` is 8 chunks of 4096 KiB), else
    PyTorch's default for the GPU's compute capability (``"9.0"``)."""
    if not config:
        major = int(compute_capability.split(".")[0]) if compute_capability else 0
        config = CUBLAS_DEFAULT_CONFIG[major >= 9]
    numbers = [int(part) for part in config.split(":") if part.strip().isdigit()]
    return sum(size * KIB * count for size, count in zip(numbers[::2], numbers[1::2], strict=False))


def fixed_workspace_bytes(environment: dict[str, object]) -> int:
    """The fixed workspace a decode step holds beside weights and cache, from a result's fingerprint: cuBLAS's
    on CUDA, none on CPU."""
    if environment.get("device") != "cuda":
        return 0
    env = environment.get("env")
    config = env.get("CUBLAS_WORKSPACE_CONFIG") if isinstance(env, dict) else None
    capability = environment.get("compute_capability")
    return cublas_workspace_bytes(config, capability if isinstance(capability, str) else None)


def train_kv_activation_bytes(variant: Variant, dtype: str, batch_size: int, seq_len: int) -> int:
    """K/V activations one training step keeps for the backward pass: every producer's K and V (MLA: its
    latent and rotary key) for all batch_size · seq_len tokens, in the weights' ``dtype``.

    P · width · bytes · B · T, width as in :func:`kv_bytes_per_token`. Consumers keep none of their own,
    so CLA divides this by the producer ratio, as it does the cache (Brandon et al. 2024, arXiv
    2405.12981, §2.3: CLA also shrinks the K/V activations materialised during training).
    """
    return variant.n_kv_layers * variant.cache_width * DTYPE_BYTES[dtype] * batch_size * seq_len
