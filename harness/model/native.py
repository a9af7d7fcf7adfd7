"""attnbench's compiled CPU decode-attention kernel (csrc/decode_attention.cpp): build, load, call.

The kernel is C++ compiled on first use with PyTorch's extension builder (ninja and the system C++
compiler) for the CPU it runs on (``-march=native``), and cached in PyTorch's extension folder
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The build takes about 20 s on a
2-core machine, once per source, compiler flags, CPU and PyTorch version; later processes only load
the library. It registers the operators ``torch.ops.attnbench.decode_attention`` and
``torch.ops.attnbench.paged_decode_attention`` (the same kernel reading pages through a block table).

``available()`` says, without building, whether a build can be tried (a C++ compiler is on the
path); ``load()`` builds or loads it and raises :class:`NativeUnavailable` with the reason when it
cannot.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from harness.backends.builtin import native_compiler

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
# head_dim must be a multiple of this (two vectors of eight float32 lanes per step).
HEAD_DIM_MULTIPLE = 16
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# -fopenmp: at::parallel_for in the kernel runs on PyTorch's OpenMP threads (the library resolves
# libgomp.so.1 to the copy PyTorch has already loaded).
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
# PyTorch's builder holds a lock file in the build folder while it builds, and a second process
# waits for that file to go, however long. A build killed half-way (a worker ended by Ctrl-C) leaves
# it behind. A build takes well under a minute, so a lock older than this is such a leftover.
STALE_LOCK_S = 300.0
LOCK_POLL_S = 0.5


class NativeUnavailable(RuntimeError):
    """The compiled kernel cannot be built or loaded here; the message says why."""


def compiler() -> str | None:
    """The C++ compiler PyTorch's builder would use (``$CXX``, else ``c++``), if it is on the path."""
    return native_compiler()


def available() -> bool:
    """Whether a build can be tried here (a C++ compiler is on the path); does not build."""
    return compiler() is not None


def _build_name() -> str:
    """Extension name, unique per source, flags, CPU and PyTorch build: a cached library built with
    ``-march=native`` on one CPU must not be loaded on another."""
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_flags().encode())
    return f"attnbench_decode_{digest.hexdigest()[:12]}"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), or the processor name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def load() -> None:
    """Build (first time) and load the kernel into this process; NativeUnavailable if it cannot."""
    if not available():
        raise NativeUnavailable(
            f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on the path to build the native kernel"
        )
    from torch.utils.cpp_extension import load as build_and_load

    _put_ninja_on_path()
    name = _build_name()
    _clear_stale_lock(_build_lock(name))
    try:
        build_and_load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # compiler errors, a missing ninja, a failed dlopen: all mean "not here"
        first_line = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        raise NativeUnavailable(f"the native kernel could not be built: {first_line}") from exc


def _build_lock(name: str) -> Path:
    """The lock file PyTorch's builder holds while it builds extension ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / "lock"


def _clear_stale_lock(lock: Path) -> None:
    """Wait while another process builds (its lock is young); remove a lock older than STALE_LOCK_S."""
    said = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_LOCK_S:
            print(
                f"attnbench: removing {lock}, left {age:.0f} s ago by a native kernel build that did not finish",
                file=sys.stderr,
            )
            lock.unlink(missing_ok=True)
            return
        if not said:
            print(
                f"attnbench: waiting for {lock}: another process is building the native kernel "
                f"(a lock left by a killed build is removed once it is {STALE_LOCK_S:.0f} s old)",
                file=sys.stderr,
            )
            said = True
        time.sleep(LOCK_POLL_S)


def _put_ninja_on_path() -> None:
    """PyTorch's builder runs ``ninja`` from PATH; the ``ninja`` package installs it beside this Python,
    which is not on PATH when a virtual environment's scripts are run without activating it."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def supports(q: Tensor, k: Tensor, v: Tensor | None = None) -> str | None:
    """Why the kernel cannot run this decode step, or None if it can."""
    if q.device.type != "cpu":
        return f"tensors are on {q.device.type!r}, the native kernel runs on CPU"
    if q.shape[2] != 1:
        return f"the native kernel takes one new query per sequence, got {q.shape[2]}"
    if q.shape[-1] % HEAD_DIM_MULTIPLE:
        return f"the native kernel needs head_dim a multiple of {HEAD_DIM_MULTIPLE}, got {q.shape[-1]}"
    if v is not None and v.shape[-1] % HEAD_DIM_MULTIPLE:
        return f"the native kernel needs V's width a multiple of {HEAD_DIM_MULTIPLE}, got {v.shape[-1]}"
    if k.dtype not in DTYPES:
        return f"the native kernel takes float32, bfloat16 or float16 caches, got {k.dtype}"
    return None


def decode_attention(q: Tensor, k: Tensor, v: Tensor, n_splits: int = 0, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ · scale) v for one new query per sequence over every position of k and v.

    q: [B, n_heads, 1, head_dim]; k: [B, n_kv_heads, n_valid, head_dim], v: [B, n_kv_heads, n_valid, v_dim],
    contiguous in their last dim with one position stride (slices of the cache; v may be the first v_dim
    columns of k's rows, as MLA's latent is). ``n_splits`` splits per (sequence, KV head) row; 0 lets the
    kernel choose. ``scale`` defaults to 1/sqrt(head_dim). Returns [B, n_heads, 1, v_dim] in q's dtype.
    ValueError for a step it does not take.
    """
    reason = supports(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    return run(q, k, v, n_splits, scale)


def run(q: Tensor, k: Tensor, v: Tensor, n_splits: int = 0, scale: float | None = None) -> Tensor:
    """decode_attention for a step the caller has already checked with :func:`supports`."""
    load()
    return torch.ops.attnbench.decode_attention(q, k, v, n_splits, scale)


def run_paged(
    q: Tensor,
    k_pool: Tensor,
    v_pool: Tensor,
    block_table: Tensor,
    starts: Tensor,
    stops: Tensor,
    n_splits: int = 0,
    scale: float | None = None,
) -> Tensor:
    """The kernel over a paged cache: q [B, n_heads, 1, head_dim]; pools [n_pages, n_kv_heads, page_size,
    head_dim] (K) and [..., v_dim] (V); block_table [B, width] int64; sequence b attends positions starts[b]
    .. stops[b] - 1, position t in the page of table entry (t // page_size) mod width
    (harness/model/paged.py). The caller has checked the step with :func:`supports` (q against the pools).
    ``scale`` as in :func:`decode_attention`. Returns [B, n_heads, 1, v_dim] in q's dtype."""
    load()
    return torch.ops.attnbench.paged_decode_attention(q, k_pool, v_pool, block_table, starts, stops, n_splits, scale)
