"""8-bit KV caches: float8 storage with a float32 scale per cache tensor or per KV head.

A cached value x is stored as q = saturate(x / s) in float8 and read back as x' = q · s (Micikevicius
et al. 2022, "FP8 Formats for Deep Learning", §4: per-tensor scaling). ``s`` is one float32 for the
whole tensor, or one per KV head, broadcast over batch, positions and head_dim. Casting to float8
does not saturate (e4m3fn has no infinity: an overflow becomes NaN), so values are clamped to the
format's largest finite value first.
"""

from __future__ import annotations

import torch
from torch import Tensor

FP8_DTYPES: dict[str, torch.dtype] = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES.values()


def _per_head(scale: Tensor) -> Tensor:
    """A scale [n] (n = 1 or n_kv_heads) as [1, n, 1, 1], to broadcast over [B, heads, positions, width]."""
    return scale.view(1, -1, 1, 1)


def quantize(x: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """x [B, heads, T, width] in float8 ``dtype``: saturate(x / scale), computed in float32."""
    largest = torch.finfo(dtype).max
    return (x.float() / _per_head(scale)).clamp_(-largest, largest).to(dtype)


def dequantize(q: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The values a float8 cache slice q [B, heads, S, width] stands for, in ``dtype``: q · scale."""
    return (q.float() * _per_head(scale)).to(dtype)


def fit_scale(x: Tensor, dtype: torch.dtype, per_head: bool) -> Tensor:
    """The scale that maps the largest |x| onto the format's largest value: amax / max, float32.

    x: [B, heads, T, width]. Returns [heads] with ``per_head``, else [1]. A zero amax gives scale 1.
    """
    dims = (0, 2, 3) if per_head else (0, 1, 2, 3)
    amax = x.float().abs().amax(dim=dims).reshape(-1)  # [heads] or [1]
    scale = amax / torch.finfo(dtype).max
    return torch.where(scale > 0, scale, torch.ones_like(scale))
