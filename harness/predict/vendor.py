"""Figures from vendors' data sheets, for a target that has no calibration yet (an H100 before any GPU result).

A prediction from these assumes the data-sheet bandwidth and dense FLOP/s are reached and that launches
cost nothing, so it is a floor on latency, and every output that uses it says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.accounting import cublas_workspace_bytes
from harness.hardware import DATASHEET_BANDWIDTH_GBPS


@dataclass(frozen=True)
class VendorFigures:
    bandwidth_gbps: float  # memory bandwidth, 1e9 bytes/s
    tensor_tflops: float  # dense bfloat16/float16 tensor-core FLOP/s, 1e12 (without sparsity)
    fp32_tflops: float  # dense float32 FLOP/s without tensor cores, 1e12
    compute_capability: str  # for cuBLAS's default workspace (harness/accounting.py)
    source: str


# Dense FLOP/s from NVIDIA's data sheets (the sparsity figures halved): H100 SXM5 and H200 SXM 989 TFLOPS
# bfloat16, 67 float32; H100 PCIe 756 and 51; H100 NVL 835 and 60; A100 312 and 19.5.
_FLOPS: dict[str, tuple[float, float, str]] = {
    "nvidia-a100-sxm4-40gb": (312.0, 19.5, "8.0"),
    "nvidia-a100-pcie-40gb": (312.0, 19.5, "8.0"),
    "nvidia-a100-sxm4-80gb": (312.0, 19.5, "8.0"),
    "nvidia-a100-80gb-pcie": (312.0, 19.5, "8.0"),
    "nvidia-h100-80gb-hbm3": (989.0, 67.0, "9.0"),
    "nvidia-h100-pcie": (756.0, 51.0, "9.0"),
    "nvidia-h100-nvl": (835.0, 60.0, "9.0"),
    "nvidia-h200": (989.0, 67.0, "9.0"),
    "nvidia-h200-nvl": (835.0, 60.0, "9.0"),
}


def vendor_figures(target: str) -> VendorFigures | None:
    """The data-sheet figures of a known GPU target id (harness/hardware.py), or None."""
    if target not in _FLOPS or target not in DATASHEET_BANDWIDTH_GBPS:
        return None
    tensor, fp32, capability = _FLOPS[target]
    return VendorFigures(
        bandwidth_gbps=DATASHEET_BANDWIDTH_GBPS[target],
        tensor_tflops=tensor,
        fp32_tflops=fp32,
        compute_capability=capability,
        source="vendor data sheet",
    )


def vendor_targets() -> list[str]:
    return sorted(t for t in _FLOPS if t in DATASHEET_BANDWIDTH_GBPS)


def default_workspace_bytes(figures: VendorFigures) -> int:
    return cublas_workspace_bytes(None, figures.compute_capability)
