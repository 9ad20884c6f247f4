#!/usr/bin/env python3
"""Test hosts that behave like the fleet's servers: systemd as PID 1, reached over SSH with checked keys.

Each host is a podman container of the test image (tests/hosts/build-image.sh) booted with systemd.
A *run folder* holds what a fleet operator would have on the control node:

    id_ed25519, id_ed25519.pub   the run's client key (root's authorized key on every host)
    hostkeys/NAME(.pub)          each host's own ed25519 host key, generated here and mounted in
    known_hosts                  those host keys, so SSH checks them (StrictHostKeyChecking=yes)
    ssh_config                   one Host entry per host, for ssh and testinfra's ssh:// backend
    hosts.json                   the hosts started, for `down`

Hosts are reached on a port published on 127.0.0.1, except hosts on an *internal* podman network
(no route out, to stand for an air-gapped server): podman cannot publish their ports, so they are
reached on their own address on that network. podman is used only to start, stop and remove them.

Used by the Molecule scenarios (tests/molecule/shared/create.yml, destroy.yml), the bad-input tests
(tests/roles/conftest.py) and make bench-fleet. Stdlib only: it runs under any Python.

    testhosts.py up --run-dir DIR --platforms JSON   start hosts, print their instance configs (JSON)
    testhosts.py down --run-dir DIR                  remove every host of the run
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/sophon-sd-test-debian12:latest"
CONTAINERS_CONF = REPO / "tests" / "hosts" / "containers.conf"
# ControlPath sockets must fit in a Unix socket path (about 100 bytes), so they do not live in the run folder.
CONTROL_PATH = "/tmp/sdkit-ssh-%C"
BOOT_TIMEOUT_S = 120
START_ATTEMPTS = 3


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF))}
    result = subprocess.run(["podman", *args], capture_output=True, text=True, check=False, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed (rc {result.returncode}): {result.stderr.strip()}")
    return result


def free_port() -> int:
    """A port nothing listens on now; published explicitly so that it survives a restart of the host."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def new_key(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


