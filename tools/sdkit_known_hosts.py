#!/usr/bin/env python3
"""Record the host keys of an inventory's hosts in the inventory's known_hosts file.

Ansible checks host keys (ansible.cfg has no host_key_checking = False), against the file the
inventory names (`ansible_ssh_common_args: -o UserKnownHostsFile=...`, see inventory/example).
This fills it with ssh-keyscan on first contact and prints each key's fingerprint: compare those with
the ones the servers show on their consoles (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`)
before you trust them. A key that differs from the one recorded is never replaced: it is reported,
because that is what a man in the middle looks like. Fleets with an SSH CA need none of this: put
their `@cert-authority` line in the file instead.

    python3 tools/sdkit_known_hosts.py -i inventory/my-fleet/hosts.yml    # make known-hosts INVENTORY=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def inventory_addresses(inventory: str, limit: str) -> dict[str, tuple[str, int]]:
    """host name -> (address, port), as Ansible would connect."""
    listed = subprocess.run(["ansible-inventory", "-i", inventory, "--limit", limit, "--list"],
                            capture_output=True, text=True, check=True)
    hostvars = json.loads(listed.stdout).get("_meta", {}).get("hostvars", {})
    return {name: (str(variables.get("ansible_host", name)), int(variables.get("ansible_port", 22)))
            for name, variables in hostvars.items()
            if variables.get("ansible_connection", "ssh") in ("ssh", "ansible.builtin.ssh")}


def known_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--inventory", required=True, help="the inventory file (its folder gets known_hosts)")
    parser.add_argument("--limit", default="all", help="only these hosts (Ansible's --limit pattern)")
    parser.add_argument("--known-hosts", type=Path,
                        help="the file to fill (default: known_hosts beside the inventory)")
    args = parser.parse_args(argv)
    known_hosts = args.known_hosts or Path(args.inventory).resolve().parent / "known_hosts"
    recorded: dict[tuple[str, str], str] = {}
    if known_hosts.exists():
        for line in known_hosts.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and not line.startswith("#"):
                recorded[(fields[0], fields[1])] = fields[2]

    new_lines, problems = [], []
    for host, (address, port) in sorted(inventory_addresses(args.inventory, args.limit).items()):
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-p", str(port), "-t", "ed25519,ecdsa,rsa", address],
                              capture_output=True, text=True, check=False)
        keys = [line.split() for line in scan.stdout.splitlines() if line and not line.startswith("#")]
        if not keys:
            problems.append(f"{host}: no answer from {address}:{port} (is sshd running and the port open?)")
            continue
        for _, key_type, key in keys:
            name = known_name(address, port)
            if recorded.get((name, key_type), key) != key:
                problems.append(f"{host}: its {key_type} key differs from the one recorded for {name} in {known_hosts}:"
                                " a reinstalled server or a man in the middle; check it, then delete that line and rerun")
            elif (name, key_type) not in recorded:
                new_lines.append(f"{name} {key_type} {key}\n")
                recorded[(name, key_type)] = key
                fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=f"{name} {key_type} {key}\n",
                                             capture_output=True, text=True, check=False).stdout.split()
                print(f"{host}: recorded {key_type} {fingerprint[1] if len(fingerprint) > 1 else '?'}")

    if new_lines:
        with open(known_hosts, "a", encoding="utf-8") as handle:
            handle.writelines(new_lines)
        os.chmod(known_hosts, 0o644)
    print(f"{len(new_lines)} key(s) added to {known_hosts}; compare the fingerprints above with the servers' own.")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
