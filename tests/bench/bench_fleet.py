"""Benchmark of the fleet control plane over SSH (a script, not a test: it prints figures).

On test hosts that behave like servers (systemd, sshd, host keys checked; tests/hosts/testhosts.py),
provisioned from the bundle with the demo inventory's settings (no chips, the test profile):

  1. a fresh converge of playbooks/site.yml on 2 hosts;
  2. a no-op rerun on 1 of them (changed must be 0), and the tasks it executed there;
  3. `--check --diff` on that host;
  4. the same rerun on 8 hosts: copies of the provisioned host (`podman commit`), each with a host
     key of its own, so that only the control plane's scaling is measured, not 8 venv builds.

Targets (issue 13): rerun <= 20 s, 8 hosts <= 1.5 x 1 host, <= 80 tasks per host, --check no
slower than the rerun. Needs `make test-image test-bundle`. Writes JSON. Usage:
    .venv/bin/python tests/bench/bench_fleet.py [--copies 8] [--out build/bench-fleet.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "hosts"))
sys.path.insert(0, str(REPO / "tests" / "fleet"))
from fleet_support import recap  # noqa: E402
from testhosts import HostRun, podman  # noqa: E402

COPY_IMAGE = "localhost/sophon-sd-bench-provisioned:latest"


def write_inventory(run: HostRun, hosts: list[str]) -> Path:
    """The demo's group_vars (the test bundle's signing key from its group all), every host taking its
    Debian packages from the bundle."""
    settings = yaml.safe_load((REPO / "inventory/demo/group_vars/sophon_sd/main.yml").read_text())
    settings["sophon_apt_source"] = "bundle"
    for_all = yaml.safe_load((REPO / "inventory/demo/group_vars/all/main.yml").read_text())
    inventory = {"all": {"vars": for_all},
                 "sophon_sd": {"hosts": {host: run.inventory_vars(host) for host in hosts}, "vars": settings}}
    path = run.run_dir / f"hosts-{len(hosts)}.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def strategy_env(strategy: str) -> dict[str, str] | None:
    """Environment for a strategy: Ansible's own, or Mitogen's when its package is installed."""
    if not strategy.startswith("mitogen"):
        return {"ANSIBLE_STRATEGY": strategy}
    try:
        import ansible_mitogen
    except ImportError:
        return None
    return {"ANSIBLE_STRATEGY": strategy,
            "ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")}


def timed_run(inventory: Path, *args: str, extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           **(extra_env or {})}
    started = time.monotonic()
    result = subprocess.run(["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks/site.yml"), *args],
                            capture_output=True, text=True, env=env, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"site.yml {' '.join(args)} failed (rc {result.returncode}):\n{result.stdout[-3000:]}")
    hosts = {host: counts for host, counts in recap(result.stdout).items() if host != "localhost"}
    # The recap's ok includes changed; skipped tasks were still evaluated and sent nothing.
    tasks = max(counts.get("ok", 0) + counts.get("skipped", 0) for counts in hosts.values())
    return {"seconds": round(seconds, 1), "changed": sum(counts.get("changed", 0) for counts in hosts.values()),
            "tasks_per_host": tasks, "hosts": len(hosts)}


def show(label: str, row: dict) -> None:
    print(f"{label:<28} {row['seconds']:>7.1f} s  changed={row['changed']:<3} tasks/host={row['tasks_per_host']}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="hosts for the scaling rerun (default: %(default)s)")
    parser.add_argument("--strategies", nargs="*", default=["free", "mitogen_linear"],
                        help="strategies to compare with linear on the copies' rerun (mitogen_*: only if the "
                             "mitogen package is installed in this venv)")
    parser.add_argument("--out", type=Path, default=REPO / "build/bench-fleet.json", help="where the JSON goes")
    args = parser.parse_args()
    run = HostRun(REPO / "build" / "testhosts" / "bench-fleet")
    run.remove_all()
    results: dict = {"cpus": os.cpu_count()}
    try:
        pair = ["sdkit-bench-1", "sdkit-bench-2"]
        for host in pair:
            run.start(host)
        results["converge_2"] = timed_run(write_inventory(run, pair))
        show("converge, 2 hosts", results["converge_2"])
        one = write_inventory(run, pair[:1])
        results["rerun_1"] = timed_run(one)
        show("rerun, 1 host", results["rerun_1"])
        results["check_1"] = timed_run(one, "--check", "--diff")
        show("--check --diff, 1 host", results["check_1"])

        podman("commit", "--quiet", pair[0], COPY_IMAGE)
        run.remove_all()
        copies = [f"sdkit-bench-copy-{index}" for index in range(1, args.copies + 1)]
        copy_run = HostRun(run.run_dir, image=COPY_IMAGE)
        for host in copies:
            copy_run.start(host)
        results[f"rerun_{args.copies}"] = timed_run(write_inventory(copy_run, copies))
        show(f"rerun, {args.copies} hosts", results[f"rerun_{args.copies}"])
        copies_inventory = write_inventory(copy_run, copies)
        for strategy in args.strategies:
            env = strategy_env(strategy)
            if env is None:
                print(f"rerun with {strategy}: mitogen is not installed in this venv (pip install mitogen), skipped")
                continue
            results[f"rerun_{args.copies}_{strategy}"] = timed_run(copies_inventory, extra_env=env)
            show(f"rerun, {args.copies} hosts, {strategy}", results[f"rerun_{args.copies}_{strategy}"])
        run = copy_run
    finally:
        run.remove_all()
        podman("rmi", "-f", COPY_IMAGE, check=False)

    rerun_1, rerun_n = results["rerun_1"]["seconds"], results[f"rerun_{args.copies}"]["seconds"]
    results["ratios"] = {f"rerun_{args.copies}_over_1": round(rerun_n / rerun_1, 2),
                         "check_over_rerun": round(results["check_1"]["seconds"] / rerun_1, 2)}
    print(f"\nrerun {args.copies} hosts / 1 host: x{results['ratios'][f'rerun_{args.copies}_over_1']} (target <= 1.5)")
    print(f"--check / rerun: x{results['ratios']['check_over_rerun']} (target <= 1.0)")
    print(f"rerun 1 host: {rerun_1} s (target <= 20), tasks per host: {results['rerun_1']['tasks_per_host']} "
          f"(target <= 80), changed: {results['rerun_1']['changed']} (must be 0)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