@dataclass
class TestHost:
    name: str
    address: str
    port: int = 22
    internal_network: str = ""
    # Podman volumes by name (not host paths) among its mounts, e.g. a folder shared by several hosts: removed
    # with the hosts, so that the next run does not find this run's files in them.
    named_volumes: list[str] = field(default_factory=list)

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass
class HostRun:
    """The hosts of one test run and the control-node files that reach them."""

    run_dir: Path
    image: str = IMAGE
    hosts: dict[str, TestHost] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new_key(self.client_key, "sophon-sd-kit test run")
        if self.state_file.exists():
            for entry in json.loads(self.state_file.read_text()):
                self.hosts[entry["name"]] = TestHost(**entry)

    @property
    def client_key(self) -> Path:
        return self.run_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.run_dir / "ssh_config"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "hosts.json"

    def ssh_options(self) -> list[str]:
        """The options every connection of the run uses: this run's key, and only known host keys."""
        return ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]

    def inventory_vars(self, name: str) -> dict[str, str | int]:
        host = self.hosts[name]
        return {"ansible_host": host.address, "ansible_port": host.port, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.client_key),
                "ansible_ssh_common_args": " ".join(self.ssh_options())}

    def instance_config(self, name: str) -> dict[str, str | int]:
        """What Molecule's default driver reads to connect (its instance_config.yml entries)."""
        host = self.hosts[name]
        return {"instance": name, "address": host.address, "port": host.port, "user": "root",
                "identity_file": str(self.client_key)}

    def start(self, name: str, *, podman_args: list[str] | tuple[str, ...] = (), volumes: list[str] | None = None,
              internal_network: str = "", port: int = 0, keep: bool = False) -> TestHost:
        """Start (or restart) host NAME with its own host key and wait until SSH reaches it.

        PORT: the 127.0.0.1 port to publish its sshd on, for an inventory that names it (the demo's);
        by default any free one. KEEP: a host this run started before is started again as it is
        (the demo's host keeps what it was provisioned with), not replaced."""
        if keep and name in self.hosts and podman("container", "exists", name, check=False).returncode == 0:
            podman("start", name)
            self.wait_for_ssh(name)
            return self.hosts[name]
        host_key = self.run_dir / "hostkeys" / name
        new_key(host_key, name)
        # A host that fails to start or boot is removed and started again: on a busy machine podman's
        # network setup (netavark, aardvark-dns) or a just-taken free port fail now and then, and one such
        # hiccup should not fail a whole scenario. Each attempt's reason is kept for the final message.
        failures = []
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                host = self._run_container(name, host_key, podman_args, volumes, internal_network, port)
                self.hosts[name] = host
                self.save()
                self.wait_for_ssh(name)
                return host
            except RuntimeError as error:
                logs = podman("logs", "--tail", "15", name, check=False)
                failures.append(f"attempt {attempt}: {error}\n  last lines of its console:\n    "
                                + "\n    ".join((logs.stdout + logs.stderr).strip().splitlines()[-15:]))
                podman("rm", "-f", "-t", "0", name, check=False)
                self.hosts.pop(name, None)
                self.save()
        raise RuntimeError(f"test host {name} could not be started in {START_ATTEMPTS} attempts:\n"
                           + "\n".join(failures))

    def _run_container(self, name: str, host_key: Path, podman_args: list[str] | tuple[str, ...],
                       volumes: list[str] | None, internal_network: str, port: int) -> TestHost:
        podman("rm", "-f", "-t", "0", name, check=False)
        mounts = [f"{host_key}:/etc/ssh/ssh_host_ed25519_key:ro",
                  f"{host_key}.pub:/etc/ssh/ssh_host_ed25519_key.pub:ro",
                  f"{self.client_key}.pub:/root/.ssh/authorized_keys:ro",
                  *(volumes or [])]
        if internal_network:
            if podman("network", "exists", internal_network, check=False).returncode != 0:
                podman("network", "create", "--internal", internal_network, check=False)
            network_args = ["--network", internal_network]
        else:
            port = port or free_port()
            network_args = ["-p", f"127.0.0.1:{port}:22"]
        podman("run", "-d", "--name", name, "--hostname", name, "--systemd=always",
               *network_args, *[arg for mount in mounts for arg in ("-v", mount)], *podman_args,
               self.image, "/sbin/init")
        if internal_network:
            address = podman("inspect", name, "--format",
                             "{{ (index .NetworkSettings.Networks \"%s\").IPAddress }}" % internal_network).stdout.strip()
            host = TestHost(name, address, 22, internal_network)
        else:
            host = TestHost(name, "127.0.0.1", port)
        host.named_volumes = [volume.split(":", 1)[0] for volume in volumes or [] if "/" not in volume.split(":", 1)[0]]
        return host

    def save(self) -> None:
        """Write hosts.json, known_hosts and ssh_config for the hosts started so far."""
        self.state_file.write_text(json.dumps([asdict(host) for host in self.hosts.values()], indent=2))
        known = []
        config = []
        for host in self.hosts.values():
            public_key = (self.run_dir / "hostkeys" / f"{host.name}.pub").read_text().split()[:2]
            known.append(f"{host.known_hosts_name} {' '.join(public_key)}\n")
            config.append(f"Host {host.name}\n  HostName {host.address}\n  Port {host.port}\n")
        self.known_hosts.write_text("".join(known))
        # Ansible multiplexes its own connections (ansible.cfg); plain ssh and testinfra do it here.
        options = [*self.ssh_options(), "-o", "ControlMaster=auto", "-o", "ControlPersist=300s",
                   "-o", f"ControlPath={CONTROL_PATH}"]
        common = "".join(f"  {option.replace('=', ' ', 1)}\n" for option in options[1::2])
        self.ssh_config.write_text("".join(config) + f"Host *\n  User root\n  IdentityFile {self.client_key}\n{common}")

    def ssh(self, name: str, command: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), name, command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def wait_for_ssh(self, name: str) -> None:
        """Until sshd answers with the recorded key and systemd has finished booting."""
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            last = self.ssh(name, "systemctl is-system-running --wait", timeout=60)
            if last.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"test host {name} did not boot to a reachable sshd within {BOOT_TIMEOUT_S} s: "
                           f"{last.stdout.strip() if last else ''} {last.stderr.strip() if last else ''}")

    def remove(self, name: str) -> None:
        podman("rm", "-f", "-t", "0", name, check=False)
        self.hosts.pop(name, None)
        self.save()

    def remove_all(self) -> None:
        networks = {host.internal_network for host in self.hosts.values() if host.internal_network}
        volumes = {volume for host in self.hosts.values() for volume in host.named_volumes}
        for name in list(self.hosts):
            self.remove(name)
        for network in networks:
            podman("network", "rm", "-f", network, check=False)
        for volume in volumes:
            podman("volume", "rm", "-f", volume, check=False)


def up(run: HostRun, platforms: list[dict], keep: bool = False) -> list[dict]:
    """Start Molecule platforms: name, volumes, `internal_network` for a host with no route out, port."""
    for platform in platforms:
        run.start(platform["name"], volumes=platform.get("volumes"),
                  internal_network=platform.get("internal_network", ""), port=int(platform.get("port", 0)),
                  keep=keep)
    return [run.instance_config(platform["name"]) for platform in platforms]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"], help="start the platforms, or remove every host of the run")
    parser.add_argument("--run-dir", required=True, type=Path, help="the run folder (keys, known_hosts, ssh_config)")
    parser.add_argument("--platforms", default="[]", help="JSON list of {name, volumes, internal_network, port}")
    parser.add_argument("--keep", action="store_true", help="start hosts of this run that exist again, as they are")
    parser.add_argument("--image", default=IMAGE, help="test-host image (default: %(default)s)")
    args = parser.parse_args(argv)
    run = HostRun(args.run_dir, args.image)
    if args.action == "up":
        print(json.dumps(up(run, json.loads(args.platforms), keep=args.keep)))
    else:
        run.remove_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
