"""What an attention backend declares about itself: where it runs and which attention it can compute.

A :class:`BackendSpec` is plain data and imports no torch, so that the parent process (scenario
validation, ``plan``, the ``unsupported`` reasons, ``attnbench backends``) can read every backend's
capabilities; only a worker resolves its ``kernel`` (a ``"module:function"`` import path) and calls it.
docs/backends.md documents the kernel contract.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
FP8_KV_DTYPES: tuple[str, ...] = ("float8_e4m3fn", "float8_e5m2")
HEAD_LAYOUTS: tuple[str, ...] = ("mha", "gqa", "mqa")
# What a kernel holds while one layer attends, beyond its inputs and its output (docs/backends.md, *Transient
# memory*): nothing that grows with the positions; float32 scores and probabilities per (query head, new token,
# position); or those and K and V repeated to every query head, in the weights' dtype.
TRANSIENTS: tuple[str, ...] = ("streaming", "scores", "expanded")


@dataclass(frozen=True)
class Transient:
    """The memory a kernel holds while one layer attends, per step form: one new query per sequence
    (``decode``) or several (``multi_token``: a verification step, a prefill chunk, a prefill). Each is one of
    TRANSIENTS, or None where undeclared: the accounting then charges its conservative term."""

    decode: str | None = None
    multi_token: str | None = None

    def __post_init__(self) -> None:
        for form, kind in (("decode", self.decode), ("multi_token", self.multi_token)):
            if kind is not None and kind not in TRANSIENTS:
                raise ValueError(f"transient.{form} {kind!r} is not one of {', '.join(TRANSIENTS)}")


@dataclass(frozen=True)
class KernelMemory:
    """What one cell's attention holds beside weights and cache, from its backend's declaration on its device:
    the kernel's ``transient``, and whether the backend's paged kernel reads a paged cache in place."""

    transient: Transient | None  # None: the backend declares nothing (conservative accounting)
    paged_in_place: bool  # a paged decode step is read through the block table, not from a gathered copy


@dataclass(frozen=True)
class BackendSpec:
    """One attention backend: its name, what it runs on, which cells it can compute, and its kernel."""

    name: str
    kernel: str  # "module:function" of the kernel (docs/backends.md), imported in the worker on first use
    summary: str = ""  # one line for `attnbench backends`
    devices: tuple[str, ...] | None = None  # device types it runs on ("cpu", "cuda"); None: any torch runs on
    dtypes: tuple[str, ...] = DTYPES  # query / weight dtypes
    kv_dtypes: tuple[str, ...] = ()  # float8 cache formats it reads, with their scales
    fp8_devices: tuple[str, ...] | None = None  # where it reads them (None: wherever it runs)
    heads: tuple[str, ...] = HEAD_LAYOUTS  # head layouts: KV heads shared by n_heads / n_kv_heads queries
    cla: bool = True  # consumer layers call it with their producer's cache
    mla: tuple[str, ...] = ("absorbed",)  # MLA forms: "absorbed" (latent as keys), "naive" (decompressed)
    kv_cache: bool = True  # runs variants that cache K and V (False: an MLA-only form)
    windows: bool = True  # sliding-window layers (a ring buffer of the window's positions)
    paged: bool = False  # paged caches (harness/model/paged.py)
    page_sizes: tuple[int, ...] | None = None  # the page sizes it reads (None: any)
    contiguous: bool = True  # contiguous caches (False: a paged cache only)
    ragged: bool = False  # ragged batches: a ``lengths`` per sequence
    multi_token: bool = True  # several new queries per sequence, causal among themselves
    graph_capturable: bool = True  # its step can be captured in a CUDA graph
    auto_rank: Mapping[str, int] = field(default_factory=dict)  # device type ("*": any other) -> order auto starts in
    auto_candidate: bool = False  # timed by `auto` among the backends it picks from
    requires: tuple[str, ...] = ()  # importable modules it needs (found without importing them)
    unavailable: str | None = None  # "module:function" () -> str | None: why it cannot run here, torch-free
    refusals: Mapping[str, str] = field(default_factory=dict)  # wording of a refusal: "fp8", "mla"
    paged_kernel: str | None = None  # "module:function" reading a paged cache in place (else a gathered copy)
    # device type ("*": any other) -> what its kernel holds while one layer attends; none: the conservative term
    transient: Mapping[str, Transient] = field(default_factory=dict)
    origin: str = "built-in"  # "built-in", the distribution of an entry point, or "scenario"

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices

    def where(self) -> str:
        """Where it runs, as a refusal names it: "needs CUDA", "runs on CPU only", ..."""
        if self.devices == ("cuda",):
            return "needs CUDA"
        if self.devices == ("cpu",):
            return "runs on CPU only"
        return f"runs on {', '.join(self.devices or ())} only"

    def kernel_memory(self, device_type: str | None) -> KernelMemory:
        """What its kernel holds on a device of this type (None: unknown, only a ``"*"`` declaration counts)."""
        declared = self.transient.get(device_type) if device_type is not None else None
        return KernelMemory(
            transient=declared if declared is not None else self.transient.get("*"),
            paged_in_place=self.paged_kernel is not None,
        )

    def missing(self) -> str | None:
        """Why it cannot run on this machine at all (a module it needs is not installed, no compiler), or None.

        Reads no torch and imports none of the modules it needs: ``importlib.util.find_spec`` only finds them.
        """
        for module in self.requires:
            if find_module(module) is None:
                return f"needs the {module!r} package, which is not installed"
        if self.unavailable is not None:
            reason: str | None = resolve(self.unavailable)()
            return reason
        return None


def find_module(module: str) -> object | None:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package that cannot be imported, or an empty name
        return None


def split_path(path: str) -> tuple[str, str] | None:
    """``"pkg.mod:attr"`` -> ``("pkg.mod", "attr")``; None where it is not of that form."""
    module, sep, attr = path.partition(":")
    parts = module.split(".") + attr.split(".")
    if not sep or not all(part.isidentifier() for part in parts):
        return None
    return module, attr


def resolve(path: str) -> Callable[..., Any]:
    """The object a ``"module:function"`` path names (``attr.sub`` walks attributes); ImportError if absent."""
    parts = split_path(path)
    if parts is None:
        raise ImportError(f"{path!r} is not of the form 'module:function'")
    module, attr = parts
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ImportError(f"module {module!r} has no {attr!r}") from None
    if not callable(obj):
        raise ImportError(f"{path!r} is not callable")
    return obj
