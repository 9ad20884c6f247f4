"""The kit's own Slurm cluster (sophon_slurm_cluster: provision), checked as a whole on the control node before
any host changes, and the node lines its slurm.conf and gres.conf get.

Standard library only: the action plugin imports it on the control node, and the unit tests without Ansible.
"""

from __future__ import annotations

import json
import os
import re
import stat
from typing import Any, Dict, List, Optional

# What goes into slurm.conf's NodeName lines: a hostname or address with a space, '=' or a newline in it (a
# compromised host's facts, or an edited record) would add settings of its own to a file every host runs as root.
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NODE_ADDR = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}")
IDS = re.compile(r"[0-9]+:[0-9]+")


def munge_key_problem(path: str, min_bytes: int) -> Optional[str]:
    """Why the control node's munge key cannot be the cluster's, or None. Not followed if it is a link, as
    Ansible's stat does not; the message names the path as the variable gives it."""
    local = os.path.expanduser(path)
    try:
        info = os.lstat(local)
    except OSError:
        what = "missing"
    else:
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            what = "not a regular file"
        elif not os.access(local, os.R_OK):
            what = "not readable"
        elif info.st_size < min_bytes:
            what = f"shorter than {min_bytes} bytes"
        elif mode % 64:
            what = f"readable by other users (mode {mode:04o})"
        else:
            return None
    # The line break is the one the message had as YAML in tasks/check.yml: every message stays as it was.
    return (f"The cluster's munge key {path} (sophon_slurm_munge_key_file) on the control node is {what}: run "
            "`make slurm-key` (creates it\nonce, mode 0600), or point sophon_slurm_munge_key_file at the cluster's key, "
            "and rerun.")


def host_problems(host: str, desc: Dict[str, Any], *, is_compute: bool, user: str) -> List[str]:
    """What is wrong with one host of this run: more chips claimed than its device fact shows, no runner user."""
    problems = []
    usable = list(desc.get("usable") or [])
    claimed = int(desc.get("claimed") or 0) if is_compute else 0
    if claimed > len(usable):
        devices = ", ".join(desc.get("dev_nodes") or []) or "no /dev/bm-sophon*"
        problems.append(f"{host} claims {claimed} chip(s) (sophon_slurm_chips) but its device fact shows {len(usable)} "
                        f"usable ({devices}): Slurm would hand out chips the host does not have. Set sophon_slurm_chips "
                        f"for {host} to at most {len(usable)} (or leave it unset), or check its cards (lspci -d 1f1c:, "
                        "bm-smi) and rerun.")
    if is_compute and not desc.get("user"):
        problems.append(f"{host} has no user {user}, which Slurm runs the training jobs as: provision it with "
                        "playbooks/site.yml first (role sophon_host_env creates the user).")
    for key, pattern, what in (("name", NODE_NAME, "hostname"), ("addr", NODE_ADDR, "address")):
        if not pattern.fullmatch(str(desc.get(key, ""))):
            problems.append(f"{host}'s {what} {str(desc.get(key, ''))!r} cannot go into slurm.conf's NodeName line "
                            f"(letters, digits and {'._-' if key == 'name' else '.:_-'} only): fix the host's "
                            f"{'hostname' if key == 'name' else 'sophon_slurm_node_addr'} and rerun.")
    return problems


def node_line(desc: Dict[str, Any]) -> Dict[str, Any]:
    """What slurm.conf and gres.conf say of a compute host, and what the record keeps of it."""
    usable = sorted(int(index) for index in desc.get("usable") or [])
    return {"name": desc["name"], "addr": desc["addr"], "cpus": int(desc["cpus"]), "memory_mb": int(desc["memory_mb"]),
            "chips": usable[:int(desc.get("claimed") or 0)], "user": desc.get("user") or ""}


def valid_record_entry(entry: Any) -> bool:
    """A node line as the kit records it (a record edited by hand, or by an attacker, is not trusted)."""
    return (isinstance(entry, dict) and NODE_NAME.fullmatch(str(entry.get("name", ""))) is not None
            and NODE_ADDR.fullmatch(str(entry.get("addr", ""))) is not None
            and all(isinstance(entry.get(key), int) and entry[key] > 0 for key in ("cpus", "memory_mb"))
            and isinstance(entry.get("chips"), list)
            and all(isinstance(index, int) and index >= 0 for index in entry["chips"])
            and (entry.get("user", "") == "" or IDS.fullmatch(str(entry.get("user"))) is not None))


