"""Self-checks of a cell's numbers: each a named, pass/fail test of an invariant, with the numbers behind it.

A measurement can be wrong without any error: a graph that captured nothing, a bandwidth above
what the memory can deliver, a cold sample faster than a warm one, a GPU shared with another
process, clocks throttled while timing. Each function here tests one such invariant and returns a
:class:`~harness.results.schema.Check`; a failed check marks the cell (its status stays ``ok``) and
the report, the claims check and compare treat it as inconclusive. docs/results.md lists them.

Worker-side checks need the device (graph outputs, the SDPA kernel that ran, NVML); the others
(:func:`derived_checks`) need only the result and the accounting and run in the parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.measure.telemetry import THROTTLING_REASONS
from harness.results.schema import CellMetrics, Check, Summary

if TYPE_CHECKING:
    import torch

    from harness.measure.timing import Captured
    from harness.model.sdpa import SdpaObservation, SdpaPlan
    from harness.variants import Variant

GRAPH_MATCHES_EAGER = "graph_matches_eager"
SDPA_KERNEL = "sdpa_kernel_as_planned"
MLA_LATENT_IN_PLACE = "sdpa_reads_mla_latent_in_place"
ENERGY_COUNTER = "energy_counter_increases"
NO_THROTTLING = "no_throttling"
GPU_NOT_SHARED = "gpu_not_shared"
BANDWIDTH_WITHIN_PEAK = "bandwidth_within_peak"
PEAK_WITHIN_VENDOR = "peak_within_vendor"
COLD_NOT_FASTER = "cold_not_faster_than_warm"
KV_CACHE_AS_ACCOUNTED = "kv_cache_as_accounted"
MEMORY_HOLDS_WEIGHTS_AND_KV = "peak_memory_holds_weights_and_kv"
TRAIN_KV_AS_ACCOUNTED = "train_kv_as_accounted"
TRAIN_PEAK_HOLDS_ACTIVATIONS = "train_peak_holds_activations"
TP_KV_AS_ACCOUNTED = "tp_kv_as_accounted"

# On CPU the peak is a resident set: pages of the weights and cache can be shared or not yet
# counted by the kernel at the moment it is read; allow this much below weights + KV.
CPU_MEMORY_SLACK = 0.02


def graph_output(metric: str, captures: Sequence[Captured]) -> Check | None:
    """The CUDA graphs timed for ``metric`` reproduce their eager outputs within the dtype's tolerance."""
    compared = [c for c in captures if c.output_matches is not None]
    if not compared:
        return None
    worst = max(compared, key=lambda c: (c.output_difference or 0.0) - (c.output_allowed or 0.0))
    failed = sum(1 for c in compared if not c.output_matches)
    detail = (
        f"{metric}: {len(compared) - failed}/{len(compared)} graphs match eager; largest |graph - eager| "
        f"{worst.output_difference:.3g} where {worst.output_allowed:.3g} is allowed"
    )
    return Check(name=GRAPH_MATCHES_EAGER, passed=failed == 0, detail=detail)


# SDPA kernels that read shared KV heads (``enable_gqa``) without repeating K/V per query head: flash
# (CPU and CUDA), cuDNN (CUDA, PyTorch 2.10 and later; what SDPA prefers on Hopper there) and a
# registered out-of-tree kernel. Efficient and math repeat K/V.
SHARED_KV_READERS = frozenset({"flash", "cudnn", "overrideable"})


