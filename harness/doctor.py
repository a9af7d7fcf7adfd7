"""``attnbench doctor``: every behaviour of the measuring code that only a real device can show, checked on it.

Unit tests run on any CPU with fakes standing in for CUDA; this runs the real thing, each check in
its own isolated worker (a crash or a hung device fails that check, not the doctor), and prints a
table. On a CUDA device it covers workers starting CUDA and classifying out-of-memory, the allocator
cap the max-batch probes use, graph capture of the decode step and core attention for every backend
(checked against eager), event timing on the selected device, the L2 flush's effect, which SDPA
kernel runs per dtype and head dim, FlexAttention compiled and captured, ``auto``'s choice, the peak
probe against the vendor's figure, the max-batch search against its prediction, and NVML (the GPU
found by UUID, an energy counter that advances). On a CPU it runs the subset that applies there.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.hardware import is_cuda
from harness.measure.protocol import CellRequest, CheckRequest, Entry, Timing

if TYPE_CHECKING:
    from harness.variants import Variant

Status = Literal["pass", "fail", "skip"]
CHECK_TIMEOUT_S = 240.0

TINY_MODEL: dict[str, Any] = {"d_model": 512, "n_layers": 4, "d_ff": 1376, "vocab_size": 8192, "dtype": "bfloat16"}


@dataclass(frozen=True)
class Finding:
    """The outcome of one doctor check."""

    name: str
    status: Status
    detail: str


def _finding(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "status": "pass" if passed else "fail", "detail": detail}


def _skip(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "status": "skip", "detail": why}


# ---------------------------------------------------------------------------------------------
# Checks: module-level functions of a CheckRequest (harness/measure/protocol.py), each run in a worker


def check_worker_starts(request: CheckRequest) -> list[dict[str, Any]]:
    import torch

    from harness.hardware import detect_target
    from harness.measure.cell_worker import enter_device

    device = request.device
    enter_device(device)
    x = torch.ones(1024, device=device)
    total = float(x.sum())
    where = torch.cuda.get_device_name(torch.cuda.current_device()) if is_cuda(device) else "cpu"
    return [_finding("worker starts on the device", total == 1024.0, f"target {detect_target(device)} ({where})")]


def allocates_too_much(request: CheckRequest) -> dict[str, Any]:
    """Allocate far more than the device has (or, with ``fraction``, than a capped allocator allows)."""
    import torch

    from harness.measure.cell_worker import enter_device

    device = request.device
    enter_device(device)
    if is_cuda(device):
        total = torch.cuda.get_device_properties(device).total_memory
        if request.fraction:
            torch.cuda.set_per_process_memory_fraction(request.fraction, device)
            torch.empty(int(total * request.fraction * 2), dtype=torch.uint8, device=device)
        else:
            torch.empty(total * 4, dtype=torch.uint8, device=device)
    else:
        torch.empty(2**52, dtype=torch.uint8)  # 4 PiB
    return {}


def _graph_backends(variant: Variant) -> list[str]:
    """Every registered backend that runs this variant on CUDA here and declares its step capturable as a graph."""
    from harness import backends
    from harness.backend_support import unsupported_reason

    return [
        spec.name
        for spec in backends.registry().specs
        if spec.runs_on("cuda")
        and spec.graph_capturable
        and spec.missing() is None
        and unsupported_reason(spec.name, variant, "cuda", "bfloat16") is None
    ]


def check_graphs(request: CheckRequest) -> list[dict[str, Any]]:
    """The decode step and core attention of a small stack captured as CUDA graphs, per backend."""
    import torch

    from harness.measure import timing
    from harness.measure.autotune import output_tolerance
    from harness.measure.cell_worker import enter_device
    from harness.model import build_decoder
    from harness.scenario.schema import ModelSpec
    from harness.variants import Variant, sharing_map

    device = request.device
    enter_device(device)
    model = ModelSpec(**TINY_MODEL)
    variant = Variant("H128-GQA2-CLA2", 128, 4, 2, sharing_map(4, 2))
    decoder = build_decoder(model, variant, dtype="bfloat16", device=device)
    cache = decoder.allocate_cache(2, 4097)
    decoder.fill_cache_synthetic(cache, 4096, torch.Generator(device=device).manual_seed(0))
    tokens = torch.randint(0, model.vocab_size, (2, 1), device=device)
    q = torch.randn(2, variant.n_heads, 1, variant.head_dim, device=device, dtype=decoder.dtype)
    tolerance = output_tolerance(torch.bfloat16, "cuda")
    out = []
    with torch.inference_mode():
        for backend in _graph_backends(variant):
            decoder.backend = backend
            for what, fn in (
                ("decode_step", lambda: decoder.decode_step(tokens, cache, 4096)),
                ("core_attention", lambda: decoder.core_attention(q, cache, 4096)),
            ):
                name = f"graph of {what}, {backend}"
                try:
                    fn()
                    captured = timing.capture(fn, tolerance=tolerance)
                except Exception as exc:
                    out.append(_finding(name, False, f"{type(exc).__name__}: {exc}".splitlines()[0]))
                    continue
                if not captured.graph_used:
                    out.append(_finding(name, False, f"not captured: {captured.graph_error}"))
                    continue
                samples, inner = timing.time_cuda_steps(captured.step, min_time_s=0.05, min_samples=10, max_samples=200)
                detail = (
                    f"graph_used, |graph - eager| {captured.output_difference:.3g} (allowed "
                    f"{captured.output_allowed:.3g}), replay {statistics.median(samples) * 1e6:.1f} µs x{inner}"
                )
                out.append(_finding(name, bool(captured.output_matches), detail))
    return out


def check_timing_device(request: CheckRequest) -> list[dict[str, Any]]:
    """Events on the selected device time a known amount of work: a 1 GiB copy at a plausible rate."""
    import torch

    from harness.measure import timing
    from harness.measure.cell_worker import enter_device

    device = request.device
    enter_device(device)
    src = torch.ones(2**28, device=device)  # 1 GiB of float32
    dst = torch.empty_like(src)
    captured = timing.capture(lambda: dst.copy_(src), tolerance=0.0)
    samples, _ = timing.time_cuda_steps(captured.step, min_time_s=0.1, min_samples=10, max_samples=100)
    gbps = 2 * src.numel() * 4 / statistics.median(samples) / 1e9
    detail = f"1 GiB device copy on {device} (current device {torch.cuda.current_device()}): {gbps:.0f} GB/s"
    return [_finding("event timing on the selected device", 100 < gbps < 20_000 and captured.graph_used, detail)]


def check_flush(request: CheckRequest) -> list[dict[str, Any]]:
    """A read of a cache-resident buffer is slower right after the flush cold samples use."""
    import torch

    from harness.measure import timing
    from harness.measure.cell_worker import enter_device
    from harness.measure.flush import CudaL2Flusher, cpu_flusher

    device = request.device
    enter_device(device)
    if is_cuda(device):
        x = torch.ones(4 * 2**20, device=device)  # 16 MiB: well inside an H100/H200's 50-60 MB L2
        flush: Callable[[], None] = CudaL2Flusher(device)
        how = f"L2 read sweep of {CudaL2Flusher(device).size_bytes} bytes"
        read = lambda: x.sum()  # noqa: E731
        warm, _ = timing.time_cuda_steps(read, min_time_s=0.05, min_samples=20, max_samples=200, inner_reps=1)
        cold = timing.time_cuda_parts([read], flush, min_time_s=0.05, min_samples=20, max_samples=200)
    else:
        x = torch.ones(2**20)  # 4 MiB
        flush, how = cpu_flusher([x])
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            warm = timing.time_cpu(
                x.sum, warmup_s=0.05, min_time_s=0.05, min_samples=20, max_samples=200, inner_reps=1
            ).seconds
            cold = timing.time_cpu_parts(
                [x.sum], flush, warmup_s=0.0, min_time_s=0.05, min_samples=20, max_samples=200
            ).seconds
        finally:
            torch.set_num_threads(before)
    ratio = min(cold) / min(warm)
    detail = (
        f"fastest read warm {min(warm) * 1e6:.1f} µs, after the flush {min(cold) * 1e6:.1f} µs (x{ratio:.2f}); {how}"
    )
    return [_finding("flush makes a cached read cold", ratio > 1.2, detail)]


def check_sdpa_kernels(request: CheckRequest) -> list[dict[str, Any]]:
    """Which SDPA kernel runs per dtype, head dim and KV sharing, and that it is the one planned."""
    import torch

    from harness.measure import checks
    from harness.measure.cell_worker import enter_device
    from harness.model import sdpa
    from harness.model.attention import attend
    from harness.variants import Variant

    device = request.device
    enter_device(device)
    out = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for head_dim in (64, 128, 256, 512):
                for n_kv_heads, kind in ((8, "MHA"), (2, "GQA4")):
                    q = torch.randn(2, 8, 1, head_dim, device=device, dtype=dtype)
                    k = torch.randn(2, n_kv_heads, 2048, head_dim, device=device, dtype=dtype)
                    planned = sdpa.plan(q, k, k)
                    seen = sdpa.observe(functools.partial(attend, q, k, k, start_pos=2047, backend="sdpa"))
                    variant = Variant("v", head_dim, 8, n_kv_heads, (0,))
                    check = checks.sdpa_kernel(planned, seen, torch.device(device).type, dtype, variant)
                    name = f"sdpa {str(dtype).removeprefix('torch.')} head_dim {head_dim} {kind}"
                    out.append(_finding(name, check.passed, check.detail))
    return out


def check_choose_backend(request: CheckRequest) -> list[dict[str, Any]]:
    import torch

    from harness.measure.autotune import choose_backend
    from harness.measure.cell_worker import enter_device
    from harness.model import build_decoder
    from harness.scenario.schema import ModelSpec
    from harness.variants import Variant, sharing_map

    device = request.device
    enter_device(device)
    model = ModelSpec(**TINY_MODEL)
    decoder = build_decoder(model, Variant("H128-MQA", 128, 4, 1, sharing_map(4, 1)), dtype="bfloat16", device=device)
    cache = decoder.allocate_cache(1, 8193)
    decoder.fill_cache_synthetic(cache, 8192, torch.Generator(device=device).manual_seed(0))
    with torch.inference_mode():
        choice = choose_backend(decoder, cache, 8192, time_budget_s=1.0)
    timings = ", ".join(f"{name} {seconds * 1e6:.0f} µs" for name, seconds in sorted(choice.latencies_s.items()))
    rejected = "; ".join(f"{name}: {why}" for name, why in choice.rejected.items())
    detail = f"chose {choice.backend} ({timings})" + (f"; rejected {rejected}" if rejected else "")
    return [_finding("auto chooses a backend that agrees with eager", choice.backend in choice.latencies_s, detail)]


def check_peak(request: CheckRequest) -> list[dict[str, Any]]:
    from harness.hardware import fingerprint
    from harness.measure.bandwidth import VENDOR_FLOOR, measure_peak
    from harness.measure.cell_worker import enter_device

    device = request.device
    enter_device(device)
    env = fingerprint(device)
    peak = measure_peak(device, env)
    vendor = env.get("vendor_peak_bandwidth_gbps")
    detail = f"read {peak.read_gbps:.0f} GB/s, copy {peak.copy_gbps:.0f} GB/s"
    if not vendor:
        return [_finding("peak bandwidth probe", peak.measured_gbps > 0, detail + "; no vendor figure here")]
    share = peak.measured_gbps / vendor
    detail += f"; {share:.0%} of the vendor's {vendor:.0f} GB/s ({env.get('vendor_peak_bandwidth_source')})"
    return [_finding("peak bandwidth within 0.8-1.0x the vendor figure", VENDOR_FLOOR <= share <= 1.0, detail)]


def check_nvml(request: CheckRequest) -> list[dict[str, Any]]:
    import torch

    from harness.hardware import nvml_call, nvml_parent, nvml_session
    from harness.measure.cell_worker import enter_device

    device = request.device
    enter_device(device)
    with nvml_session(device) as session:
        if session is None:
            return [_finding("NVML finds this GPU", False, "no NVML handle for this device (by UUID or bus id)")]
        nv, handle = session
        uuid = nvml_call(nv, "nvmlDeviceGetUUID", handle)
        gpu = nvml_parent(nv, handle)
        x = torch.ones(2**28, device=device)
        start_mj = nvml_call(nv, "nvmlDeviceGetTotalEnergyConsumption", gpu)
        begin = time.perf_counter()
        while time.perf_counter() - begin < 1.0:
            x.mul_(1.0)
            torch.cuda.synchronize()
        end_mj = nvml_call(nv, "nvmlDeviceGetTotalEnergyConsumption", gpu)
    found = _finding(
        "NVML finds this GPU", uuid is not None, f"UUID {uuid} (torch: {torch.cuda.get_device_properties(device).uuid})"
    )
    if start_mj is None or end_mj is None:
        return [found, _skip("energy counter advances", "no energy counter on this GPU")]
    energy = _finding(
        "energy counter advances", end_mj > start_mj, f"{(end_mj - start_mj) / 1e3:.1f} J over 1 s of work"
    )
    return [found, energy]


def check_native(request: CheckRequest) -> list[dict[str, Any]]:
    import torch

    from harness.model import native
    from harness.model.attention import attend

    try:
        native.load()
    except native.NativeUnavailable as exc:
        return [_skip("native CPU kernel", str(exc))]
    q, k = torch.randn(1, 8, 1, 128), torch.randn(1, 2, 4097, 128)
    difference = float(
        (attend(q, k, k, start_pos=4096, backend="native") - attend(q, k, k, start_pos=4096, backend="eager"))
        .abs()
        .max()
    )
    return [
        _finding(
            "native CPU kernel builds and agrees with eager",
            difference < 1e-4,
            f"max |native - eager| {difference:.2g}",
        )
    ]


def check_cell(request: CheckRequest) -> list[dict[str, Any]]:
    """A whole cell measured as a run measures it; every self-check of it must pass."""
    from harness.measure.cell_worker import measure_cell
    from harness.scenario.schema import ModelSpec
    from harness.variants import Variant, sharing_map

    device = request.device
    cell = CellRequest(
        device=device,
        model=ModelSpec(**TINY_MODEL),
        variant=Variant("H128-MQA-CLA2", 128, 4, 1, sharing_map(4, 2)),
        batch_size=4,
        context_len=8192,
        dtype="bfloat16",
        backend="sdpa",
        seed=0,
        metrics=("decode", "attention", "memory"),
        timing=Timing(warmup_s=0.1, min_time_s=0.1, min_samples=10, max_samples=200),
        cold=True,
        energy_window_s=2.0 if is_cuda(device) else 0.0,
        graphs=True,
    )
    measured = measure_cell(cell)
    failed = [f"{c['name']}: {c['detail']}" for c in measured["checks"] if not c["passed"]]
    timers = sorted({s["timer"] for s in measured["samples"].values()})
    detail = f"{len(measured['checks'])} worker checks, timers {', '.join(timers)}"
    return [_finding("a cell measured end to end passes its worker checks", not failed, "; ".join(failed) or detail)]


# ---------------------------------------------------------------------------------------------
# Running them


def _oom_findings(runner: Any, device: str) -> list[Finding]:
    findings = []
    outcome = runner.call(allocates_too_much, CheckRequest(device=device), timeout_s=CHECK_TIMEOUT_S)
    findings.append(
        Finding(
            "out-of-memory is classified as oom",
            "pass" if outcome.status == "oom" else "fail",
            f"{outcome.status}: {outcome.error}",
        )
    )
    if is_cuda(device):
        request = CheckRequest(device=device, fraction=0.05)
        outcome = runner.call(allocates_too_much, request, timeout_s=CHECK_TIMEOUT_S)
        status: Status = "pass" if outcome.status == "oom" else "fail"
        findings.append(
            Finding("the allocator cap of max-batch probes holds", status, f"{outcome.status}: {outcome.error}")
        )
    return findings


def _max_batch_finding(device: str) -> Finding:
    """The runner's max-batch search on a small stack, against the accounting's prediction."""
    from harness import accounting
    from harness.backend_support import kernel_memory
    from harness.errors import RunFailure
    from harness.run.maxbatch import Probe, search_max_batch
    from harness.run.node import describe
    from harness.run.worker import IsolatedRunner
    from harness.scenario.schema import ModelSpec
    from harness.variants import Variant, sharing_map

    model = ModelSpec(**TINY_MODEL)
    variant = Variant("H128-MQA", 128, 4, 1, sharing_map(4, 1))
    context, budget = 4096, (2 * 2**30 if is_cuda(device) else 512 * 2**20)
    runner = IsolatedRunner()
    try:
        _, environment = describe(runner, device, None, CHECK_TIMEOUT_S)
    except RunFailure:  # without a fingerprint the prediction assumes no fixed workspace
        environment = {}
    workspace = accounting.fixed_workspace_bytes(environment)
    kernel = kernel_memory("sdpa", "cuda" if is_cuda(device) else "cpu")
    predicted = accounting.predicted_max_batch(model, variant, "bfloat16", context, budget, workspace, kernel)
    per_sequence = accounting.bytes_per_sequence(model, variant, "bfloat16", context, kernel)

    def request(batch: int) -> CellRequest:
        return CellRequest(
            device=device, model=model, variant=variant, batch_size=batch, context_len=context, dtype="bfloat16",
            backend="sdpa", seed=0, budget_bytes=budget,
        )  # fmt: skip

    rounding: dict[int, int] = {}  # batch -> reserved minus allocated bytes (the allocator's rounding)

    def probe(batch: int) -> Probe:
        outcome = runner.call(Entry.PROBE_BATCH, request(batch), timeout_s=CHECK_TIMEOUT_S)
        if outcome.status == "ok" and outcome.value is not None:
            peak = int(outcome.value["peak_bytes"])
            rounding[batch] = max(0, peak - int(outcome.value.get("allocated_bytes", peak)))
            return Probe(batch, bool(outcome.value["fits"]), peak, "ok")
        return Probe(batch, False, None, "oom" if outcome.status == "oom" else f"error: {outcome.error}")

    found = search_max_batch(probe, predicted, budget, per_sequence)
    # The cap and "fits" both bound reserved bytes; the prediction counts tensors' bytes (plus the fixed
    # workspace): the allocator's rounding at the answer, in sequences, widens the tolerance by as much.
    slack = -(-rounding.get(found.measured or 0, 0) // per_sequence)
    limit = (2 + slack) if is_cuda(device) else max(2, predicted // 10)
    detail = (
        f"predicted {predicted} (workspace {workspace / 2**20:.1f} MiB), measured {found.measured} in "
        f"{len(found.probes)} probes (within {limit} asked, {slack} of it the allocator's rounding)"
    )
    ok = found.measured is not None and abs(found.measured - predicted) <= limit
    return Finding(
        "max-batch search lands near the prediction",
        "pass" if ok else "fail",
        detail + (f"; {found.note}" if found.note else ""),
    )


CUDA_CHECKS = (check_worker_starts, check_timing_device, check_flush, check_sdpa_kernels, check_peak, check_nvml,
               check_cell)  # fmt: skip
# Run after everything else on CUDA, out-of-memory and max batch included: they compile FlexAttention (minutes
# without a compile cache), and a doctor stopped by a time limit should have the other findings.
CUDA_COMPILING_CHECKS = (check_graphs, check_choose_backend)
CPU_CHECKS = (check_worker_starts, check_flush, check_sdpa_kernels, check_choose_backend, check_peak,
              check_native, check_cell)  # fmt: skip


def run_check(request: CheckRequest) -> dict[str, Any]:
    """The worker's entry point: the check named in the request, its findings under ``findings``."""
    checks = (*CUDA_CHECKS, *CUDA_COMPILING_CHECKS, *CPU_CHECKS)
    check = {function.__name__: function for function in checks}[request.check]
    return {"findings": check(request)}


