"""The cost model: latency and memory of a cell from its accounted bytes and FLOPs and a few fitted figures.

Latency follows the roofline (Williams et al. 2009, "Roofline: an insightful visual performance model"):
a step moves ``bytes`` at an effective bandwidth and does ``flops`` at an effective rate, and takes the
longer of the two when the two overlap perfectly (``combine = "max"``, a GPU streaming weights while its
tensor cores work) or their sum when they do not (``"sum"``, a single CPU thread that waits for memory
between multiplies). Each of the ``n_layers`` layers adds a fixed launch or dispatch overhead, and the
step one more (embedding, final norm, LM head, the host's call).

Memory is the accounting's weights plus a fixed overhead plus ``batch_size`` times a fitted multiple of
the accounting's bytes per sequence (cache and activations); the largest batch a budget holds follows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Combine = Literal["max", "sum"]


class LatencyModel(BaseModel):
    """Effective figures of one latency (decode step or core attention) on one target."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    bandwidth_gbps: float = Field(gt=0)  # effective bytes per second, 1e9
    tflops: float = Field(gt=0)  # effective FLOP/s, 1e12
    layer_overhead_s: float = Field(ge=0)  # per layer and step
    step_overhead_s: float = Field(ge=0)  # per step
    combine: Combine = "max"  # how memory and compute time add up: overlap (max) or not (sum)

    def latency_s(self, bytes_moved: float, flops: float, n_layers: int) -> float:
        """Seconds of one step: combine(bytes / bandwidth, flops / rate) + n_layers · layer + step overhead."""
        memory_s = bytes_moved / (self.bandwidth_gbps * 1e9)
        compute_s = flops / (self.tflops * 1e12)
        core = max(memory_s, compute_s) if self.combine == "max" else memory_s + compute_s
        return core + n_layers * self.layer_overhead_s + self.step_overhead_s

    def bound(self, bytes_moved: float, flops: float) -> str:
        """Which term dominates: ``"memory"`` or ``"compute"``."""
        return "memory" if bytes_moved / self.bandwidth_gbps >= flops / (self.tflops * 1e3) else "compute"


class MemoryModel(BaseModel):
    """Peak memory of a cell: weights + fixed_bytes + sequence_factor · bytes per sequence · batch."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    fixed_bytes: float  # beside the weights: allocator slack, workspaces, the interpreter's own growth
    sequence_factor: float = Field(gt=0)  # measured bytes per sequence over the accounting's

    def peak_bytes(self, weight_bytes: int, bytes_per_sequence: int, batch_size: int) -> float:
        return weight_bytes + self.fixed_bytes + self.sequence_factor * bytes_per_sequence * batch_size

    def max_batch(self, budget_bytes: int, weight_bytes: int, bytes_per_sequence: int) -> int:
        """floor((budget − weights − fixed) / (sequence_factor · bytes per sequence)), 0 when nothing fits."""
        free = budget_bytes - weight_bytes - self.fixed_bytes
        return max(0, int(free // (self.sequence_factor * bytes_per_sequence)))
