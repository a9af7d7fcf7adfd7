"""The one registry of attention backends: the built-ins, those installed through the ``attnbench.backends``
entry point group, and a scenario's one-off ``"module:function"`` kernel.

Everything that needs to know which backends exist (the scenario schema, the ``unsupported`` reasons,
``auto``'s candidates, ``plan``, ``doctor``, the decoder's dispatch) reads it here; nothing else lists
backends. Reading the registry imports no torch: an entry point names a :class:`BackendSpec` (or a
function returning one) in a module that does not import torch, and the spec names its kernel by
import path, which only a worker imports (docs/backends.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata

from harness.backends.adapters import ADAPTER_SPECS
from harness.backends.builtin import BUILTIN
from harness.backends.spec import BackendSpec, Transient, find_module, split_path

__all__ = [
    "AUTO",
    "ENTRY_POINT_GROUP",
    "BackendSpec",
    "Registry",
    "Transient",
    "get",
    "name_problem",
    "names",
    "registry",
]

ENTRY_POINT_GROUP = "attnbench.backends"
AUTO = "auto"  # not a backend: the fastest backend that agrees with the reference, chosen per cell


@dataclass(frozen=True)
class Registry:
    specs: tuple[BackendSpec, ...]
    problems: tuple[str, ...]  # entry points that could not be loaded, one line each

    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)


@functools.cache
def registry() -> Registry:
    """The built-ins, then every entry point of the group (loaded once per process), in their order."""
    specs = [*BUILTIN, *ADAPTER_SPECS]
    problems: list[str] = []
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        origin = entry.dist.name if entry.dist is not None else entry.value
        try:
            loaded = entry.load()
            spec = loaded() if callable(loaded) and not isinstance(loaded, BackendSpec) else loaded
        except Exception as exc:  # a broken plugin must not stop the harness: it is listed with the reason
            problems.append(f"entry point {entry.name!r} ({entry.value}): {type(exc).__name__}: {exc}")
            continue
        if not isinstance(spec, BackendSpec):
            kind = type(spec).__name__
            problems.append(f"entry point {entry.name!r} ({entry.value}): gives {kind}, not a BackendSpec")
        elif spec.name in {s.name for s in specs} or spec.name == AUTO or ":" in spec.name:
            problems.append(f"entry point {entry.name!r} ({entry.value}): the name {spec.name!r} is taken")
        else:
            specs.append(BackendSpec(**{**spec.__dict__, "origin": origin}))
    return Registry(tuple(specs), tuple(problems))


def names() -> tuple[str, ...]:
    """Every registered backend's name, built-ins first."""
    return registry().names()


def one_off(path: str) -> BackendSpec:
    """The spec of a scenario's ``backend = "module:function"``: a decode kernel under the plain contract
    (docs/backends.md): K/V caches of the weights' dtype, contiguous, one context length per batch."""
    return BackendSpec(name=path, kernel=path, summary="named by the scenario", multi_token=False, origin="scenario")


def get(name: str) -> BackendSpec:
    """The spec of a registered backend, or of a one-off ``"module:function"``; KeyError with the reason."""
    for spec in registry().specs:
        if spec.name == name:
            return spec
    if split_path(name) is not None:
        return one_off(name)
    raise KeyError(unknown(name))


def unknown(name: str) -> str:
    return (
        f"unknown attention backend {name!r}; expected one of {', '.join(names())}, {AUTO!r}, "
        "or 'module:function' naming a kernel"
    )


def name_problem(name: str) -> str | None:
    """Why a scenario cannot name ``name`` as a backend, or None: checked without importing anything."""
    if name == AUTO or name in names():
        return None
    parts = split_path(name)
    if parts is None:
        return unknown(name)
    top = parts[0].split(".")[0]
    if find_module(top) is None:
        return f"backend {name!r}: no module {top!r} on the Python path"
    return None