def expects_shared_kv_read(device_type: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether a fused SDPA kernel that reads shared KV heads without a copy exists for this case:
    CPU flash takes every dtype; CUDA flash and cuDNN take 16-bit dtypes with head_dim <= 256 (a
    multiple of 8)."""
    import torch

    if device_type == "cpu":
        return True
    return dtype in (torch.float16, torch.bfloat16) and head_dim <= 256 and head_dim % 8 == 0


def sdpa_kernel(
    planned: SdpaPlan, seen: SdpaObservation, device_type: str, dtype: torch.dtype, variant: Variant
) -> Check:
    """SDPA ran the kernel the dispatcher said it would, and copied K/V only where no fused kernel reads
    shared KV heads."""
    copies_expected = planned.expand_kv or (planned.kernel == "math" and variant.group_size > 1)
    problems = []
    if seen.kernel != planned.kernel:
        problems.append(f"ran {seen.kernel}, the dispatcher chose {planned.kernel}")
    if seen.kv_copied and not copies_expected:
        problems.append("repeated K/V to every query head though no copy was planned")
    shared = variant.group_size > 1 and expects_shared_kv_read(device_type, dtype, variant.head_dim)
    if shared and (seen.kv_copied or seen.kernel not in SHARED_KV_READERS):
        problems.append(f"a kernel reading shared KV heads exists for {dtype} head_dim {variant.head_dim}")
    where = f"{device_type} {str(dtype).removeprefix('torch.')} head_dim {variant.head_dim}, group {variant.group_size}"
    copied = "K/V repeated per query head" if seen.kv_copied else "no copy of K/V"
    detail = f"{seen.kernel} ({copied}) on {where}" + (f": {'; '.join(problems)}" if problems else "")
    return Check(name=SDPA_KERNEL, passed=not problems, detail=detail)


def mla_latent_read(seen: SdpaObservation, variant: Variant) -> Check:
    """MLA's absorbed form under SDPA read its latent as one shared KV head, not a copy per query head.

    Its keys (latent + rotary key, e.g. 576 wide) and values (the latent, e.g. 512) differ in width
    and exceed what flash and cuDNN take, so SDPA falls back to math, which repeats the latent to every
    head: the timed step is then mostly that copy, not the attention the cache stores for.
    """
    assert variant.mla is not None
    widths = f"keys {variant.mla.latent_width} wide, values {variant.mla.kv_lora_rank}"
    if seen.kv_copied:
        detail = (
            f"{seen.kernel} repeated the latent ({widths}) to each of {variant.n_heads} query heads: the timed step "
            "is mostly that copy; no fused SDPA kernel reads this latent in place"
        )
        return Check(name=MLA_LATENT_IN_PLACE, passed=False, detail=detail)
    return Check(name=MLA_LATENT_IN_PLACE, passed=True, detail=f"{seen.kernel} read the latent ({widths}) in place")


def energy_counter(start_mj: int | None, end_mj: int | None) -> Check:
    """NVML's total-energy counter advanced over the energy window (it is monotonic by definition)."""
    if start_mj is None or end_mj is None:
        return Check(name=ENERGY_COUNTER, passed=True, detail="no energy counter on this GPU (energy not reported)")
    return Check(
        name=ENERGY_COUNTER,
        passed=end_mj > start_mj,
        detail=f"counter went from {start_mj} to {end_mj} mJ over the energy window",
    )


def throttling(reasons: Sequence[str]) -> Check:
    """No power or thermal throttling while timing (NVML clock-event reasons, idle left out)."""
    throttled = sorted(set(reasons) & THROTTLING_REASONS)
    seen = ", ".join(reasons) or "none"
    return Check(name=NO_THROTTLING, passed=not throttled, detail=f"clock-event reasons while timing: {seen}")


def gpu_not_shared(before: list[int] | None, after: list[int] | None) -> Check:
    """No other process on the GPU before or after the timed windows (NVML's running processes)."""
    if before is None or after is None:
        return Check(name=GPU_NOT_SHARED, passed=True, detail="NVML cannot list processes here (not checked)")
    others = sorted(set(before) | set(after))
    detail = f"other processes on the GPU: {', '.join(map(str, others))}" if others else "no other process on the GPU"
    return Check(name=GPU_NOT_SHARED, passed=not others, detail=detail)


# ---------------------------------------------------------------------------------------------
# Checks from the result and the accounting alone


def _faster(cold: Summary, warm: Summary) -> bool:
    """Cold significantly faster than warm: the cold median's 95% interval lies wholly below the warm one's."""
    return cold.ci_high < warm.ci_low


def derived_checks(
    metrics: CellMetrics,
    *,
    peak_gbps: float | None,
    vendor_gbps: float | None,
    cache_bytes: int | None,
    weight_bytes: int,
    device: str,
) -> list[Check]:
    """The checks a cell's metrics must pass given the target's peaks, its last-level cache (L2 on a GPU)
    of ``cache_bytes`` and the weights' size from the accounting."""
    out: list[Check] = []
    if peak_gbps:
        rates = {
            "decode": metrics.bandwidth_gbps,
            "core attention": metrics.attention_bandwidth_gbps,
        }
        measured = {name: rate for name, rate in rates.items() if rate is not None}
        if measured:
            over = {name: rate for name, rate in measured.items() if rate > peak_gbps}
            parts = ", ".join(f"{name} {rate:.1f} GB/s" for name, rate in measured.items())
            out.append(
                Check(
                    name=BANDWIDTH_WITHIN_PEAK,
                    passed=not over,
                    detail=f"{parts} against a measured peak of {peak_gbps:.1f} GB/s",
                )
            )
    if peak_gbps and vendor_gbps:
        out.append(
            Check(
                name=PEAK_WITHIN_VENDOR,
                passed=peak_gbps <= vendor_gbps,
                detail=f"measured peak {peak_gbps:.0f} GB/s, vendor figure {vendor_gbps:.0f} GB/s",
            )
        )
    if cache_bytes:
        pairs = (
            ("decode", metrics.decode_latency_cold_s, metrics.decode_latency_s, metrics.bytes_per_step),
            (
                "core attention",
                metrics.attention_latency_cold_s,
                metrics.attention_latency_s,
                metrics.attention_bytes_per_step,
            ),
        )
        for name, cold, warm, working_set in pairs:
            if cold is None or warm is None or working_set > cache_bytes:
                continue  # a working set beyond the cache comes from memory warm or cold: nothing to test
            out.append(
                Check(
                    name=COLD_NOT_FASTER,
                    passed=not _faster(cold, warm),
                    detail=(
                        f"{name}: cold median {cold.median * 1e3:.4g} ms, warm {warm.median * 1e3:.4g} ms; "
                        f"working set {working_set} B within a {cache_bytes} B cache"
                    ),
                )
            )
    if metrics.kv_cache_bytes is not None:
        out.append(
            Check(
                name=KV_CACHE_AS_ACCOUNTED,
                passed=metrics.kv_cache_bytes == metrics.kv_cache_bytes_expected,
                detail=f"allocated {metrics.kv_cache_bytes} B, accounting {metrics.kv_cache_bytes_expected} B",
            )
        )
    if metrics.peak_memory_bytes is not None and metrics.kv_cache_bytes is not None:
        floor = weight_bytes + metrics.kv_cache_bytes
        allowed = floor * (1 - CPU_MEMORY_SLACK) if device == "cpu" else floor
        out.append(
            Check(
                name=MEMORY_HOLDS_WEIGHTS_AND_KV,
                passed=metrics.peak_memory_bytes >= allowed,
                detail=f"peak {metrics.peak_memory_bytes} B, weights + KV cache {floor} B",
            )
        )
    if metrics.train_step is not None:
        out += train_step_checks(metrics, weight_bytes=weight_bytes, device=device)
    measured_tp = [m for m in metrics.tp if m.ranks]
    if measured_tp:
        off = [
            f"tp {m.tp} rank {r.rank}: {r.kv_cache_bytes} B, accounting {m.kv_cache_bytes_per_rank_expected} B"
            for m in measured_tp
            for r in m.ranks
            if r.kv_cache_bytes != m.kv_cache_bytes_per_rank_expected
        ]
        degrees = ", ".join(str(m.tp) for m in measured_tp)
        detail = "; ".join(off) if off else f"every rank's cache as accounted at tp {degrees}"
        out.append(Check(name=TP_KV_AS_ACCOUNTED, passed=not off, detail=detail))
    return out


def train_step_checks(metrics: CellMetrics, *, weight_bytes: int, device: str) -> list[Check]:
    """A training step's K/V activations equal the accounting, and its peak holds the weights and every
    activation autograd saved (all alive at the end of the forward pass)."""
    step = metrics.train_step
    if step is None or step.kv_activation_bytes is None:
        return []
    out = [
        Check(
            name=TRAIN_KV_AS_ACCOUNTED,
            passed=step.kv_activation_bytes == step.kv_activation_bytes_expected,
            detail=(
                f"K/V activations saved for backward {step.kv_activation_bytes} B, "
                f"accounting {step.kv_activation_bytes_expected} B"
            ),
        )
    ]
    if step.peak_memory_bytes is not None and step.saved_activation_bytes is not None:
        floor = weight_bytes + step.saved_activation_bytes
        allowed = floor * (1 - CPU_MEMORY_SLACK) if device == "cpu" else floor
        out.append(
            Check(
                name=TRAIN_PEAK_HOLDS_ACTIVATIONS,
                passed=step.peak_memory_bytes >= allowed,
                detail=f"training peak {step.peak_memory_bytes} B, weights + saved activations {floor} B",
            )
        )
    return out
