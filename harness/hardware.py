"""Which machine a result comes from: a stable target id and a fingerprint of the hardware and software.

Results are compared only within one target (docs/design.md, "Timing"), so the id must stay the
same across driver, torch and kernel updates on the same hardware: it is built from the device
name alone (CUDA), or (CPU) the CPU model, the number of cores this process may use and a short
signature of what else decides speed: family, model and stepping, cache sizes and instruction-set
extensions. Cloud VMs report the same model name ("AMD EPYC") on different microarchitectures,
which must not share an id. Everything that may change under the same id (driver, CUDA, torch,
clocks, power limit) goes in the fingerprint, which every result file keeps beside its numbers.

NVML (``pynvml``) is optional: without the library, without an NVIDIA GPU, or when one call fails,
the fields it would fill are None and nothing raises. torch is imported inside the functions that
need it, so that importing this module (and the ``hw`` command's parser) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import UserError

CPUINFO_PATH = Path("/proc/cpuinfo")
CPU_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")

# Marketing words that carry no model information in a /proc/cpuinfo model name.
_CPU_NAME_NOISE = re.compile(
    r"\((?:r|tm|c)\)|\bcpu\b|\bprocessor\b|\b\d+-core\b|\b\d+(?:st|nd|rd|th) gen\b|@.*$",
    re.IGNORECASE,
)
_VENDOR_ALIASES = {"genuineintel": "intel", "authenticamd": "amd"}


def slug(text: str) -> str:
    """Lowercase, every run of non-alphanumerics turned into one '-', no '-' at either end."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# Device names and target ids


