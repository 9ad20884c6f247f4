"""The test hosts' start: a host that fails to start or boot is started again, and a host that never
comes up fails with every attempt's reason (the CI log showed only that a scenario's create failed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "hosts"))

import testhosts  # noqa: E402


class FakePodman:
    """podman as the start sees it: `run` fails for the first FAILED_RUNS calls."""

    def __init__(self, failed_runs: int) -> None:
        self.failed_runs = failed_runs
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args[0] == "run" and self.failed_runs:
            self.failed_runs -= 1
            if check:
                raise RuntimeError("podman run failed (rc 126): netavark: IO error: aardvark pid not found")
        return subprocess.CompletedProcess(args, 0, stdout="booting\n", stderr="")

    def runs(self) -> list[tuple[str, ...]]:
        return [call for call in self.calls if call[0] == "run"]


def fake_new_key(path: Path, comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("private key")
    path.with_name(path.name + ".pub").write_text("ssh-ed25519 AAAA")


@pytest.fixture
def host_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> testhosts.HostRun:
    monkeypatch.setattr(testhosts, "new_key", fake_new_key)
    return testhosts.HostRun(tmp_path)


def test_a_host_whose_podman_run_fails_once_is_started_again_on_a_new_port(host_run, monkeypatch):
    fake = FakePodman(failed_runs=1)
    monkeypatch.setattr(testhosts, "podman", fake)
    monkeypatch.setattr(testhosts.HostRun, "wait_for_ssh", lambda self, name: None)

    host = host_run.start("sdkit-a")

    assert len(fake.runs()) == 2
    assert host.name == "sdkit-a" and "sdkit-a" in host_run.hosts
    assert ("rm", "-f", "-t", "0", "sdkit-a") in fake.calls


def test_a_host_that_never_boots_fails_with_each_attempts_reason(host_run, monkeypatch):
    fake = FakePodman(failed_runs=0)
    monkeypatch.setattr(testhosts, "podman", fake)

    def never_boots(self, name):
        raise RuntimeError(f"test host {name} did not boot to a reachable sshd within 120 s")
    monkeypatch.setattr(testhosts.HostRun, "wait_for_ssh", never_boots)

    with pytest.raises(RuntimeError) as failure:
        host_run.start("sdkit-b")

    message = str(failure.value)
    assert len(fake.runs()) == testhosts.START_ATTEMPTS
    assert all(f"attempt {n}: test host sdkit-b did not boot" in message for n in range(1, testhosts.START_ATTEMPTS + 1))
    assert "booting" in message  # the console's last lines
    assert "sdkit-b" not in host_run.hosts
