"""Shared helpers for checks that run from the control node against a provisioned fleet.

The fleet is any inventory of hosts provisioned with playbooks/site.yml: SDKIT_FLEET_INVENTORY,
or the inventory of the Molecule scenario running these checks (its folder holds the group_vars).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fleet_inventory() -> str | None:
    if os.environ.get("SDKIT_FLEET_INVENTORY"):
        return os.environ["SDKIT_FLEET_INVENTORY"]
    molecule_inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    return str(Path(molecule_inventory).parent) if molecule_inventory else None


def ansible_env() -> dict[str, str]:
    # Plain text to parse, even under Molecule, which forces colour for its own runs.
    return {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counters per host (the timing lines after it have no counters)."""
    section = output.split("PLAY RECAP", 1)[-1]
    return {match[1]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[2])}
            for match in re.finditer(r"^(\S+)\s+: (ok=.*)$", section, re.MULTILINE)}


@dataclass
class Fleet:
    inventory: str
    hostvars: dict[str, dict] = field(default_factory=dict)

    @property
    def hosts(self) -> list[str]:
        return sorted(self.hostvars)

    def playbook(self, playbook: str, *args: str, timeout: int = 2400,
                 inventory: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run one of the kit's playbooks over this fleet (or another inventory of its hosts), as make does."""
        return subprocess.run(["ansible-playbook", "-i", str(inventory or self.inventory),
                               str(REPO / "playbooks" / playbook), *args],
                              capture_output=True, text=True, env=ansible_env(), timeout=timeout, check=False)

    def command(self, host: str, argv: list[str]) -> subprocess.CompletedProcess:
        """Run a command on one host through Ansible (whatever its connection is)."""
        return subprocess.run(["ansible", host, "-i", self.inventory, "-m", "ansible.builtin.command",
                               "-a", json.dumps({"argv": argv})],
                              capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
