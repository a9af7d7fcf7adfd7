"""``attnbench doctor`` on the CPU: the subset of device checks that applies here runs and passes (what CI sees)."""

from __future__ import annotations

import json

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
