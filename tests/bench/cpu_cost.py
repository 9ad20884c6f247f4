#!/usr/bin/env python3
"""CPU seconds a test command costs: its own process tree, plus the test hosts (podman containers) it starts.

make test runs everything side by side on the CI machine's 2 cores, so its wall time is set by the CPU
all parts need together, not by any part's wall time alone (a part that waits 200 s on a busy machine may
need 30 s of CPU). This prints what one part needs, whatever else the machine runs beside it:

    python tests/bench/cpu_cost.py --hosts sdkit-bad- -- pytest -q tests/roles/test_assets.py

  command_cpu_s   user+system seconds of the command and everything it waited for (ansible, ssh, pytest)
  hosts_cpu_s     user+system seconds spent inside containers whose name starts with --hosts (systemd,
                  sshd and the modules Ansible runs there), sampled every second while they live
  wall_s          wall seconds, which do depend on the machine's load

Containers that live for less than a sampling interval are missed; the test hosts live for minutes.
Stdlib only; needs cgroup v1's cpuacct or cgroup v2 (podman's libpod cgroups).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CGROUP_ROOTS = [Path("/sys/fs/cgroup/cpuacct/libpod_parent"), Path("/sys/fs/cgroup/machine.slice"),
                Path("/sys/fs/cgroup/unified/libpod_parent")]


def container_cpu_ns(container_id: str) -> int | None:
    """CPU nanoseconds charged to the container so far, from whichever cgroup layout the machine has."""
    for root in CGROUP_ROOTS:
        for name in (f"libpod-{container_id}", f"libpod-{container_id}.scope"):
            group = root / name
            if (group / "cpuacct.usage").is_file():
                return int((group / "cpuacct.usage").read_text())
            if (group / "cpu.stat").is_file():
                usage = dict(line.split() for line in (group / "cpu.stat").read_text().splitlines())
                return int(usage["usage_usec"]) * 1000
    return None


def hosts_named(prefix: str) -> dict[str, str]:
    listed = subprocess.run(["podman", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
                            capture_output=True, text=True, check=False).stdout.split("\n")
    return {fields[0]: fields[1] for fields in (line.split() for line in listed) if len(fields) == 2
            and fields[1].startswith(prefix)}


class HostSampler(threading.Thread):
    """The highest CPU reading seen for each matching container: its last one before it was removed."""

    def __init__(self, prefix: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.prefix, self.interval_s = prefix, interval_s
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.names: dict[str, str] = {}
        self.done = threading.Event()
        self.preexisting = set(hosts_named(prefix))

    def run(self) -> None:
        readings = 0
        hosts: dict[str, str] = {}
        while not self.done.is_set():
            # `podman ps` costs about a tenth of a second of CPU: the hosts are listed every tenth reading only
            # (a host's first seconds can be missed), and their cgroups read at every one.
            if readings % 10 == 0:
                hosts = hosts_named(self.prefix)
            readings += 1
            for container_id, name in hosts.items():
                usage = container_cpu_ns(container_id)
                if usage is not None:
                    # A host that already ran before the command counts from the first reading only.
                    self.first.setdefault(container_id, usage if container_id in self.preexisting else 0)
                    self.last[container_id] = max(usage, self.last.get(container_id, 0))
                    self.names[container_id] = name
            self.done.wait(self.interval_s)

    def cpu_s(self) -> float:
        return sum(self.last[cid] - self.first[cid] for cid in self.last) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="sdkit-", help="count containers whose name starts with this (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between container readings")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")

    sampler = HostSampler(args.hosts, args.interval)
    sampler.start()
    started = time.monotonic()
    # wait4: the command's own rusage, not the sampler's podman calls (children of this process too).
    _, status, own = os.wait4(subprocess.Popen(command).pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    figures = {"command": " ".join(command), "rc": rc, "wall_s": round(wall, 1),
               "command_cpu_s": round(own.ru_utime + own.ru_stime, 1), "hosts_cpu_s": round(sampler.cpu_s(), 1),
               "hosts": sorted(set(sampler.names.values()))}
    figures["cpu_s"] = round(figures["command_cpu_s"] + figures["hosts_cpu_s"], 1)
    print(json.dumps(figures), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
