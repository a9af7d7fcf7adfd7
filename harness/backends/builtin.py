"""The built-in attention backends, each declared once: what it runs and where its kernel is.

The kernels live in harness/model/attention.py (and harness/model/native.py for the compiled CPU
kernel); these declarations import no torch. Adding a backend is adding one spec here, or, from
outside the repository, one entry point (docs/backends.md).
"""

from __future__ import annotations

import os
import shutil

from harness.backends.spec import FP8_KV_DTYPES, BackendSpec, Transient

ATTENTION = "harness.model.attention"


def native_compiler() -> str | None:
    """The C++ compiler PyTorch's builder would use (``$CXX``, else ``c++``), if it is on the path."""
    return shutil.which(os.environ.get("CXX", "c++"))


def native_unavailable() -> str | None:
    """Why the native kernel cannot be built here (no C++ compiler on the path), or None."""
    if native_compiler() is None:
        return f"cannot be built here (no C++ compiler {os.environ.get('CXX', 'c++')!r} on the path)"
    return None


EAGER = BackendSpec(
    name="eager",
    kernel=f"{ATTENTION}:eager_kernel",
    summary="the textbook reference: K/V repeated to every query head, matmul, mask, softmax, matmul",
    kv_dtypes=FP8_KV_DTYPES,
    paged=True,
    ragged=True,
    auto_candidate=True,
    # repeat_interleave copies K and V to every query head; scores and softmax are float32 tensors
    transient={"*": Transient(decode="expanded", multi_token="expanded")},
)
SDPA = BackendSpec(
    name="sdpa",
    kernel=f"{ATTENTION}:sdpa_kernel",
    summary="torch.nn.functional.scaled_dot_product_attention, with enable_gqa where its kernel reads shared heads",
    auto_rank={"cuda": 0, "*": 0},
    auto_candidate=True,
    refusals={"fp8": "scaled_dot_product_attention takes no float8 K and V"},
    # PyTorch picks the kernel per call: on CPU a decode step runs its flash kernel on the shared heads (results
    # record sdpa_kernel "flash", no K/V copy). Elsewhere, and for masked multi-token steps, what it holds depends on
    # the dtype and the kernel chosen (CUDA float32 GQA copies K/V: harness/model/sdpa.py), so nothing is declared.
    transient={"cpu": Transient(decode="streaming")},
)
GROUPED = BackendSpec(
    name="grouped",
    kernel=f"{ATTENTION}:grouped_kernel",
    summary="queries sharing a KV head stacked against it, no copy; on CPU a split-KV decode kernel",
    kv_dtypes=FP8_KV_DTYPES,
    fp8_devices=("cpu",),
    auto_rank={"cpu": 1},
    auto_candidate=True,
    # no K/V copy; its CPU split-KV decode and its matmul form both hold a row's float32 scores and probabilities
    transient={"*": Transient(decode="scores", multi_token="scores")},
    refusals={
        "fp8_device": "reads a float8 KV cache chunk by chunk only on CPU; on {device!r} it would widen the whole "
        "cache every step"
    },
)
NATIVE = BackendSpec(
    name="native",
    kernel=f"{ATTENTION}:native_kernel",
    summary="attnbench's compiled CPU decode kernel: one pass over the cache, split-KV, online softmax",
    devices=("cpu",),
    paged=True,
    ragged=True,
    graph_capturable=False,
    auto_rank={"cpu": 0},
    auto_candidate=True,
    unavailable="harness.backends.builtin:native_unavailable",
    paged_kernel=f"{ATTENTION}:native_paged",
    # a decode step is one pass with an online softmax (MLA's latent read in place too); several new tokens run
    # grouped's matmul form
    transient={"cpu": Transient(decode="streaming", multi_token="scores")},
    refusals={"fp8": "the native kernel widens float32, bfloat16 and float16 caches only"},
)
FLEX = BackendSpec(
    name="flex",
    kernel=f"{ATTENTION}:flex_kernel",
    summary="torch.nn.attention.flex_attention, compiled; its split-KV decoding kernel for one query",
    devices=("cuda",),
    mla=(),
    auto_candidate=True,
    transient={"cuda": Transient(decode="streaming", multi_token="streaming")},  # a fused, compiled kernel
    refusals={
        "fp8": "FlexAttention takes no float8 K and V here",
        "mla": "the flex backend is not verified for MLA's different key and value widths",
    },
)
NAIVE = BackendSpec(
    name="naive",
    kernel=f"{ATTENTION}:sdpa_kernel",
    summary="MLA's latent decompressed into per-head K and V every step, then sdpa over them",
    mla=("naive",),
    kv_cache=False,
    kv_dtypes=FP8_KV_DTYPES,
    paged=True,
    # declares nothing: it decompresses the latent into per-head K and V of the naive form's widths, which the
    # accounting's kinds (over the absorbed form's score and value widths) do not describe
)

BUILTIN: tuple[BackendSpec, ...] = (EAGER, SDPA, GROUPED, NATIVE, FLEX, NAIVE)
