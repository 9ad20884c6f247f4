"""Fixtures for role tests that drive ansible-playbook against throwaway podman hosts.

Each test module gets one long-lived container; tests in it run plays with different variables
and assert on the play's message and on the host's state afterwards.
"""

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/sophon-sd-test-debian12:latest"
TEST_PROFILE = {
    "sophon_venv_python_version": "3.11",
    "sophon_venv_torch_version": "2.13.0",
    "sophon_venv_torchvision_version": "",
}


@dataclass
class PlayResult:
    rc: int
    output: str

    @property
    def failed(self) -> bool:
        return self.rc != 0


@dataclass
class PodmanHost:
    name: str

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "exec", self.name, "sh", "-c", command],
                              capture_output=True, text=True, check=False)

    def check_output(self, command: str) -> str:
        result = self.run(command)
        assert result.returncode == 0, f"{command!r} failed on {self.name}: {result.stderr}"
        return result.stdout

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {path}").returncode == 0

    def play(self, playbook: str, extra_vars: dict | None = None, tags: str | None = None) -> PlayResult:
        """Run a playbook of this repo against this host only, with the test profile's pins."""
        variables = {"ansible_become": False, **TEST_PROFILE, **(extra_vars or {})}
        command = [
            "ansible-playbook", str(REPO / "playbooks" / playbook),
            "-i", f"{self.name},", "-c", "containers.podman.podman",
            "-e", f"sophon_sd_hosts={self.name}",
            "-e", json.dumps(variables),
        ]
        if tags:
            command += ["--tags", tags]
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        return PlayResult(result.returncode, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def podman_host(request) -> Iterator[PodmanHost]:
    """A fresh Debian 12 host; options come from the module's PODMAN_OPTIONS list."""
    name = f"sdkit-bad-{request.module.__name__.rsplit('_', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    options = getattr(request.module, "PODMAN_OPTIONS", [])
    subprocess.run(["podman", "run", "-d", "--name", name, *options, IMAGE, "sleep", "infinity"],
                   check=True, capture_output=True)
    try:
        yield PodmanHost(name)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], check=False, capture_output=True)
