"""The Slurm cluster these checks run against: a controller and compute hosts provisioned with
playbooks/site.yml (role sophon_slurm), from SDKIT_SLURM_INVENTORY or the inventory of the Molecule
scenario running them (tests/molecule/slurm). The control-node helpers are the fleet checks'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import Fleet, ansible_env, fleet_inventory  # noqa: E402


@dataclass
class Cluster(Fleet):
    controller: str = ""

    @property
    def compute(self) -> list[str]:
        return self.hosts

    def on(self, host: str, script: str) -> str:
        """Run a shell script on a host; its output, or the test fails with its error."""
        result = self.command(host, ["sh", "-c", script])
        assert result.returncode == 0, f"{script!r} on {host}: {result.stdout}{result.stderr}"
        return result.stdout.split(">>", 1)[-1].strip()


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    inventory = os.environ.get("SDKIT_SLURM_INVENTORY") or fleet_inventory()
    if not inventory:
        pytest.skip("no Slurm cluster: set SDKIT_SLURM_INVENTORY to an inventory with groups slurm_controller and "
                    "slurm_compute, provisioned with playbooks/site.yml")
    listed = json.loads(subprocess.run(["ansible-inventory", "-i", inventory, "--list"], capture_output=True,
                                       text=True, env=ansible_env(), check=True).stdout)
    controllers = listed.get("slurm_controller", {}).get("hosts", [])
    compute = listed.get("slurm_compute", {}).get("hosts", [])
    if not controllers or not compute:
        pytest.skip(f"{inventory} has no slurm_controller or slurm_compute hosts")
    hostvars = listed["_meta"]["hostvars"]
    return Cluster(inventory, {host: hostvars.get(host, {}) for host in compute}, controller=controllers[0])