def run_doctor(
    device: str,
    progress: Callable[[str], None] = lambda name: None,
    on_finding: Callable[[Finding], None] = lambda finding: None,
) -> list[Finding]:
    """Every check that applies to ``device``, each in a fresh worker; a crash or timeout fails that check.

    ``progress`` hears the name of each check as it starts, ``on_finding`` each finding as soon as its check
    ends, so that a doctor stopped half-way has already reported what it found.
    """
    from harness.run.worker import IsolatedRunner

    runner = IsolatedRunner()
    findings: list[Finding] = []

    def found(new: list[Finding]) -> None:
        for finding in new:
            on_finding(finding)
        findings.extend(new)

    def run_in_worker(name: str) -> None:
        progress(name)
        started = time.perf_counter()
        outcome = runner.call(run_check, CheckRequest(device=device, check=name), timeout_s=CHECK_TIMEOUT_S)
        if outcome.status == "ok" and outcome.value is not None:
            found([Finding(**item) for item in outcome.value["findings"]])
        else:
            elapsed = time.perf_counter() - started
            found([Finding(name, "fail", f"{outcome.status} after {elapsed:.0f} s: {outcome.error}")])

    cuda = is_cuda(device)
    for check in CUDA_CHECKS if cuda else CPU_CHECKS:
        run_in_worker(check.__name__)
    progress("out-of-memory")
    found(_oom_findings(runner, device))
    progress("max batch")
    found([_max_batch_finding(device)])
    for check in CUDA_COMPILING_CHECKS if cuda else ():
        run_in_worker(check.__name__)
    return findings
