"""Building blocks every attention module shares: RMSNorm and rotary position embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight, computed in float32 (Zhang & Sennrich 2019, eq. 4)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_angles(positions: Tensor, head_dim: int, theta: float) -> Tensor:
    """Rotation angles [T, head_dim // 2] in float32: position · theta^(-2i/head_dim) (RoFormer, eq. 15)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    return torch.outer(positions.float(), inv_freq)


@dataclass(frozen=True)
class Rotation:
    """cos and sin of the rotary angles of one step's positions, each [1, T, 1, head_dim // 2] in float32.

    Computed once per forward pass and shared by the q and k rotations of every layer, as gpt-fast
    shares its table: per-layer trigonometry would add 4 · n_layers small ops to every decode step.
    """

    cos: Tensor
    sin: Tensor

    @classmethod
    def of(cls, angles: Tensor) -> Rotation:
        """From angles [T, head_dim // 2] (see :func:`rope_angles`)."""
        return cls(angles.cos()[None, :, None, :], angles.sin()[None, :, None, :])


def apply_rope(x: Tensor, rotation: Rotation) -> Tensor:
    """Rotate adjacent pairs of x [B, T, heads, head_dim] by the step's rotation, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, T, heads, head_dim/2, 2]
    cos, sin = rotation.cos, rotation.sin  # [1, T, 1, head_dim/2]
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # [B, T, heads, head_dim/2, 2]
    return rotated.flatten(-2).type_as(x)  # [B, T, heads, head_dim]
