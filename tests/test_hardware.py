"""Target ids, CPU facts from /proc and /sys, the vendor bandwidth formula, device resolution, ``attnbench hw``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers_fakecuda
import pytest
import torch
from helpers_requests import cell_request

from harness import hardware
from harness.cli import hw_cmd
from harness.errors import UserError
from harness.hardware import (
    cpu_cache_bytes,
    cpu_model_name,
    cpu_target_id,
    cuda_target_id,
    detect_target,
    fingerprint,
    last_level_cache_bytes,
    resolve_device,
    vendor_peak_bandwidth_gbps,
)
from harness.measure import bandwidth
from harness.measure.bandwidth import PeakBandwidth, load_or_measure_peak
from harness.measure.protocol import MachineRequest, PeakRequest

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_target_id_is_the_lowercased_device_name_with_dashes() -> None:
    assert cuda_target_id("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert cuda_target_id("NVIDIA H200") == "nvidia-h200"
    assert cuda_target_id("NVIDIA A100-SXM4-40GB") == "nvidia-a100-sxm4-40gb"


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("AMD EPYC", "cpu-amd-epyc-2c"),
        ("Intel(R) Xeon(R) Platinum 8480+", "cpu-intel-xeon-platinum-8480-2c"),
        ("AMD EPYC 7763 64-Core Processor", "cpu-amd-epyc-7763-2c"),
        ("Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz", "cpu-intel-xeon-e5-2690-v4-2c"),
        ("12th Gen Intel(R) Core(TM) i7-12700H", "cpu-intel-core-i7-12700h-2c"),
    ],
)
def test_cpu_target_id_keeps_vendor_and_model_and_drops_marketing_words(model_name: str, expected: str) -> None:
    assert cpu_target_id(model_name, 2) == expected


def test_cpu_model_name_reads_the_first_model_name_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model_name(cpuinfo) == "AMD EPYC 9654 96-Core Processor"


def test_cpu_model_name_falls_back_without_cpuinfo(tmp_path: Path) -> None:
    assert cpu_model_name(tmp_path / "missing")  # platform.processor() or the machine, never empty


def _write_cache(root: Path, index: int, level: int, kind: str, size: str) -> None:
    folder = root / f"index{index}"
    folder.mkdir(parents=True)
    (folder / "level").write_text(f"{level}\n")
    (folder / "type").write_text(f"{kind}\n")
    (folder / "size").write_text(f"{size}\n")


def test_cpu_cache_sizes_are_read_from_sys_cache_folders(tmp_path: Path) -> None:
    _write_cache(tmp_path, 0, 1, "Data", "32K")
    _write_cache(tmp_path, 1, 1, "Instruction", "32K")
    _write_cache(tmp_path, 2, 2, "Unified", "1024K")
    _write_cache(tmp_path, 3, 3, "Unified", "32M")
    assert cpu_cache_bytes(tmp_path) == {"l1d": 32768, "l1i": 32768, "l2": 2**20, "l3": 32 * 2**20}
    assert last_level_cache_bytes(tmp_path) == 32 * 2**20


def test_last_level_cache_is_none_without_sys_cache_info(tmp_path: Path) -> None:
    assert last_level_cache_bytes(tmp_path / "missing") is None


def test_vendor_peak_bandwidth_is_double_data_rate_times_bus_width() -> None:
    # H100 SXM: 2619 MHz memory clock, 5120-bit bus -> 2 * 2619e6 * 640 bytes/s.
    assert vendor_peak_bandwidth_gbps(2619, 5120) == pytest.approx(3352.32)
    assert vendor_peak_bandwidth_gbps(None, 5120) is None


def test_resolve_device_auto_picks_cuda_only_when_available() -> None:
    expected = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected


def test_resolve_device_gives_cuda_an_index_that_torch_set_device_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import cell_worker

    fake = helpers_fakecuda.install(monkeypatch)
    fake.current = 1
    assert [resolve_device(name) for name in ("auto", "cuda", "cuda:0")] == ["cuda:1", "cuda:1", "cuda:0"]
    for name in ("auto", "cuda"):
        cell_worker.enter_device(resolve_device(name))
    assert fake.set_devices == [1, 1]


def test_the_fake_set_device_refuses_a_device_without_an_index_as_torch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import cell_worker

    helpers_fakecuda.install(monkeypatch)
    with pytest.raises(ValueError, match="specified index"):
        cell_worker.enter_device("cuda")


def test_cold_samples_of_an_indexed_cuda_device_are_flushed_of_the_gpu_l2() -> None:
    from harness.run.cellround import cache_bytes

    environment = {"l2_cache_bytes": 50 * 2**20, "cpu_l3_cache_bytes": 30 * 2**20}
    assert cache_bytes(environment, "cuda:0") == 50 * 2**20
    assert cache_bytes(environment, "cpu") == 30 * 2**20


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_resolve_device_rejects_cuda_without_a_cuda_device() -> None:
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")


def test_cpu_fingerprint_is_json_serialisable_and_names_its_target() -> None:
    info = fingerprint("cpu")
    assert json.loads(json.dumps(info))["target"] == detect_target("cpu")
    assert info["logical_cores"] >= 1


def _hw(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hw_cmd.register(parser.add_subparsers())
    return parser.parse_args(["hw", "--device", "cpu", *argv])


def test_hw_command_prints_target_and_fingerprint_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = _hw("--json")
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["target"] == detect_target("cpu")
    assert "cpu_model" in printed["fingerprint"]


def test_hw_probe_save_replaces_the_cached_peak_that_runs_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path))
    measured = iter([20.0, 30.0])

    def probe(device: str, env: dict[str, Any]) -> PeakBandwidth:
        return PeakBandwidth(
            read_gbps=next(measured), copy_gbps=10.0, vendor_gbps=None, buffer_bytes=4096, method="fake"
        )

    monkeypatch.setattr(bandwidth, "measure_peak", probe)
    target = detect_target("cpu")
    assert load_or_measure_peak(target, "cpu", measure=probe).read_gbps == 20.0  # a run caches the first
    args = _hw("--probe", "--save", "--json")
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["peak_bandwidth"]["read_gbps"] == 30.0
    assert printed["peak_bandwidth_cached_at"] == str(tmp_path / target / "peak.json")

    def not_again(device: str, env: dict[str, Any]) -> PeakBandwidth:
        raise AssertionError("the saved peak should be read from the cache")

    assert load_or_measure_peak(target, "cpu", measure=not_again).read_gbps == 30.0  # later runs use the new one


def test_hw_probe_without_save_leaves_the_cached_peak_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path))
    fake = PeakBandwidth(read_gbps=25.0, copy_gbps=10.0, vendor_gbps=None, buffer_bytes=4096, method="fake")
    monkeypatch.setattr(bandwidth, "measure_peak", lambda device, env: fake)
    args = _hw("--probe", "--json")
    assert args.func(args) == 0
    assert not (tmp_path / detect_target("cpu") / "peak.json").exists()


def test_hw_save_without_probe_is_a_one_line_user_error() -> None:
    args = _hw("--save")
    with pytest.raises(UserError) as caught:
        args.func(args)
    assert str(caught.value) == "--save: stores what --probe measures; give both"


@pytest.mark.cuda
@needs_cuda
def test_cuda_fingerprint_has_gpu_fields_and_a_vendor_peak() -> None:
    info = fingerprint("cuda")
    assert info["target"].startswith("nvidia-")
    assert info["sm_count"] > 0
    assert info["vendor_peak_bandwidth_gbps"] is None or info["vendor_peak_bandwidth_gbps"] > 100


class FakeNvml:
    """Two GPUs as NVML sees them, by index, UUID and PCI bus id, with a MIG instance on the second."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self) -> None:
        self.handles = {"GPU-aaa": "gpu0", "GPU-bbb": "gpu1", "MIG-ccc": "mig1"}

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid not in self.handles:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return self.handles[uuid]

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> str:
        raise RuntimeError("NVML_ERROR_NOT_FOUND")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceIsMigDeviceHandle(self, handle: str) -> bool:
        return handle.startswith("mig")

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: str) -> str:
        return "gpu1"