def read_record(text: str, path: str, controller: str) -> tuple[Dict[str, Dict[str, Any]], List[str]]:
    """The compute hosts' node lines as the controller recorded them when each was last configured, and a problem
    if the file is not one the kit wrote. Empty text: no record yet (the first run)."""
    if not text.strip():
        return {}, []
    try:
        nodes = json.loads(text).get("nodes")
        if not isinstance(nodes, dict) or not all(valid_record_entry(entry) for entry in nodes.values()):
            raise ValueError("not the kit's node record")
    except (ValueError, AttributeError):
        return {}, [f"{path} on {controller} is not the node record role sophon_slurm writes (JSON with each compute "
                    "host's name, address, CPUs, memory, chips and uid:gid): it keeps the node lines of hosts a run "
                    f"leaves out. Remove it and run the Slurm play on every host of the cluster, which writes it again."]
    return nodes, []


def cluster_plan(*, controller_group: str, compute_group: str, controllers: List[str], compute_hosts: List[str],
                 play_hosts: List[str], hosts: Dict[str, Dict[str, Any]], user: str, munge_key_file: str,
                 munge_key_min_bytes: int, record_text: str = "", record_path: str = "") -> Dict[str, Any]:
    """The whole cluster's check, and the nodes slurm.conf lists.

    A compute host in this run is described afresh. One left out (--limit, unreachable, failed) keeps the node
    line recorded when it was last configured, so that slurm.conf never loses a known node because of a run that
    did not reach it; one never configured is left out with a warning. The controller must be in the run: it
    holds the record and runs slurmctld, which must read the new slurm.conf.
    """
    problems: List[str] = []
    warnings: List[str] = []
    if len(controllers) != 1:
        problems.append(
            f"Group {controller_group} has {len(controllers)} hosts ({', '.join(controllers)}): Slurm has one controller. "
            "Keep one host in it and rerun." if controllers else
            f"{', '.join(compute_hosts)} are in group {compute_group} but no host is in group {controller_group}: add one "
            f"host to group {controller_group} in the inventory (it runs slurmctld, the controller) and rerun.")
    elif controllers[0] not in play_hosts:
        problems.append(f"{controllers[0]} in group {controller_group} is not in this run (unreachable, failed, or left "
                        "out by --limit): it runs slurmctld and keeps the record of the cluster's nodes, so every run of "
                        f"the Slurm play needs it. Add it to --limit (or bring it back) and rerun.")
    controller = controllers[0] if len(controllers) == 1 else ""
    record, record_problems = read_record(record_text, record_path, controller)
    problems += record_problems

    members = list(dict.fromkeys(controllers + compute_hosts))
    here = [host for host in members if host in play_hosts and host in hosts]
    for host in here:
        problems += host_problems(host, hosts[host], is_compute=host in compute_hosts, user=user)
    ids = [(host, hosts[host].get("user")) for host in here if hosts[host].get("user")]
    if len({uid for _, uid in ids}) > 1:
        problems.append(f"The runner user {user} has different uid:gid across the cluster "
                        f"({', '.join(f'{host} {uid}' for host, uid in ids)}), and Slurm runs jobs by numeric uid: give "
                        "it the same uid and gid on every host (usermod -u, groupmod -g, then chown its files) and rerun.")
    key_problem = munge_key_problem(munge_key_file, munge_key_min_bytes)
    if key_problem:
        problems.append(key_problem)

    nodes: Dict[str, Dict[str, Any]] = {}
    for host in compute_hosts:
        if host in here:
            nodes[host] = node_line(hosts[host])
        elif host in record:
            nodes[host] = record[host]
            warnings.append(f"{host} in group {compute_group} is not in this run (unreachable, failed, or left out by "
                            f"--limit): slurm.conf keeps its node line from the run that last configured it "
                            f"({record[host]['name']}, {len(record[host]['chips'])} chip(s)). Run the Slurm play with it "
                            "when it is back, to bring its own files up to date.")
        else:
            warnings.append(f"{host} in group {compute_group} is not in this run (unreachable, failed, or left out by "
                            "--limit) and the kit has never configured it: slurm.conf leaves it out for now, and no task "
                            f"runs there. Add it later with ansible-playbook playbooks/slurm.yml --limit "
                            f"localhost,{controller},{host} (localhost checks the bundle), or a run of the whole cluster.")
    user_ids = next((node["user"] for node in nodes.values() if node.get("user")), "")
    return {"problems": problems, "warnings": warnings,
            "controller": node_line(hosts[controller]) if controller in here else {},
            "nodes": sorted(nodes.values(), key=lambda node: node["name"]),
            "record": {"nodes": nodes}, "ids": user_ids.split(":") if user_ids else []}
