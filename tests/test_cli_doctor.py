"""``attnbench doctor`` on the CPU: the subset of device checks that applies here runs and passes (what CI sees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main


@pytest.mark.slow
def test_doctor_on_the_cpu_runs_its_checks_each_in_a_worker_and_passes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "attnbench-cache"))
    code = main(["doctor", "--device", "cpu", "--json"])
    findings = json.loads(capsys.readouterr().out)
    names = {f["name"] for f in findings}
    assert {
        "worker starts on the device",
        "flush makes a cached read cold",
        "out-of-memory is classified as oom",
        "max-batch search lands near the prediction",
        "a cell measured end to end passes its worker checks",
    } <= names
    assert [f for f in findings if f["status"] == "fail"] == [] and code == 0


def test_doctor_shows_a_failed_check_and_exits_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import doctor

    monkeypatch.setattr(doctor, "CPU_CHECKS", (doctor.check_worker_starts,))
    monkeypatch.setattr(doctor, "_max_batch_finding", lambda device: doctor.Finding("max batch", "skip", "not here"))
    monkeypatch.setattr(doctor, "_oom_findings", lambda runner, device: [doctor.Finding("oom", "fail", "error: boom")])
    assert main(["doctor", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "❌ FAIL" in out and "1 failed, 1 skipped" in out


def test_doctor_streams_each_finding_as_it_completes_so_a_stopped_doctor_leaves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import doctor

    stream = tmp_path / "doctor.txt"
    seen_before_oom: list[str] = []

    def oom(runner: object, device: str) -> list[doctor.Finding]:
        seen_before_oom.extend(stream.read_text().splitlines())
        return [doctor.Finding("oom", "pass", "oom: CUDA out of memory\nsecond line")]

    def stopped(device: str) -> doctor.Finding:
        raise KeyboardInterrupt  # the doctor is stopped during its last check

    monkeypatch.setattr(doctor, "CPU_CHECKS", (doctor.check_worker_starts,))
    monkeypatch.setattr(doctor, "_oom_findings", oom)
    monkeypatch.setattr(doctor, "_max_batch_finding", stopped)
    assert main(["doctor", "--device", "cpu", "--stream", str(stream)]) == 130
    assert seen_before_oom[0] == "start\tcheck_worker_starts"
    assert seen_before_oom[1].startswith("pass\tworker starts on the device\ttarget cpu-")
    assert stream.read_text().splitlines()[2:] == [
        "start\tout-of-memory",
        "pass\toom\toom: CUDA out of memory second line",
        "start\tmax batch",
    ]


def test_doctor_with_a_stream_it_cannot_write_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--device", "cpu", "--stream", str(tmp_path / "missing" / "doctor.txt")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "cannot write the stream" in error


def test_on_cuda_the_checks_that_compile_flex_run_after_every_other(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import doctor
    from harness.measure.protocol import CheckRequest
    from harness.run import worker
    from harness.run.worker import WorkerOutcome

    class Runner:
        def call(self, function: object, payload: CheckRequest, timeout_s: float) -> WorkerOutcome:
            return WorkerOutcome("ok", {"findings": [{"name": payload.check, "status": "pass", "detail": ""}]}, None, 0)

    monkeypatch.setattr(worker, "IsolatedRunner", Runner)
    monkeypatch.setattr(doctor, "_oom_findings", lambda runner, device: [])
    monkeypatch.setattr(doctor, "_max_batch_finding", lambda device: doctor.Finding("max batch", "pass", ""))
    started: list[str] = []
    doctor.run_doctor("cuda:0", progress=started.append)
    assert started[-3:] == ["max batch", "check_graphs", "check_choose_backend"]
    assert started[0] == "check_worker_starts" and len(started) == 2 + 7 + 2
