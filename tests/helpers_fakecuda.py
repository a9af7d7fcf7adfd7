"""A CUDA runtime faked on a CPU machine, strict where torch is: the device functions that need an
ordinal (``set_device``, ``set_per_process_memory_fraction``) refuse an index-less ``cuda`` exactly
as torch does, through torch's own ``_get_device_index(..., optional=False)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch._utils import _get_device_index


@dataclass
class FakeCuda:
    """Calls the code made, with the ordinal each resolved to."""

    device_count: int = 2
    current: int = 0
    set_devices: list[int] = field(default_factory=list)
    fractions: list[tuple[float, int]] = field(default_factory=list)

    def set_device(self, device: Any) -> None:
        index = _get_device_index(device)  # optional=False: torch.device("cuda") raises ValueError
        self.set_devices.append(index)
        self.current = index

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        index = self.current if device is None else _get_device_index(device)
        self.fractions.append((fraction, index))


def install(monkeypatch: pytest.MonkeyPatch, device_count: int = 2) -> FakeCuda:
    fake = FakeCuda(device_count=device_count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: fake.device_count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: fake.current)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fake.set_per_process_memory_fraction)
    return fake
