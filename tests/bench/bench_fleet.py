"""Benchmark of provisioning from the bundle alone (a script, not a test).

For fleets of 1, 2 and 3 hosts (Debian 12 containers with no network, like an air-gapped hall):
the time of the first converge of playbooks/site.yml, of an idempotent rerun, and of
`--check --diff`, as `make provision` runs them. The hosts use the demo inventory's settings
(no chips, the test profile) plus the bundle's apt repository. Needs `make test-bundle` and
`make test-image` first. Prints a table and writes JSON. Usage:
    .venv/bin/python tests/bench/bench_fleet.py [--hosts 1 2 3] [--out build/bench-fleet.json]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/sophon-sd-test-debian12:latest"


def podman(*args: str) -> None:
    subprocess.run(["podman", *args], check=True, capture_output=True)


def write_inventory(folder: Path, hosts: list) -> Path:
    """The demo's group_vars, with every host taking its Debian packages from the bundle."""
    settings = yaml.safe_load((REPO / "inventory/demo/group_vars/sophon_sd/main.yml").read_text())
    settings["sophon_apt_source"] = "bundle"
    inventory = {"sophon_sd": {"hosts": {host: {"ansible_connection": "containers.podman.podman"} for host in hosts},
                               "vars": settings}}
    path = folder / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def timed_run(inventory: Path, *args: str) -> dict:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    started = time.monotonic()
    result = subprocess.run(["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks/site.yml"), *args],
                            capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    changed = sum(int(n) for n in re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", result.stdout, re.MULTILINE))
    if result.returncode != 0:
        sys.exit(f"site.yml {' '.join(args)} failed (rc {result.returncode}):\n{result.stdout[-3000:]}")
    return {"seconds": round(seconds, 1), "changed": changed}


def bench(count: int) -> dict:
    hosts = [f"sdkit-bench-{count}-{index}" for index in range(1, count + 1)]
    for host in hosts:
        podman("run", "-d", "--name", host, IMAGE, "sleep", "infinity")
        podman("network", "disconnect", "podman", host)
    try:
        with tempfile.TemporaryDirectory() as folder:
            inventory = write_inventory(Path(folder), hosts)
            row = {"hosts": count, "converge": timed_run(inventory), "rerun": timed_run(inventory),
                   "check": timed_run(inventory, "--check", "--diff")}
    finally:
        for host in hosts:
            subprocess.run(["podman", "rm", "-f", "-t", "0", host], check=False, capture_output=True)
    print(f"{count} host(s): converge {row['converge']['seconds']} s, rerun {row['rerun']['seconds']} s "
          f"(changed={row['rerun']['changed']}), --check {row['check']['seconds']} s "
          f"(changed={row['check']['changed']})", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 3], help="fleet sizes to measure, in turn")
    parser.add_argument("--out", type=Path, default=REPO / "build/bench-fleet.json", help="where the JSON goes")
    args = parser.parse_args()
    rows = [bench(count) for count in args.hosts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "runs": rows}, indent=2) + "\n")
    print(f"{'hosts':>5} {'converge s':>11} {'rerun s':>8} {'--check s':>10}")
    for row in rows:
        print(f"{row['hosts']:>5} {row['converge']['seconds']:>11} {row['rerun']['seconds']:>8} {row['check']['seconds']:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
