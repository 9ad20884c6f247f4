"""The fleet these checks run against (see fleet_support.py)."""

from __future__ import annotations

import json
import subprocess

import pytest
from fleet_support import Fleet, ansible_env, fleet_inventory


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    inventory = fleet_inventory()
    if not inventory:
        pytest.skip("no fleet: set SDKIT_FLEET_INVENTORY to an inventory of hosts provisioned with playbooks/site.yml")
    listed = subprocess.run(["ansible-inventory", "-i", inventory, "--list"], capture_output=True, text=True,
                            env=ansible_env(), check=True)
    inventory_data = json.loads(listed.stdout)
    members = set(inventory_data.get("sophon_sd", {}).get("hosts", []))
    for child in inventory_data.get("sophon_sd", {}).get("children", []):
        members |= set(inventory_data.get(child, {}).get("hosts", []))
    hostvars = inventory_data["_meta"]["hostvars"]
    return Fleet(inventory, {host: hostvars.get(host, {}) for host in members})
