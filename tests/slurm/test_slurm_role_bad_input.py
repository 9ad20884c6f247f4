"""Bad input to the Slurm role (playbooks/slurm.yml), run from the control node against a converged cluster.

Each case gets one clear message, and the cluster is left as it was: the same slurm.conf, gres.conf
and munge key on every host, the same daemons active, both compute hosts idle. What a case changes on
a host it puts back, also when it fails.

The cluster: SDKIT_SLURM_INVENTORY (an inventory with groups slurm_controller and slurm_compute) and
SDKIT_SLURM_SSH_CONFIG (an ssh_config reaching each host by name), which the Molecule scenario `slurm`
sets for its verify step.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INVENTORY = os.environ.get("SDKIT_SLURM_INVENTORY", "")
SSH_CONFIG = os.environ.get("SDKIT_SLURM_SSH_CONFIG", "")
STATE = ("sha256sum /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/munge/munge.key; "
         "systemctl is-active munge slurmctld slurmd || true")
NEW_KEY = ("head -c 1024 /dev/urandom > /etc/munge/munge.key.new && chown munge:munge /etc/munge/munge.key.new && "
           "chmod 0400 /etc/munge/munge.key.new && cp -p /etc/munge/munge.key /root/munge.key.saved && "
           "mv /etc/munge/munge.key.new /etc/munge/munge.key && systemctl restart munge")
# slurmctld marks a node whose credentials it could not read as not responding until its next ping
# (minutes): restarting slurmd registers it again at once.
RESTORE_KEY = "mv /root/munge.key.saved /etc/munge/munge.key && systemctl restart munge && systemctl restart slurmd"

pytestmark = pytest.mark.skipif(not (INVENTORY and SSH_CONFIG),
                                reason="no Slurm cluster: set SDKIT_SLURM_INVENTORY and SDKIT_SLURM_SSH_CONFIG")


def ansible_env() -> dict[str, str]:
    # Plain text to parse, even under Molecule, which forces colour for its own runs.
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def ssh(host: str, command: str) -> str:
    result = subprocess.run(["ssh", "-F", SSH_CONFIG, host, command], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"{command!r} on {host}: {result.stderr}"
    return result.stdout


@dataclass
class Cluster:
    controller: str
    compute: list[str]
    hostvars: dict[str, dict]

    @property
    def hosts(self) -> list[str]:
        return [self.controller, *self.compute]

    def play(self, *args: str, inventory: str | Path = INVENTORY) -> subprocess.CompletedProcess:
        return subprocess.run(["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks/slurm.yml"), *args],
                              capture_output=True, text=True, env=ansible_env(), timeout=900, check=False)

    def inventory(self, path: Path, groups: dict[str, list[str]], host_vars: dict[str, dict] | None = None) -> Path:
        """The cluster's hosts with every variable they have now, in other groups or with more variables."""
        hosts = {host: {**self.hostvars[host], **(host_vars or {}).get(host, {})} for host in self.hosts}
        children = {group: {"hosts": {host: {} for host in members}} for group, members in groups.items()}
        path.write_text(json.dumps({"all": {"hosts": hosts, "children": children}}))
        return path

    def restore_key(self, host: str) -> None:
        """Put HOST's munge key back and wait until slurmctld sees every node idle again."""
        ssh(host, RESTORE_KEY)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = ssh(self.controller, "sinfo -N -h -o '%N %t'").split()
            if nodes[1::2] == ["idle"] * len(self.compute):
                return
            time.sleep(1)
        raise AssertionError(f"{host} did not come back after its munge key was restored: {nodes}")

    def state(self) -> dict[str, str]:
        """What must not change: the files' checksums and the daemons on each host, the nodes' states."""
        state = {host: ssh(host, STATE) for host in self.hosts}
        state["sinfo"] = ssh(self.controller, "sinfo -N -h -o '%N %G %t'")
        return state


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    listed = subprocess.run(["ansible-inventory", "-i", INVENTORY, "--list"], capture_output=True, text=True,
                            env=ansible_env(), check=True)
    data = json.loads(listed.stdout)
    controllers = data.get("slurm_controller", {}).get("hosts", [])
    assert len(controllers) == 1, f"{INVENTORY}: group slurm_controller must hold one host, not {controllers}"
    return Cluster(controllers[0], sorted(data["slurm_compute"]["hosts"]), data["_meta"]["hostvars"])


@pytest.fixture()
def unchanged(cluster):
    """The cluster as it was before the test, and idle, checked after it."""
    before = cluster.state()
    assert all(line.endswith(" idle") for line in before["sinfo"].splitlines()), before["sinfo"]
    yield before
    assert cluster.state() == before


def failure(result: subprocess.CompletedProcess) -> str:
    """The play's output, once it has failed with a single failed task."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert output.count("FAILED! =>") == 1, output[-3000:]
    return output


def test_no_host_in_slurm_controller(cluster, unchanged, tmp_path):
    inventory = cluster.inventory(tmp_path / "no-controller.json",
                                  {"slurm_compute": cluster.compute, "sophon_sd": cluster.compute})

    output = failure(cluster.play(inventory=inventory))

    assert (f"{', '.join(cluster.compute)} are in group slurm_compute but no host is in group slurm_controller: "
            "add one host to group slurm_controller in the inventory") in output, output[-3000:]


def test_more_chips_claimed_than_usable_stops_before_slurm_conf(cluster, unchanged, tmp_path):
    host = cluster.compute[-1]
    inventory = cluster.inventory(tmp_path / "overclaim.json",
                                  {"slurm_controller": [cluster.controller], "slurm_compute": cluster.compute,
                                   "sophon_sd": cluster.compute},
                                  {host: {"sophon_slurm_chips": 3}})

    output = failure(cluster.play(inventory=inventory))

    assert (f"{host} claims 3 chip(s) (sophon_slurm_chips) but its device fact shows 2 usable "
            "(/dev/bm-sophon0, /dev/bm-sophon1)") in output, output[-3000:]
    # Stopped by the check before anything: no host got as far as slurm.conf.
    assert "Write slurm.conf" not in output


def test_munge_key_changed_on_a_compute_host_is_found_under_check(cluster, unchanged):
    host = cluster.compute[0]
    ssh(host, NEW_KEY)
    try:
        output = failure(cluster.play("--check", "--diff"))
    finally:
        cluster.restore_key(host)

    assert (f"Munge credentials minted on {cluster.controller} do not decode on {host} (") in output, output[-3000:]
    assert "A run without --check installs the cluster key" in output
    assert f"{cluster.compute[1]} (" not in output.split("do not decode on", 1)[1].split(":", 1)[0]


def test_munged_running_with_an_old_key_is_found(cluster, unchanged):
    """The key file is the cluster's again but munged still runs with another: the run changes nothing
    that would restart it, and the check after the daemons names the host."""
    host = cluster.compute[0]
    ssh(host, NEW_KEY)
    ssh(host, "cp -p /root/munge.key.saved /etc/munge/munge.key")
    try:
        output = failure(cluster.play())
    finally:
        cluster.restore_key(host)

    assert (f"Munge credentials minted on {cluster.controller} do not decode on {host} (") in output, output[-3000:]
    assert "so munged runs with an older key or the clocks disagree: run systemctl restart munge on that host" in output
