"""Adapters for production decode kernels: FlashInfer (decode and MLA), FlashAttention's
``flash_attn_with_kvcache`` and FlashMLA.

Each runs on CUDA only and needs its package; where the package is not installed (``requires``, found
without importing it) or a cell needs what the kernel does not take, the cell is ``unsupported`` with
the reason. The kernels, which convert attnbench's cache layout to each library's, are in
harness/model/adapters.py.
"""

from __future__ import annotations

from harness.backends.spec import BackendSpec, Transient

ADAPTERS = "harness.model.adapters"
HALF = ("bfloat16", "float16")
# Every library here documents a fused kernel: tiles of K/V through on-chip memory with an online softmax, no
# scores in device memory; the adapters hand it views of the cache (harness/model/adapters.py), never a copy.
FUSED = {"cuda": Transient(decode="streaming", multi_token="streaming")}

FLASHINFER_DECODE = BackendSpec(
    name="flashinfer",
    kernel=f"{ADAPTERS}:flashinfer_decode",
    summary="FlashInfer's single-request decode kernel (single_decode_with_kv_cache), one call per sequence",
    devices=("cuda",),
    dtypes=HALF,
    mla=(),
    windows=False,
    multi_token=False,
    requires=("flashinfer",),
    origin="adapter",
    transient=FUSED,
    refusals={"mla": "FlashInfer's decode kernel takes K and V of one width; MLA runs on flashinfer-mla or flashmla"},
)
FLASHINFER_MLA = BackendSpec(
    name="flashinfer-mla",
    kernel=f"{ADAPTERS}:flashinfer_mla",
    summary="FlashInfer's MLA decode kernel (BatchMLAPagedAttentionWrapper) over the latent, one position a page",
    devices=("cuda",),
    dtypes=HALF,
    heads=(),
    windows=False,
    multi_token=False,
    graph_capturable=False,  # its wrapper captures only when built for graphs, with fixed buffers
    requires=("flashinfer",),
    origin="adapter",
    transient=FUSED,
)
FLASH_ATTN = BackendSpec(
    name="flash-attn",
    kernel=f"{ADAPTERS}:flash_attn_kvcache",
    summary="FlashAttention's flash_attn_with_kvcache over the cache as it is (batch, position, head, width)",
    devices=("cuda",),
    dtypes=HALF,
    mla=(),
    windows=False,
    requires=("flash_attn",),
    origin="adapter",
    transient=FUSED,
    refusals={"mla": "flash_attn_with_kvcache takes K and V of one width; MLA runs on flashinfer-mla or flashmla"},
)
FLASH_MLA = BackendSpec(
    name="flashmla",
    kernel=f"{ADAPTERS}:flash_mla",
    summary="FlashMLA's flash_mla_with_kvcache over a paged latent cache of 64-position pages, read in place",
    devices=("cuda",),
    paged=True,
    page_sizes=(64,),
    contiguous=False,
    paged_kernel=f"{ADAPTERS}:flash_mla_paged",
    dtypes=HALF,
    heads=(),
    cla=True,
    windows=False,
    multi_token=False,
    requires=("flash_mla",),
    origin="adapter",
    transient=FUSED,
)

ADAPTER_SPECS: tuple[BackendSpec, ...] = (FLASHINFER_DECODE, FLASHINFER_MLA, FLASH_ATTN, FLASH_MLA)