def _torch_sees(monkeypatch: pytest.MonkeyPatch, uuid: str | None, count: int = 1) -> None:
    props = type("Props", (), {"uuid": uuid})() if uuid is not None else type("Props", (), {})()
    monkeypatch.setattr(hardware, "_cuda_properties", lambda index: props)
    monkeypatch.setattr(hardware, "_cuda_device_count", lambda: count)
    monkeypatch.setattr(hardware, "_cuda_index", lambda device: 0)


@pytest.mark.parametrize(
    ("torch_uuid", "expected"),
    [("bbb", "gpu1"), ("GPU-bbb", "gpu1"), ("ccc", "mig1"), ("MIG-ccc", "mig1")],
)
def test_nvml_finds_the_gpu_or_mig_instance_by_the_uuid_cuda_reports(
    monkeypatch: pytest.MonkeyPatch, torch_uuid: str, expected: str
) -> None:
    _torch_sees(monkeypatch, torch_uuid)
    assert hardware._nvml_handle(FakeNvml(), "cuda:0") == expected


def test_nvml_never_falls_back_to_the_cuda_ordinal_when_it_sees_several_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under CUDA_VISIBLE_DEVICES=1, CUDA's device 0 is NVML's device 1: the ordinal would read the wrong GPU.
    _torch_sees(monkeypatch, "not-in-nvml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert hardware._nvml_handle(FakeNvml(), "cuda:0") is None


def test_nvml_follows_a_uuid_named_in_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _torch_sees(monkeypatch, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb")
    assert hardware._nvml_handle(FakeNvml(), "cuda:0") == "gpu1"


def test_nvml_uses_the_ordinal_only_when_nvml_and_cuda_each_see_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _torch_sees(monkeypatch, None)
    nvml = FakeNvml()
    nvml.nvmlDeviceGetCount = lambda: 1  # type: ignore[method-assign]
    assert hardware._nvml_handle(nvml, "cuda:0") == "gpu0"


def test_a_mig_instance_reads_clocks_and_power_from_its_gpu() -> None:
    assert hardware.nvml_parent(FakeNvml(), "mig1") == "gpu1"
    assert hardware.nvml_parent(FakeNvml(), "gpu0") == "gpu0"


def test_the_fingerprint_records_the_environment_and_torch_switches_that_change_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    info = fingerprint("cpu")
    assert info["env"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert info["env"]["CUDA_VISIBLE_DEVICES"] == "2,3"
    numerics = info["torch_numerics"]
    assert numerics["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert {"cuda_matmul_allow_tf32", "cudnn_allow_tf32", "sdpa_flash_enabled", "sdpa_math_enabled"} <= numerics.keys()


def test_known_gpus_take_the_vendor_bandwidth_from_the_data_sheet() -> None:
    assert hardware.DATASHEET_BANDWIDTH_GBPS[cuda_target_id("NVIDIA H200")] == 4800.0
    assert hardware.DATASHEET_BANDWIDTH_GBPS[cuda_target_id("NVIDIA H100 80GB HBM3")] == 3350.0
    assert hardware.DATASHEET_BANDWIDTH_GBPS[cuda_target_id("NVIDIA A100-SXM4-80GB")] == 2039.0


def test_every_worker_function_makes_the_payloads_device_current_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import cell_worker

    entered: list[str] = []

    class Entered(Exception):
        pass

    def enter(device: str) -> None:
        entered.append(device)
        raise Entered

    monkeypatch.setattr(cell_worker, "enter_device", enter)
    cell = cell_request(device="cuda:1", budget_bytes=1, backend="sdpa")
    requests: dict[Callable[..., object], object] = {
        cell_worker.measure_cell: cell,
        cell_worker.probe_batch: cell,
        cell_worker.choose_auto_backend: cell,
        cell_worker.describe_machine: MachineRequest(device="cuda:1"),
        cell_worker.probe_peak: PeakRequest(device="cuda:1", target="t", environment={}),
    }
    functions = tuple(requests)
    for function in functions:
        with pytest.raises(Entered):
            function(requests[function])
    assert entered == ["cuda:1"] * len(functions)


def test_entering_a_cuda_device_sets_it_current(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.measure import cell_worker

    fake = helpers_fakecuda.install(monkeypatch)
    cell_worker.enter_device("cuda:1")
    cell_worker.enter_device("cpu")
    assert fake.set_devices == [1]


ZEN4 = (
    "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
    "flags\t\t: fpu avx avx2 fma f16c avx512f avx512bw avx512_bf16\n"
)
ZEN2 = (
    "vendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\nstepping\t: 0\n"
    "flags\t\t: fpu avx avx2 fma f16c\n"
)


def test_cpu_identity_reads_family_model_stepping_and_speed_relevant_extensions(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN4)
    assert hardware.cpu_identity(cpuinfo) == {
        "cpu_family": "25",
        "cpu_model_number": "17",
        "cpu_stepping": "1",
        "cpu_isa": ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16"],
    }


def test_cpus_named_alike_but_built_differently_get_different_target_ids(tmp_path: Path) -> None:
    ids = []
    for text, caches in ((ZEN4, {"l1d": 32768, "l2": 1 << 20}), (ZEN2, {"l1d": 32768, "l2": 512 << 10})):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(text)
        ids.append(cpu_target_id("AMD EPYC", 2, hardware.cpu_signature(hardware.cpu_identity(cpuinfo), caches)))
    assert ids[0].startswith("cpu-amd-epyc-2c-") and ids[1].startswith("cpu-amd-epyc-2c-")
    assert ids[0] != ids[1]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ZEN4)
    again = cpu_target_id(
        "AMD EPYC", 2, hardware.cpu_signature(hardware.cpu_identity(cpuinfo), {"l1d": 32768, "l2": 1 << 20})
    )
    assert again == ids[0]  # stable for the same CPU


def test_the_fingerprint_records_the_order_in_which_sdpa_tries_its_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch 2.10+ on Hopper: cuDNN first (SDPBackend values: 3 cudnn, 1 flash, 2 efficient, 0 math, 4 overrideable).
    monkeypatch.setattr(torch._C, "_get_sdp_priority_order", lambda: [3, 1, 2, 0, 4])
    numerics = hardware.torch_numerics()
    assert numerics["sdpa_priority"] == ["cudnn", "flash", "efficient", "math", "overrideable"]


def test_a_ray_executor_measures_on_its_tasks_one_gpu_by_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray gives each task one GPU through CUDA_VISIBLE_DEVICES: inside it that GPU is cuda:0, and torch needs
    # the index (harness/measure/cell_worker.py enter_device).
    from harness.run import raytasks

    class FakeRay:
        def is_initialized(self) -> bool:
            return True

        def remote(self, **options: object) -> Any:
            return lambda function: function

    node = raytasks.Node(node_id="n1", host="gpu-host", cpus=8, gpus=1, gpu_type="H100")
    monkeypatch.setattr(raytasks, "import_ray", FakeRay)
    monkeypatch.setattr(raytasks, "cluster_nodes", lambda ray: [node])
    monkeypatch.setattr(raytasks.RayExecutor, "_probe", lambda self, timeout_s: None)
    for asked in ("auto", "cuda"):
        executor = raytasks.RayExecutor(device=asked)
        assert executor.device == "cuda:0" and executor.gpu_per_cell
