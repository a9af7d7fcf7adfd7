"""Byte sizes and dtype widths: the two unit conversions every stage needs (no torch import)."""

from __future__ import annotations

import re
from fractions import Fraction

# Bytes per element of the dtypes a scenario may name.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes per element of the KV-cache dtypes a variant may name beside the weights' dtype.
KV_DTYPE_BYTES: dict[str, int] = {"float8_e4m3fn": 1, "float8_e5m2": 1}

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
# The largest size a byte count holds (a signed 64-bit integer, as torch and the OS report sizes).
MAX_BYTES = 2**63 - 1
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """Parse ``"40GiB"``, ``"512 MB"``, ``"1.5GiB"`` or a plain integer into a byte count.

    Raises ValueError with the reason when the text is not a positive size.
    """
    if isinstance(text, bool):
        raise ValueError("expected a size such as '40GiB', got a boolean")
    if not isinstance(text, int | str):  # a file may hold anything here
        raise ValueError(f"expected a size such as '40GiB' or a whole number of bytes, got {type(text).__name__}")
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise ValueError(f"cannot parse size {text!r}; expected e.g. '40GiB' or '512MB'")
        unit = match.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {unit!r} in {text!r}; use B, KB, MB, GB, KiB, MiB, GiB, TiB")
        size = int(Fraction(match.group(1)) * _SIZE_UNITS[unit])  # exact, however many digits
    if size > MAX_BYTES:
        raise ValueError(f"size {text!r} is larger than {MAX_BYTES} bytes")
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


def format_bytes(n: float) -> str:
    """Human-readable binary size: ``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
