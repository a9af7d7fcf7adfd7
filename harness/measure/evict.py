"""Evicting exactly the memory a step reads from the CPU's caches (csrc/evict_lines.c, loaded with ctypes).

A cold sample must read its weights and KV cache from DRAM. Sweeping a buffer larger than the
last-level cache does that on any CPU, but its cost grows with the cache: on a server whose
last-level cache is hundreds of megabytes, a sweep takes tens of milliseconds per sample, far more
than the step it prepares. Flushing the step's own tensors line by line costs in proportion to
what the step reads instead, and leaves the rest of the machine's state (TLBs, the code) as a
serving loop would find it.

The C source is compiled on first use with the system C compiler (``$CC``, else ``cc``), for this
CPU (``-march=native``), into the attnbench cache folder under a name hashed from the source, the
compiler and the CPU's flags; a build takes well under a second. Where it cannot be built (no
compiler, an architecture without a flush instruction) :func:`load` returns None and callers fall
back to the sweep (:class:`harness.measure.flush.CpuCacheFlusher`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "evict_lines.c"
CFLAGS = ("-O2", "-march=native", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 60


def compiler() -> str | None:
    """The C compiler to build with (``$CC``, else ``cc``), if it is on the path."""
    return shutil.which(os.environ.get("CC", "cc"))


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return platform.processor()


def _library_path(cc: str) -> Path:
    from harness.measure.bandwidth import default_cache_dir

    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cc.encode(), " ".join(CFLAGS).encode(), platform.machine().encode()):
        digest.update(part)
    digest.update(_cpu_flags().encode())
    return default_cache_dir() / "native" / f"evict_lines_{digest.hexdigest()[:12]}.so"


def _build(cc: str, library: Path) -> None:
    """Compile to a temporary name beside ``library``, then rename: concurrent builds never see half a file."""
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=library.parent, prefix=f".{library.name}.", suffix=".tmp")
    os.close(fd)
    try:
        subprocess.run(
            [cc, *CFLAGS, "-o", tmp, str(SOURCE)],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(tmp, library)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled eviction library (built on first use), or None where it cannot be built here."""
    cc = compiler()
    if cc is None:
        return None
    library = _library_path(cc)
    try:
        if not library.exists():
            _build(cc, library)
        lib = ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.attnbench_evict.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    lib.attnbench_evict.restype = None
    return lib


def _spans(tensors: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    """(address, bytes) of each distinct storage the tensors live in, CPU tensors only."""
    spans: dict[int, int] = {}
    for tensor in tensors:
        if tensor.device.type != "cpu":
            raise ValueError(f"can only evict CPU memory, got a tensor on {tensor.device}")
        storage = tensor.untyped_storage()
        spans[storage.data_ptr()] = max(spans.get(storage.data_ptr(), 0), storage.nbytes())
    return sorted(spans.items())


class CpuLineEvictor:
    """``evictor()`` flushes every cache line of the given tensors' storage from all CPU cache levels."""

    def __init__(self, tensors: Iterable[torch.Tensor], library: ctypes.CDLL) -> None:
        self._spans = _spans(tensors)
        self._evict = library.attnbench_evict
        self.nbytes = sum(size for _, size in self._spans)

    def __call__(self) -> None:
        for address, size in self._spans:
            self._evict(address, size)
