"""Fixtures for role tests that drive ansible-playbook against throwaway test hosts.

The hosts are servers as the fleet has them (tests/hosts/testhosts.py): systemd as PID 1, reached
over SSH with the run's key and their host keys checked. Each test module gets one long-lived host;
tests in it run plays with different variables and assert on the play's message and on the host's
state afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hosts"))
from testhosts import HostRun  # noqa: E402

# The control node's ML venv (torch, diffusers, ...), mounted read-only into hosts whose tests need a
# venv with torch in it but are not about building one: a pip install of torch costs minutes of CPU
# per host, and the Molecule scenarios build the kit's venv for real.
ML_SITE = (REPO / ".venv-ml" / "lib" / "python3.11" / "site-packages").resolve()
ML_SITE_MOUNT = ["-v", f"{ML_SITE}:/srv/ml-site-packages:ro"]
KIT_VENV = "/opt/sophon-sd/venv"

# The profile the test hosts run (profiles/tutorial-2023-cpu: Debian 12's Python 3.11, torch 2.13.0 CPU),
# the one make test-bundle builds the wheelhouse for.
TEST_PROFILE = "tutorial-2023-cpu"
# The key make test-bundle signs the repo's bundle with: the playbooks check the bundle against it.
TEST_GNUPGHOME = REPO / "build" / "test-bundle-gnupg"
BUNDLE_TOOL = REPO / "tools" / "sdkit_bundle.py"


# The modules that take longest, first: pytest-xdist (--dist loadfile) hands whole modules to its workers in
# collection order, and a long module collected last would leave one worker running alone at the end while
# make test's other parts have finished. Ranked by one run each, alone on 2 cores (tests/bench/cpu_cost.py).
LONGEST_FIRST = ["test_stack_bad_input.py", "test_bundle_mirror.py", "test_train_privileges.py",
                 "test_inventory_precedence.py", "test_runtime_bad_input.py", "test_train_poll_hosts.py",
                 "test_host_boundaries.py", "test_bundle_guard.py", "test_train_poll.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first; within a module the file's order, which its tests rely on (one host each)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items[:] = [item for _, item in sorted(enumerate(items), key=lambda pair: (rank(pair[1]), pair[0]))]


def bundle_fingerprint() -> str:
    return (TEST_GNUPGHOME / "fingerprint").read_text().strip()


def build_bundle(path: Path, gnupghome: Path = TEST_GNUPGHOME, profile: str = TEST_PROFILE) -> Path:
    """A small signed bundle in PATH for PROFILE: its source archives (from the repo's bundle), whatever the
    caller already put in PATH (an apt/ and apt.tar, vendor files), no wheels; built and signed as make bundle does."""
    (path / "sources").mkdir(parents=True, exist_ok=True)
    names = subprocess.run([sys.executable, str(BUNDLE_TOOL), "sources", "--profile", profile],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        shutil.copy2(REPO / "bundle/sources" / name, path / "sources" / name)
    built = subprocess.run([sys.executable, str(BUNDLE_TOOL), "build", "--bundle-dir", str(path), "--profile", profile,
                            "--no-wheelhouse", "--no-apt", "--accept-changes", "--gnupghome", str(gnupghome)],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    return path


@dataclass
class PlayResult:
    rc: int
    output: str

    @property
    def failed(self) -> bool:
        return self.rc != 0


@dataclass
class SshHost:
    name: str
    hosts: HostRun

    def run(self, command: str) -> subprocess.CompletedProcess:
        return self.hosts.ssh(self.name, command)

    def check_output(self, command: str) -> str:
        result = self.run(command)
        assert result.returncode == 0, f"{command!r} failed on {self.name}: {result.stderr}"
        return result.stdout

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {path}").returncode == 0

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or folder onto the host, over the same checked SSH connection."""
        subprocess.run(["scp", "-q", "-r", "-F", str(self.hosts.ssh_config), str(local), f"{self.name}:{remote}"],
                       check=True, capture_output=True)

    def play(self, playbook: str | Path, extra_vars: dict | None = None, tags: str | None = None,
             skip_tags: str | None = None, check: bool = False) -> PlayResult:
        """Run a playbook (a name in playbooks/, or a path) against this host only, with the test profile's pins
        and the test bundle's signing key; CHECK: in check mode (--check --diff)."""
        inventory = self.hosts.run_dir / f"{self.name}.json"
        inventory.write_text(json.dumps({"all": {"hosts": {self.name: self.hosts.inventory_vars(self.name)}}}))
        variables = {"ansible_become": False, "sophon_sd_profile": TEST_PROFILE,
                     "sophon_sd_bundle_signing_fingerprint": bundle_fingerprint(), **(extra_vars or {})}
        command = [
            "ansible-playbook", str(REPO / "playbooks" / playbook),  # an absolute path stays as it is
            "-i", str(inventory),
            "-e", f"sophon_sd_hosts={self.name}",
            "-e", json.dumps(variables),
        ]
        if tags:
            command += ["--tags", tags]
        if skip_tags:
            command += ["--skip-tags", skip_tags]
        if check:
            command += ["--check", "--diff"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
        return PlayResult(result.returncode, result.stdout + result.stderr)


def borrow_ml_venv(host: SshHost, with_pip: bool = False) -> None:
    """The kit's venv on HOST as a venv on Debian's python3 that sees the ML venv's packages (the host
    needs ML_SITE_MOUNT). WITH_PIP: pip in the venv (Debian's python3-venv), for the roles that
    install into it; pip then finds the pinned packages already there."""
    if with_pip:
        host.check_output("apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null")
    host.check_output(
        f"python3 -m venv {'' if with_pip else '--without-pip '}{KIT_VENV} && "
        # addsitedir, not a plain path line: the ML venv's own .pth files (setuptools' distutils) apply too.
        "echo 'import site; site.addsitedir(\"/srv/ml-site-packages\")' "
        f"> {KIT_VENV}/lib/python3.11/site-packages/ml-venv.pth")


@pytest.fixture(scope="session")
def host_run() -> Iterator[HostRun]:
    """The run's keys and known_hosts; every host started through it is removed at the end."""
    run = HostRun(REPO / "build" / "testhosts" / f"roles-{os.getpid()}")
    try:
        yield run
    finally:
        run.remove_all()


@pytest.fixture(scope="module")
def throwaway_host(request, host_run: HostRun) -> Iterator[SshHost]:
    """A fresh Debian 12 server; extra podman options come from the module's PODMAN_OPTIONS list."""
    name = f"sdkit-bad-{request.module.__name__.rsplit('_', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    host_run.start(name, podman_args=getattr(request.module, "PODMAN_OPTIONS", []))
    try:
        yield SshHost(name, host_run)
    finally:
        host_run.remove(name)