def resolve_device(name: str) -> str:
    """Turn a ``--device`` value into ``"cpu"`` or ``"cuda:N"``; ``"auto"`` picks CUDA when present.

    ``auto`` and a bare ``cuda`` become torch's current device with its index: torch's
    ``set_device`` and ``set_per_process_memory_fraction`` refuse a device without one, so every
    device string past this edge carries it. Asking for CUDA on a machine without it is the user's
    mistake and raises :class:`UserError`.
    """
    if name == "cpu":
        return "cpu"
    if name not in ("auto", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", field="device")
    import torch

    available = torch.cuda.is_available()
    if name == "auto" and not available:
        return "cpu"
    if not available:
        raise UserError(f"{name} was asked for but torch finds no CUDA device", field="device")
    index = _cuda_index(name) if name.startswith("cuda:") else int(torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise UserError(
            f"{name} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist", field="device"
        )
    return f"cuda:{index}"


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def _cuda_index(device: str) -> int:
    """The CUDA ordinal of ``"cuda:N"``; plain ``"cuda"`` means torch's current device."""
    if ":" in device:
        return int(device.split(":", 1)[1])
    import torch

    return int(torch.cuda.current_device()) if torch.cuda.is_available() else 0


def cuda_target_id(device_name: str) -> str:
    """Target id of a GPU from its name: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``.

    Vendors put the memory size and type in the name where one model ships in several
    (A100 40GB/80GB, H100 PCIe/SXM), so the name alone tells targets apart; the total memory
    reported at run time is not used because it moves with the driver's reservations.
    """
    target = slug(device_name)
    return target if target.startswith("nvidia") or not target else f"gpu-{target}"


def cpu_model_family(model_name: str) -> str:
    """The vendor and model of a CPU name, without marketing words, clock or core count.

    ``"Intel(R) Xeon(R) Platinum 8480+"`` -> ``"intel-xeon-platinum-8480"``,
    ``"AMD EPYC 7763 64-Core Processor"`` -> ``"amd-epyc-7763"``.
    """
    family = slug(_CPU_NAME_NOISE.sub(" ", model_name))
    return _VENDOR_ALIASES.get(family, family) or "unknown"


def cpu_target_id(model_name: str, n_cores: int, signature: str | None = None) -> str:
    """``cpu-<vendor>-<model family>-<N>c[-<signature>]``, N the logical cores this process may run on."""
    base = f"cpu-{cpu_model_family(model_name)}-{n_cores}c"
    return f"{base}-{signature}" if signature else base


# Instruction-set extensions that change how fast decode kernels run (vector width, 16-bit and matrix
# units), as /proc/cpuinfo spells them on x86-64 ("flags") and AArch64 ("Features").
SPEED_ISA = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


def cpu_identity(cpuinfo: Path = CPUINFO_PATH) -> dict[str, Any]:
    """The CPU's family, model and stepping numbers and its speed-relevant extensions (None where unknown)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "cpu_family": fields.get("cpu family") or fields.get("cpu architecture"),
        "cpu_model_number": fields.get("model") or fields.get("cpu part"),
        "cpu_stepping": fields.get("stepping") or fields.get("cpu revision"),
        "cpu_isa": [name for name in SPEED_ISA if name in flags],
    }


def cpu_signature(identity: dict[str, Any], caches: dict[str, int]) -> str:
    """Six hex digits over family, model, stepping, cache sizes and extensions: equal for equal CPUs."""
    parts = [str(identity.get(k)) for k in ("cpu_family", "cpu_model_number", "cpu_stepping")]
    parts += [str(caches.get(level)) for level in ("l1d", "l2", "l3")]
    parts += identity.get("cpu_isa", [])
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:6]


def detect_target(device: str) -> str:
    """The stable, filesystem-safe target id of ``device`` (``"cpu"`` or ``"cuda[:N]"``)."""
    if is_cuda(device):
        import torch

        return cuda_target_id(torch.cuda.get_device_name(_cuda_index(device)))
    return cpu_target_id(cpu_model_name(), logical_cores(), cpu_signature(cpu_identity(), cpu_cache_bytes()))


# ---------------------------------------------------------------------------------------------
# CPU facts


def cpu_model_name(cpuinfo: Path = CPUINFO_PATH) -> str:
    """The CPU's model name from /proc/cpuinfo; ``platform.processor()`` or the machine where absent."""
    with contextlib.suppress(OSError):
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and value.strip():
                fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "hardware", "vendor_id", "cpu model"):
            if key in fields:
                return fields[key]
    return platform.processor() or platform.machine() or "unknown"


def logical_cores() -> int:
    """Logical cores this process may run on (its affinity mask), which is what torch can use."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_cache_size(text: str) -> int | None:
    """Sizes as /sys writes them: ``"32K"`` -> 32768, ``"1M"`` -> 1048576, ``"512"`` -> 512."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()]
    return int(match.group(1)) * scale


def cpu_cache_bytes(cache_dir: Path = CPU_CACHE_DIR) -> dict[str, int]:
    """Cache sizes seen by cpu0, keyed ``l1d``, ``l1i``, ``l2``, ``l3``; empty where /sys has none.

    A cache shared by several cores (usually L3) is reported at its full size per instance.
    """
    sizes: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for index in sorted(cache_dir.glob("index*")):
            with contextlib.suppress(OSError, ValueError):
                level = int((index / "level").read_text())
                kind = (index / "type").read_text().strip().lower()
                size = parse_cache_size((index / "size").read_text())
                if size is None:
                    continue
                suffix = {"data": "d", "instruction": "i"}.get(kind, "")
                sizes[f"l{level}{suffix}"] = size
    return sizes


def last_level_cache_bytes(cache_dir: Path = CPU_CACHE_DIR) -> int | None:
    """Size of the highest-level data or unified cache, or None when unknown."""
    sizes = {k: v for k, v in cpu_cache_bytes(cache_dir).items() if not k.endswith("i")}
    if not sizes:
        return None
    return sizes[max(sizes, key=lambda k: int(re.sub(r"\D", "", k)))]


def total_memory_bytes() -> int | None:
    with contextlib.suppress(Exception):
        import psutil

        return int(psutil.virtual_memory().total)
    return None


# ---------------------------------------------------------------------------------------------
# NVML, every call guarded


def nvml_call(pynvml: Any, function: str, *args: Any) -> Any | None:
    """``pynvml.<function>(*args)``, or None when the function is missing or the call fails."""
    try:
        value = getattr(pynvml, function)(*args)
    except Exception:
        return None
    return value.decode() if isinstance(value, bytes) else value


@contextlib.contextmanager
def nvml_session(device: str) -> Iterator[tuple[Any, Any] | None]:
    """Yield ``(pynvml, handle)`` for a CUDA device, or None without NVML or a matching GPU.

    NVML is initialised on entry and shut down on exit (NVML counts nested initialisations).
    """
    pynvml = _nvml_init()
    if pynvml is None:
        yield None
        return
    try:
        handle = _nvml_handle(pynvml, device) if is_cuda(device) else None
        yield None if handle is None else (pynvml, handle)
    finally:
        nvml_call(pynvml, "nvmlShutdown")


def _nvml_init() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _nvml_handle(pynvml: Any, device: str) -> Any | None:
    """NVML's handle for the CUDA device, or None when it cannot be told which NVML device that is.

    NVML numbers all GPUs of the machine while CUDA numbers only the visible ones (``CUDA_VISIBLE_DEVICES``)
    and may order them differently, so the CUDA ordinal never picks an NVML device by itself: the
    match is by UUID (a GPU's ``GPU-...`` or a MIG instance's ``MIG-...``), then PCI bus id, then a UUID
    named in ``CUDA_VISIBLE_DEVICES``; the ordinal only when NVML and CUDA both see exactly one GPU.
    Readings of another GPU would be worse than none.
    """
    index = _cuda_index(device)
    props = _cuda_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        for candidate in (text,) if text.startswith(("GPU-", "MIG-")) else (f"GPU-{text}", f"MIG-{text}"):
            handle = nvml_call(pynvml, "nvmlDeviceGetHandleByUUID", candidate)
            if handle is not None:
                return handle
    if props is not None and hasattr(props, "pci_bus_id"):
        domain, device_id = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
        bus_id = f"{domain:08x}:{props.pci_bus_id:02x}:{device_id:02x}.0"  # NVML's "domain:bus:device.function"
        handle = nvml_call(pynvml, "nvmlDeviceGetHandleByPciBusId", bus_id)
        if handle is not None:
            return handle
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if index < len(visible) and visible[index].startswith(("GPU-", "MIG-")):
        handle = nvml_call(pynvml, "nvmlDeviceGetHandleByUUID", visible[index])
        if handle is not None:
            return handle
    if nvml_call(pynvml, "nvmlDeviceGetCount") == 1 and _cuda_device_count() == 1:
        return nvml_call(pynvml, "nvmlDeviceGetHandleByIndex", 0)
    return None


def nvml_parent(pynvml: Any, handle: Any) -> Any:
    """The physical GPU of a MIG instance's handle (clocks, power and energy are read there); else ``handle``."""
    if nvml_call(pynvml, "nvmlDeviceIsMigDeviceHandle", handle):
        parent = nvml_call(pynvml, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        if parent is not None:
            return parent
    return handle


def _cuda_device_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _cuda_properties(index: int) -> Any | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(index)
    except Exception:
        return None


# Memory bandwidth from the vendor's data sheets, GB/s (1e9 bytes/s), by target id. Used before the
# NVML formula below, which reads the maximum memory clock and can land a little off the sheet (an
# H200's 3201 MHz x 6144 bit gives 4917 GB/s against the sheet's 4800).
DATASHEET_BANDWIDTH_GBPS: dict[str, float] = {
    "nvidia-a100-sxm4-40gb": 1555.0,
    "nvidia-a100-pcie-40gb": 1555.0,
    "nvidia-a100-sxm4-80gb": 2039.0,
    "nvidia-a100-80gb-pcie": 1935.0,
    "nvidia-h100-80gb-hbm3": 3350.0,  # H100 SXM
    "nvidia-h100-pcie": 2000.0,
    "nvidia-h100-nvl": 3900.0,
    "nvidia-h200": 4800.0,  # H200 SXM
    "nvidia-h200-nvl": 4800.0,
}


def vendor_peak_bandwidth_gbps(memory_clock_mhz: float | None, bus_width_bits: float | None) -> float | None:
    """The vendor's theoretical memory bandwidth in GB/s (1e9 bytes/s), or None without both inputs.

    ``2 · memory clock · bus width / 8``: two transfers per clock (double data rate) of
    ``bus width`` bits each, with NVML's maximum memory clock and memory bus width
    (nvmlDeviceGetMaxClockInfo(NVML_CLOCK_MEM), nvmlDeviceGetMemoryBusWidth). An H100 SXM
    (2619 MHz, 5120 bit) gives 3352 GB/s, its data-sheet 3.35 TB/s.
    """
    if not memory_clock_mhz or not bus_width_bits:
        return None
    return 2 * memory_clock_mhz * 1e6 * bus_width_bits / 8 / 1e9


# ---------------------------------------------------------------------------------------------
# Fingerprint


# Environment variables that change what a run measures: which GPUs are visible and in what order,
# how the CUDA allocator behaves, synchronous launches, cuBLAS workspaces, CPU thread counts.
FINGERPRINT_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "CUDA_LAUNCH_BLOCKING",
    "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def fingerprint(device: str) -> dict[str, Any]:
    """Everything about this machine and process a result depends on, as a JSON-serialisable dict.

    Always: target, device, torch/Python versions, OS, CPU model, logical cores, total memory, CPU
    cache sizes, the environment variables of :data:`FINGERPRINT_ENV` and torch's numerics switches
    (TF32, reduced-precision reductions, which SDPA kernels are enabled). On CUDA also the GPU's
    name, memory, SM count, L2 size, and from NVML driver/CUDA versions, bus width, max and
    application clocks, power limit, ECC, MIG, persistence and compute modes, and the vendor's peak
    bandwidth (None where NVML cannot tell). Runs take it inside a worker process, so it describes
    what the workers see.
    """
    import torch

    caches = cpu_cache_bytes()
    info: dict[str, Any] = {
        "target": detect_target(device),
        "device": "cuda" if is_cuda(device) else "cpu",
        "device_name": cpu_model_name(),
        "python_version": platform.python_version(),
        "torch_version": str(torch.__version__),
        "torch_cuda_version": torch.version.cuda,  # CUDA runtime torch was built with
        "os": platform.platform(),
        "cpu_model": cpu_model_name(),
        "logical_cores": logical_cores(),
        "torch_num_threads": torch.get_num_threads(),
        "memory_total_bytes": total_memory_bytes(),
        "cpu_l1d_cache_bytes": caches.get("l1d"),
        "cpu_l2_cache_bytes": caches.get("l2"),
        "cpu_l3_cache_bytes": caches.get("l3"),
        **cpu_identity(),
        "env": {name: os.environ.get(name) for name in FINGERPRINT_ENV},
        "torch_numerics": torch_numerics(),
    }
    if is_cuda(device):
        info.update(_gpu_fingerprint(device))
    return info


def torch_numerics() -> dict[str, Any]:
    """torch's process-wide switches that change which kernels run and how precisely."""
    import torch

    matmul = torch.backends.cuda.matmul
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": _guarded(lambda: bool(matmul.allow_tf32)),
        "cudnn_allow_tf32": _guarded(lambda: bool(torch.backends.cudnn.allow_tf32)),
        "cuda_matmul_allow_fp16_reduced_precision_reduction": _guarded(
            lambda: bool(matmul.allow_fp16_reduced_precision_reduction)
        ),
        "cuda_matmul_allow_bf16_reduced_precision_reduction": _guarded(
            lambda: bool(matmul.allow_bf16_reduced_precision_reduction)
        ),
        "sdpa_flash_enabled": _guarded(torch.backends.cuda.flash_sdp_enabled),
        "sdpa_mem_efficient_enabled": _guarded(torch.backends.cuda.mem_efficient_sdp_enabled),
        "sdpa_math_enabled": _guarded(torch.backends.cuda.math_sdp_enabled),
        "sdpa_cudnn_enabled": _guarded(torch.backends.cuda.cudnn_sdp_enabled),
        "sdpa_priority": sdpa_priority(),
    }


def sdpa_priority() -> list[str] | None:
    """The order in which SDPA tries its kernels (``flash``, ``cudnn``, ...), from torch."""
    from harness.model.sdpa import priority

    return priority()


def _gpu_fingerprint(device: str) -> dict[str, Any]:
    import torch

    index = _cuda_index(device)
    props = _cuda_properties(index)
    name = getattr(props, "name", None)
    info: dict[str, Any] = {
        "device_name": name,
        "cuda_device_index": index,
        "cuda_uuid": str(props.uuid) if props is not None and hasattr(props, "uuid") else None,
        "gpu_memory_total_bytes": getattr(props, "total_memory", None),
        "sm_count": getattr(props, "multi_processor_count", None),
        "compute_capability": f"{props.major}.{props.minor}" if props is not None else None,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        "cudnn_version": _guarded(torch.backends.cudnn.version),
    }
    info.update(_nvml_fingerprint(device))
    datasheet = DATASHEET_BANDWIDTH_GBPS.get(cuda_target_id(name)) if name else None
    if datasheet is not None:
        info["vendor_peak_bandwidth_gbps"] = datasheet
        info["vendor_peak_bandwidth_source"] = "vendor data sheet"
    return info


NVML_FIELDS = (
    "driver_version",
    "cuda_driver_version",
    "gpu_uuid",
    "pci_bus_id",
    "nvml_memory_total_bytes",
    "memory_bus_width_bits",
    "max_sm_clock_mhz",
    "max_memory_clock_mhz",
    "application_sm_clock_mhz",
    "application_memory_clock_mhz",
    "power_limit_w",
    "ecc_enabled",
    "mig_enabled",
    "persistence_mode",
    "compute_mode",
    "vendor_peak_bandwidth_gbps",
    "vendor_peak_bandwidth_source",
)


def _nvml_fingerprint(device: str) -> dict[str, Any]:
    fields: dict[str, Any] = dict.fromkeys(NVML_FIELDS)
    with nvml_session(device) as session:
        if session is None:
            return fields
        nv, handle = session
        gpu = nvml_parent(nv, handle)  # a MIG instance's clocks and power are its GPU's
        sm, mem = getattr(nv, "NVML_CLOCK_SM", 1), getattr(nv, "NVML_CLOCK_MEM", 2)
        fields["driver_version"] = nvml_call(nv, "nvmlSystemGetDriverVersion")
        cuda_driver = nvml_call(nv, "nvmlSystemGetCudaDriverVersion")  # e.g. 12040 for 12.4
        fields["cuda_driver_version"] = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}" if cuda_driver else None
        fields["gpu_uuid"] = nvml_call(nv, "nvmlDeviceGetUUID", handle)
        pci = nvml_call(nv, "nvmlDeviceGetPciInfo", gpu)
        bus_id = getattr(pci, "busId", None)
        fields["pci_bus_id"] = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        memory = nvml_call(nv, "nvmlDeviceGetMemoryInfo", handle)
        fields["nvml_memory_total_bytes"] = getattr(memory, "total", None)
        fields["memory_bus_width_bits"] = nvml_call(nv, "nvmlDeviceGetMemoryBusWidth", gpu)
        fields["max_sm_clock_mhz"] = nvml_call(nv, "nvmlDeviceGetMaxClockInfo", gpu, sm)
        fields["max_memory_clock_mhz"] = nvml_call(nv, "nvmlDeviceGetMaxClockInfo", gpu, mem)
        fields["application_sm_clock_mhz"] = nvml_call(nv, "nvmlDeviceGetApplicationsClock", gpu, sm)
        fields["application_memory_clock_mhz"] = nvml_call(nv, "nvmlDeviceGetApplicationsClock", gpu, mem)
        power_mw = nvml_call(nv, "nvmlDeviceGetEnforcedPowerLimit", gpu)
        fields["power_limit_w"] = power_mw / 1000 if power_mw is not None else None
        fields["ecc_enabled"] = _current_mode(nvml_call(nv, "nvmlDeviceGetEccMode", gpu))
        fields["mig_enabled"] = _current_mode(nvml_call(nv, "nvmlDeviceGetMigMode", gpu))
        persistence = nvml_call(nv, "nvmlDeviceGetPersistenceMode", gpu)
        fields["persistence_mode"] = bool(persistence) if persistence is not None else None
        fields["compute_mode"] = nvml_call(nv, "nvmlDeviceGetComputeMode", gpu)
    peak = vendor_peak_bandwidth_gbps(fields["max_memory_clock_mhz"], fields["memory_bus_width_bits"])
    fields["vendor_peak_bandwidth_gbps"] = peak
    if peak is not None:
        fields["vendor_peak_bandwidth_source"] = (
            "2 * max memory clock * bus width / 8 (DDR), from NVML nvmlDeviceGetMaxClockInfo(NVML_CLOCK_MEM) "
            "and nvmlDeviceGetMemoryBusWidth"
        )
    return fields


def _current_mode(modes: Any) -> bool | None:
    """NVML returns ECC and MIG modes as ``[current, pending]``; 1 means enabled."""
    if isinstance(modes, list | tuple) and modes:
        return bool(modes[0])
    return None


def _guarded(function: Callable[[], Any]) -> Any | None:
    try:
        return function()
    except Exception:
        return None
