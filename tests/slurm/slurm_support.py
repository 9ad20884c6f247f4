"""Shared helpers for the checks that run from the control node against a Slurm cluster (conftest.py
makes the cluster): a controller and compute hosts provisioned with playbooks/site.yml (role
sophon_slurm). Commands on the hosts go over SDKIT_SLURM_SSH_CONFIG (an ssh_config that reaches each
host by name) when it is set, else through Ansible. Built on the fleet checks' helpers (tests/fleet)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
from fleet_support import Fleet, ansible_env  # noqa: E402,F401 (ansible_env: for conftest)

SSH_CONFIG = os.environ.get("SDKIT_SLURM_SSH_CONFIG", "")
# The test bundle's throwaway signing key (make test-bundle).
TEST_FINGERPRINT = Path(__file__).resolve().parents[2] / "build" / "test-bundle-gnupg" / "fingerprint"


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
        # The bundle check runs on localhost, which reads only group all: the signing key goes there too.
        fingerprint = next((v["sophon_sd_bundle_signing_fingerprint"] for v in self.all_hostvars.values()
                            if v.get("sophon_sd_bundle_signing_fingerprint")), None) or TEST_FINGERPRINT.read_text().strip()
        path.write_text(json.dumps({"all": {"hosts": hosts, "children": children,
                                            "vars": {"sophon_sd_bundle_signing_fingerprint": fingerprint}}}))
        return path
