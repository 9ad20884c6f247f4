"""The Slurm cluster the checks in this folder run against: a controller and compute hosts provisioned
with playbooks/site.yml (role sophon_slurm). SDKIT_SLURM_INVENTORY names its inventory (groups
slurm_controller and slurm_compute) and SDKIT_SLURM_SSH_CONFIG an ssh_config that reaches each host
by name; the Molecule scenario `slurm` sets both for its verify step. Without an ssh_config, commands
on the hosts go through Ansible. The control-node helpers are the fleet checks' (tests/fleet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import REPO, Fleet, ansible_env  # noqa: E402

SSH_CONFIG = os.environ.get("SDKIT_SLURM_SSH_CONFIG", "")


@dataclass
class Cluster(Fleet):
    """Fleet's hosts (and hostvars) are the compute hosts; the controller and every host's variables besides."""

    controller: str = ""
    all_hostvars: dict[str, dict] = field(default_factory=dict)

    @property
    def compute(self) -> list[str]:
        return self.hosts

    def on(self, host: str, script: str) -> str:
        """Run a shell script on a host as root; its output, or the test fails with its error."""
        if SSH_CONFIG:
            result = subprocess.run(["ssh", "-F", SSH_CONFIG, host, script], capture_output=True, text=True,
                                    timeout=300, check=False)
            assert result.returncode == 0, f"{script!r} on {host}: {result.stdout}{result.stderr}"
            return result.stdout.strip()
        result = self.command(host, ["sh", "-c", script])
        assert result.returncode == 0, f"{script!r} on {host}: {result.stdout}{result.stderr}"
        return result.stdout.split(">>", 1)[-1].strip()

    def inventory_with(self, path: Path, groups: dict[str, list[str]], host_vars: dict[str, dict] | None = None) -> Path:
        """An inventory of the cluster's hosts with every variable they have now, in other groups or with more."""
        hosts = {host: {**variables, **(host_vars or {}).get(host, {})} for host, variables in self.all_hostvars.items()}
        children = {group: {"hosts": {host: {} for host in members}} for group, members in groups.items()}
        path.write_text(json.dumps({"all": {"hosts": hosts, "children": children}}))
        return path


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    inventory = os.environ.get("SDKIT_SLURM_INVENTORY")
    if not inventory:
        pytest.skip("no Slurm cluster: set SDKIT_SLURM_INVENTORY to an inventory with groups slurm_controller and "
                    "slurm_compute, provisioned with playbooks/site.yml")
    listed = json.loads(subprocess.run(["ansible-inventory", "-i", inventory, "--list"], capture_output=True,
                                       text=True, env=ansible_env(), check=True).stdout)
    controllers = listed.get("slurm_controller", {}).get("hosts", [])
    compute = sorted(listed.get("slurm_compute", {}).get("hosts", []))
    assert len(controllers) == 1 and compute, \
        f"{inventory}: group slurm_controller must hold one host ({controllers}) and slurm_compute some ({compute})"
    hostvars = listed["_meta"]["hostvars"]
    return Cluster(inventory, {host: hostvars.get(host, {}) for host in compute}, controller=controllers[0],
                   all_hostvars={host: hostvars.get(host, {}) for host in [controllers[0], *compute]})


__all__ = ["REPO", "Cluster", "ansible_env"]
