"""The control plane's cost per host on a simulated fleet of many hosts (make bench-fleet HOSTS=100).

A script, not a test: it prints figures measured in one run and writes build/bench-fleet-<HOSTS>.json.
A 2-core machine cannot run 100 servers, so the fleet is simulated where the cost is not the control
node's, and real where it is:

  * Many inventory hosts, few machines: HOSTS inventory hosts are backed by --containers systemd test
    hosts (tests/hosts/testhosts.py), copies (`podman commit`) of one host provisioned from the bundle.
    Each inventory host has its own SSH port on its container (its own host-key entry, SSH connection
    and ControlPersist socket), so Ansible does all of its per-host work: one connection, one fork slot,
    every task's module sent and run, every result parsed.
  * Training: each inventory host has its own env file and runs folder on its container, with its own
    device name (SOPHON_SD_DEVICES=cpu:<n>), so its job has its own folder and systemd unit
    (sdkit-train-<run>-cpu<n>.service) and the real job tool starts, polls and reports it. The trainer
    is a stand-in (the env file's SOPHON_SD_VENV points at a python that is a script): it writes a
    progress line to metrics.jsonl every --step-seconds with the time it wrote it, and a small weights
    file at the end, and uses no CPU. The console delay is the time from that line to the poll's line
    showing it.

Phases, in this order:
  1. fresh converge of site.yml on 2 real hosts in one run: one pushed to over SSH, one pulling from a
     bundle mirror (role sophon_mirror on its own loopback, set up first); bytes each received on its
     network interface (the mirror's own setup is counted apart: once per fleet, not per host);
  2. no-op rerun on the pushed host alone, on an otherwise idle machine (goal <= 20 s);
  3. no-op rerun at HOSTS (the copies), with ansible.cfg's forks: control-node CPU seconds per host (the
     ansible-playbook process tree and its SSH connections, not the containers), wall seconds per host;
  4. make train at HOSTS with forks=--train-forks: console delay of each step, the rounds, and the time
     from the last job's end to all results fetched;
  5. make train-status at HOSTS: one pass;
  6. SCHEDULER=slurm: said why it is not simulated.

Needs make test-image test-bundle. Usage:
    .venv/bin/python tests/bench/bench_fleet_sim.py --hosts 100 [--containers 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "hosts"))
sys.path.insert(0, str(REPO / "tests" / "fleet"))
from fleet_figures import Console, proc_stat_cpu, proc_status_rss_kib, training_figures  # noqa: E402
from fleet_support import recap  # noqa: E402
from testhosts import HostRun, free_port, podman  # noqa: E402

COPY_IMAGE = "localhost/sophon-sd-bench-sim:latest"
MIRROR_PORT = 8080
# As tests/roles/test_bundle_mirror.py: the mirror host installs nginx from the bundle's apt repository,
# unpacked away from where the pulling side's apt looks.
MIRROR_PLAY = {"sophon_mirror_profiles": ["tutorial-2023-cpu"], "sophon_apt_source": "bundle",
               "sophon_apt_repo_dir": "/opt/mirror-apt"}
# site.yml's mirror play finds no host: the mirror was set up before, and its bytes are counted apart.
NO_MIRROR_PLAY = "bench_no_mirror_play"
RUN_ID = "bench-sim"
SIM_ROOT = "/var/lib/sophon-sd-sim"
STAND_IN = "/opt/sdkit-sim/venv/bin/python"
POLL_TASK = "Count the round and note when it began"
REPORT_PLAY = "Report the run and check that every job finished"

# The stand-in trainer: the job tool runs `<SOPHON_SD_VENV>/bin/python <trainer> <flags> --output_dir D`.
STAND_IN_TEXT = """#!/usr/bin/python3
# A stand-in for train_lora.py (bench_fleet_sim.py): progress lines at known times, no work.
import json, pathlib, sys, time
out = pathlib.Path(sys.argv[sys.argv.index("--output_dir") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "run.json").write_text(json.dumps({{"total_steps": {steps}}}))
for step in range(1, {steps} + 1):
    time.sleep({pause})
    with open(out / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({{"step": step, "loss": 1.0 / step, "time": time.time()}}) + "\\n")
(out / "pytorch_lora_weights.safetensors").write_bytes(b"stand-in")
"""

# Run on each container as root: one env file and runs folder per inventory host of the container.
SETUP_ALIASES = """
import os, pathlib, shutil, sys
real_env, runs, user = "/etc/sophon-sd/env", "/var/lib/sophon-sd/runs", sys.argv[1]
base = [line for line in open(real_env).read().splitlines()
        if not line.startswith(("SOPHON_SD_DEVICES=", "SOPHON_SD_VENV="))]
for alias, number in zip(sys.argv[2::2], sys.argv[3::2]):
    folder = pathlib.Path("{root}") / alias
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    shutil.copystat(runs, folder / "runs")
    shutil.chown(folder / "runs", user, user)
    env = folder / "env"
    env.write_text("\\n".join(base + ["SOPHON_SD_DEVICES=cpu:" + number, "SOPHON_SD_VENV={venv}"]) + "\\n")
    shutil.copystat(real_env, env)
"""


class Measured:
    """One ansible-playbook run: wall time, the CPU of its process tree and SSH connections, its output."""

    def __init__(self, marker: str) -> None:
        self.marker = marker  # a string in the command line of every SSH client of this bench (its run folder)

    def ssh_masters(self) -> dict[int, tuple[float, int]]:
        """pid -> (CPU seconds, RSS KiB) of this bench's SSH processes. The ControlPersist masters outlive
        the playbook and are no waited-for child of it, so RUSAGE_CHILDREN misses their CPU."""
        ticks = os.sysconf("SC_CLK_TCK")
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if self.marker not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    continue
                name, cpu = proc_stat_cpu((proc / "stat").read_text(), ticks)
                rss = proc_status_rss_kib((proc / "status").read_text())
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if name == "ssh":
                found[int(proc.name)] = (cpu, rss)
        return found

    def run(self, playbook: str, inventory: Path, *args: str, env: dict[str, str] | None = None,
            check: bool = True) -> tuple[dict, Console]:
        command = ["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / playbook), *args]
        full_env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1",
                    # A ControlPersist master renames itself "ssh: <control path> [mux]": with its sockets in the
                    # run folder, the marker finds this bench's masters and no one else's.
                    "ANSIBLE_SSH_CONTROL_PATH_DIR": str(Path(self.marker) / "cp"), **(env or {})}
        masters_before = self.ssh_masters()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        lines: list[tuple[float, str]] = []
        # Read line by line as it comes: the training figures need when each line reached the console.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=full_env) as process:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append((time.time(), line.rstrip("\n")))
        seconds = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        masters_after = self.ssh_masters()
        output = "\n".join(line for _, line in lines)
        # Each run's console, for where the time and bytes went (the profile_tasks timings are in it).
        log = Path(self.marker) / "logs" / f"{len(list((Path(self.marker) / 'logs').glob('*.log'))) + 1:02d}-{playbook}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(f"{when:.3f} {line}" for when, line in lines) + "\n")
        if check and process.returncode != 0:
            sys.exit(f"{playbook} {' '.join(args)} failed (rc {process.returncode}):\n{output[-4000:]}")
        children_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        masters_cpu = sum(cpu - masters_before.get(pid, (0.0, 0))[0] for pid, (cpu, _) in masters_after.items())
        hosts = {host: counts for host, counts in recap(output).items() if host != "localhost"}
        return {"command": shlex.join(["ansible-playbook", *command[1:]]), "rc": process.returncode,
                "seconds": round(seconds, 1), "hosts": len(hosts),
                "changed": sum(counts.get("changed", 0) for counts in hosts.values()),
                "tasks_per_host": max((c.get("ok", 0) + c.get("skipped", 0) for c in hosts.values()), default=0),
                "cpu_s": round(children_cpu + masters_cpu, 1), "cpu_ansible_and_ssh_clients_s": round(children_cpu, 1),
                "cpu_ssh_masters_s": round(masters_cpu, 1), "ssh_masters": len(masters_after),
                "ssh_masters_rss_mib": round(sum(rss for _, rss in masters_after.values()) / 1024, 1),
                # The largest waited-for child: ansible-playbook's own process (its forks are smaller).
                "peak_rss_mib_largest_process": round(after.ru_maxrss / 1024, 1)}, Console(lines)


def demo_settings() -> tuple[dict, dict]:
    """The demo inventory's group_vars (the test profile, no chips; the test bundle's key), every host
    taking its Debian packages from the bundle."""
    settings = yaml.safe_load((REPO / "inventory/demo/group_vars/sophon_sd/main.yml").read_text())
    settings["sophon_apt_source"] = "bundle"
    return settings, yaml.safe_load((REPO / "inventory/demo/group_vars/all/main.yml").read_text())


def write_inventory(path: Path, host_vars: dict[str, dict]) -> Path:
    settings, for_all = demo_settings()
    path.write_text(yaml.safe_dump({"all": {"vars": {**for_all, "sophon_sd_mirror_hosts": NO_MIRROR_PLAY}},
                                    "sophon_sd": {"hosts": host_vars, "vars": settings}}))
    return path


def received_bytes(run: HostRun, host: str) -> int:
    """Bytes the host received on its network interfaces but loopback (where its mirror is)."""
    table = run.ssh(host, "cat /proc/net/dev").stdout.splitlines()[2:]
    return sum(int(line.split(":", 1)[1].split()[0]) for line in table if line.split(":", 1)[0].strip() != "lo")


def checked_ssh(run: HostRun, host: str, command: str) -> str:
    result = run.ssh(host, command)
    if result.returncode != 0:
        sys.exit(f"on {host}: {command[:200]} failed (rc {result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def show(label: str, row: dict, hosts: int = 1) -> None:
    per_host = f"  per host: {row['cpu_s'] / hosts:.2f} s CPU, {row['seconds'] / hosts:.2f} s wall" if hosts > 1 else ""
    print(f"{label:<34} {row['seconds']:>7.1f} s  changed={row['changed']:<3} CPU {row['cpu_s']:.1f} s{per_host}",
          flush=True)


def fresh_converge(run: HostRun, measure: Measured, results: dict) -> tuple[str, Path]:
    """Phases 1 and 2; returns the pushed host and its 1-host inventory."""
    pushed, pulling = "sdkit-sim-push", "sdkit-sim-mirror"
    run.start(pushed)
    run.start(pulling)
    mirror_inventory = write_inventory(run.run_dir / "mirror.yml", {pulling: run.inventory_vars(pulling)})
    before = received_bytes(run, pulling)
    results["mirror_setup"], _ = measure.run("mirror.yml", mirror_inventory,
                                             "-e", json.dumps({**MIRROR_PLAY, "sophon_sd_mirror_hosts": pulling}))
    results["mirror_setup"]["received_bytes"] = received_bytes(run, pulling) - before
    show("mirror set up (once per fleet)", results["mirror_setup"])

    mirror_vars = {"sophon_sd_bundle_transport": "mirror",
                   "sophon_sd_bundle_mirror_url": f"http://127.0.0.1:{MIRROR_PORT}"}
    # One run for both, the pulling host first in the batch (sorted names): the case of a fleet that mixes
    # both, which once failed there (run_once under a host's `when`, tests/unit/roles/test_run_once.py).
    both = write_inventory(run.run_dir / "converge.yml", {pushed: run.inventory_vars(pushed),
                                                          pulling: {**run.inventory_vars(pulling), **mirror_vars}})
    before = {host: received_bytes(run, host) for host in (pushed, pulling)}
    results["converge_2"], _ = measure.run("site.yml", both)
    sent = {"push": received_bytes(run, pushed) - before[pushed], "mirror": received_bytes(run, pulling) - before[pulling]}
    show("fresh converge, 2 hosts", results["converge_2"])
    results["fresh_converge_bytes_per_host"] = sent
    print(f"  bytes the control node sent: push {sent['push'] / 1e6:.1f} MB, mirror {sent['mirror'] / 1e6:.1f} MB "
          "per host (goal with a mirror <= 5 MB)", flush=True)
    run.remove(pulling)

    one = write_inventory(run.run_dir / "one.yml", {pushed: run.inventory_vars(pushed)})
    results["rerun_1"], _ = measure.run("site.yml", one)
    show("no-op rerun, 1 host (idle machine)", results["rerun_1"])
    return pushed, one


def start_copies(run: HostRun, hosts: int, containers: int) -> dict[str, dict]:
    """The simulated fleet: CONTAINERS copies, each reached on HOSTS/CONTAINERS ports of its own, one per
    inventory host. Returns the inventory hosts' variables (the connection only)."""
    known = []
    host_vars: dict[str, dict] = {}
    taken: set[int] = set()
    for index in range(containers):
        aliases = [f"sim-{n:03d}" for n in range(index + 1, hosts + 1, containers)]
        ports = []
        while len(ports) < len(aliases):
            port = free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        name = f"sdkit-sim-{index + 1}"
        run.start(name, podman_args=[arg for port in ports for arg in ("-p", f"127.0.0.1:{port}:22")])
        public_key = " ".join((run.run_dir / "hostkeys" / f"{name}.pub").read_text().split()[:2])
        for alias, port in zip(aliases, ports):
            known.append(f"[127.0.0.1]:{port} {public_key}\n")
            host_vars[alias] = {**run.inventory_vars(name), "ansible_port": port, "sdkit_sim_container": name}
    fleet_known = run.run_dir / "fleet_known_hosts"
    fleet_known.write_text("".join(known))
    for values in host_vars.values():
        values["ansible_ssh_common_args"] = values["ansible_ssh_common_args"].replace(
            f"UserKnownHostsFile={run.known_hosts}", f"UserKnownHostsFile={fleet_known}")
    return dict(sorted(host_vars.items()))


