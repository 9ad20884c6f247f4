"""The Slurm cluster the checks in this folder run against: SDKIT_SLURM_INVENTORY names its inventory
(groups slurm_controller and slurm_compute; the Molecule scenario `slurm` sets it, and
SDKIT_SLURM_SSH_CONFIG, for its verify step). Skipped without one."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from slurm_support import Cluster, ansible_env


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