def prepare_training(run: HostRun, host_vars: dict[str, dict], steps: int, pause: float) -> dict[str, dict]:
    """Install the stand-in trainer and each inventory host's env file and runs folder; returns the
    training inventory's variables."""
    settings, _ = demo_settings()
    user = settings.get("sophon_sd_user", "sophon-sd")
    by_container: dict[str, list[str]] = {}
    for alias, values in host_vars.items():
        by_container.setdefault(values["sdkit_sim_container"], []).append(alias)
    stand_in = STAND_IN_TEXT.format(steps=steps, pause=pause)
    setup = SETUP_ALIASES.format(root=SIM_ROOT, venv=str(Path(STAND_IN).parents[1]))
    for container, aliases in by_container.items():
        checked_ssh(run, container, f"install -d {shlex.quote(str(Path(STAND_IN).parent))} && "
                                    f"printf %s {shlex.quote(stand_in)} > {STAND_IN} && chmod 0755 {STAND_IN}")
        numbers = [str(int(alias.split("-")[1])) for alias in aliases]
        args = " ".join(shlex.quote(a) for pair in zip(aliases, numbers) for a in pair)
        checked_ssh(run, container, f"python3 -c {shlex.quote(setup)} {shlex.quote(user)} {args}")
    return {alias: {**values, "sophon_sd_env_file": f"{SIM_ROOT}/{alias}/env",
                    "sophon_sd_runs_dir": f"{SIM_ROOT}/{alias}/runs"} for alias, values in host_vars.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--hosts", type=int, default=10, help="inventory hosts of the simulated fleet (default: %(default)s)")
    parser.add_argument("--containers", type=int, default=5,
                        help="systemd containers behind them; each costs about 100 MB of memory and its share of the "
                             "2 cores' time for the modules it runs (default: %(default)s)")
    parser.add_argument("--train-forks", type=int, default=10, help="forks of the training run (default: %(default)s)")
    parser.add_argument("--poll-interval", type=int, default=20,
                        help="seconds between the starts of two poll rounds, at least (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="the stand-in trainer's steps (default: %(default)s)")
    parser.add_argument("--step-seconds", type=float, default=20.0,
                        help="the stand-in trainer's seconds per step (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: build/bench-fleet-<HOSTS>.json)")
    args = parser.parse_args()
    if args.hosts < 1 or not 1 <= args.containers <= args.hosts:
        parser.error(f"--hosts {args.hosts} --containers {args.containers}: give at least 1 host and from 1 to "
                     "--hosts containers")
    out = args.out or REPO / "build" / f"bench-fleet-{args.hosts}.json"
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"command: {command}\nmake bench-fleet HOSTS={args.hosts}: {args.hosts} inventory hosts on "
          f"{args.containers} containers, {os.cpu_count()} CPUs\n", flush=True)
    run = HostRun(REPO / "build" / "testhosts" / "bench-fleet-sim")
    run.remove_all()
    shutil.rmtree(run.run_dir / "logs", ignore_errors=True)
    shutil.rmtree(run.run_dir / "runs", ignore_errors=True)
    measure = Measured(str(run.run_dir))
    results: dict = {"command": f"make bench-fleet HOSTS={args.hosts}", "script": command, "cpus": os.cpu_count(),
                     "hosts": args.hosts, "containers": args.containers,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        pushed, _ = fresh_converge(run, measure, results)
        podman("commit", "--quiet", pushed, COPY_IMAGE)
        run.remove_all()
        copy_run = HostRun(run.run_dir, image=COPY_IMAGE)
        run = copy_run
        host_vars = start_copies(run, args.hosts, args.containers)
        fleet = write_inventory(run.run_dir / "fleet.yml", host_vars)
        forks = int(os.environ.get("ANSIBLE_FORKS", "0")) or 20  # ansible.cfg's
        results["rerun_n"], _ = measure.run("site.yml", fleet)
        results["rerun_n"]["forks"] = forks
        show(f"no-op rerun, {args.hosts} hosts, forks {forks}", results["rerun_n"], args.hosts)

        train_inventory = write_inventory(run.run_dir / "train.yml", prepare_training(
            run, host_vars, args.steps, args.step_seconds))
        fetch_dir = run.run_dir / "runs"
        train_env = {"RUN_ID": RUN_ID, "ANSIBLE_FORKS": str(args.train_forks)}
        extra = ["-e", json.dumps({"sophon_sd_train_poll_interval": args.poll_interval,
                                   "sophon_sd_train_fetch_dir": str(fetch_dir)})]
        results["train"], console = measure.run("train.yml", train_inventory, *extra, env=train_env, check=False)
        results["train"].update(forks=args.train_forks, poll_interval_s=args.poll_interval, steps=args.steps,
                                step_seconds=args.step_seconds,
                                **training_figures(console, fetch_dir / RUN_ID, POLL_TASK, REPORT_PLAY))
        train = results["train"]
        print(f"make train, {args.hosts} hosts, forks {args.train_forks}: {train['seconds']} s, rc {train['rc']}, "
              f"{train['rounds']} rounds (length {train['round_length_s']}), CPU {train['cpu_s']} s", flush=True)
        print(f"  console delay of a step: {train['console_delay_s']} s, {train['console_delay_rounds']} rounds "
              f"(goal <= 2); steps never shown: {train['steps_never_shown']}", flush=True)
        print(f"  last job's end to all results fetched: {train['last_end_to_all_fetched_s']} s", flush=True)

        results["train_status"], _ = measure.run("train_status.yml", train_inventory, env={"RUN_ID": RUN_ID})
        show(f"make train-status, {args.hosts} hosts", results["train_status"], args.hosts)
        results["slurm"] = ("not simulated: a Slurm node is a slurmd with its own NodeName and chips, one per "
                            "machine, so inventory hosts that share a container cannot be nodes of their own; "
                            "one squeue per round for the whole run is what the poll does (tests/molecule/slurm)")
        print(f"SCHEDULER=slurm: {results['slurm']}")
    finally:
        run.remove_all()
        podman("rmi", "-f", COPY_IMAGE, check=False)

    rerun = results["rerun_n"]
    results["figures"] = {
        "rerun_cpu_s_per_host": round(rerun["cpu_s"] / args.hosts, 2),
        "rerun_wall_s_per_host": round(rerun["seconds"] / args.hosts, 2),
        "rerun_1_host_s": results["rerun_1"]["seconds"],
        "fresh_converge_mb_per_host": {k: round(v / 1e6, 2) for k, v in results["fresh_converge_bytes_per_host"].items()},
        "train_console_delay_rounds_max": results["train"]["console_delay_rounds"]["max"],
        "train_last_end_to_all_fetched_s": results["train"]["last_end_to_all_fetched_s"],
        "train_status_s": results["train_status"]["seconds"],
    }
    print("\nfigures:", json.dumps(results["figures"], indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
