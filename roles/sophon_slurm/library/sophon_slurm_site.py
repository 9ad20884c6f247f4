#!/usr/bin/python
"""What the kit needs of a Slurm cluster it does not manage, checked on one of its compute hosts."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sophon_slurm_site
short_description: Check that an existing Slurm cluster can run the kit's training tasks on this host
description:
  - For O(sophon_slurm_cluster=existing) (role sophon_slurm): reads, never writes. Slurm knows this host as
    a node, counts its chips under the kit's generic resource name as the device fact does, and lists
    a device file for each in gres.conf; the partition exists; munge answers; and the runner user can
    submit a job for one chip to this node (C(sbatch --test-only)).
  - Returns one line per problem, each naming the host, the setting and the fix, and the node's state.
options:
  host:
    description: This host's name in the inventory, which the messages name.
    type: str
    required: true
  node:
    description: This host's Slurm node name.
    type: str
    required: true
  gres:
    description: The generic resource name the chips go by (the kit submits --gres=NAME:1).
    type: str
    required: true
  partition:
    description: The partition the tasks are submitted to; empty for the cluster's default.
    type: str
    default: ""
  user:
    description: The runner user, as whom Slurm runs the tasks.
    type: str
    required: true
  chips:
    description: How many usable chips the host's device fact shows.
    type: int
    required: true
  runners_dir:
    description: The kit's runners on this host (root's), whose sdkit_slurm reads Slurm's output.
    type: path
    required: true
  unavailable_states:
    description: >-
      The node states (sinfo's words) of a node that takes no jobs, the role's sophon_slurm_unavailable_states:
      then the test submission goes to the cluster rather than to this node.
    type: list
    elements: str
    required: true
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Check the site's cluster from this host
  sophon_slurm_site:
    host: "{{ inventory_hostname }}"
    node: "{{ ansible_facts['hostname'] }}"
    gres: tpu
    partition: gpu-tpu
    user: sophon-sd
    chips: 2
    runners_dir: /opt/sophon-sd/runners
    unavailable_states: [drained, draining, drain, down, fail, failing]
"""

RETURN = r"""
problems:
  description: What stops the kit from training here, one line each, with the fix.
  returned: always
  type: list
  elements: str
state:
  description: The node's state in Slurm (idle, mixed, drained, ...), without flags; empty if unknown.
  returned: always
  type: str
reason:
  description: Slurm's Reason for a drained or down node; empty if none.
  returned: always
  type: str
"""

import re
import subprocess
import sys
from typing import List, Tuple


def run(argv: List[str], stdin: bytes | None = None) -> Tuple[int, str]:
    """rc and the output (stdout, else stderr) of a Slurm or munge command, folded to one line."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        return 127, f"{argv[0]} not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not answer in 60 s"
    text = (done.stdout if done.returncode == 0 else done.stderr or done.stdout).decode(errors="replace")
    return done.returncode, " ".join(text.split())


def field(text: str, name: str) -> str:
    found = re.search(rf"(?:^|\s){name}=(\S*)", text)
    return found.group(1) if found else ""


def node_state(text: str) -> str:
    """sinfo's word for scontrol's State=BASE+FLAGS: IDLE+DRAIN is drained, MIXED+DRAIN draining."""
    base, *flags = field(text, "State").lower().split("+")
    base = base.rstrip("*")
    if "drain" in flags:
        return "draining" if base in ("allocated", "mixed", "completing") else "drained"
    return base


def check(params: dict, sdkit_slurm) -> Tuple[List[str], str, str]:
    host, node, gres, partition, user = (params[name] for name in ("host", "node", "gres", "partition", "user"))
    problems: List[str] = []
    rc, node_text = run(["scontrol", "show", "node", "-o", node])
    if rc != 0:
        return [f"{host}: the Slurm cluster does not know node {node} ({node_text}): add it to the site's slurm.conf, "
                "or take the host out of the inventory group slurm_compute"], "", ""
    state = node_state(node_text)
    reason = field(node_text, "Reason")
    counted = sdkit_slurm.gres_count(node_text, gres)
    if counted != params["chips"]:
        problems.append(f"{host}: Slurm counts {counted} '{gres}' on node {node} (Gres={field(node_text, 'Gres') or 'none'}), "
                        f"but its device fact shows {params['chips']} usable chip(s): give the node "
                        f"Gres={gres}:<type>:{params['chips']} in the site's slurm.conf, or set sophon_sd_slurm_gres to the "
                        "name the site gives the chips")
    conf = sdkit_slurm.gres_conf_path()
    try:
        with open(conf, encoding="utf-8", errors="replace") as handle:
            files = sdkit_slurm.node_device_files(handle.read(1 << 20), node, gres)
    except OSError as exc:
        files = []
        problems.append(f"{host}: cannot read {conf} ({exc.strerror}): the tasks find their chip's device file there")
    else:
        if counted and len(files) != counted:
            problems.append(f"{host}: {conf} lists {len(files)} File= device(s) for '{gres}' on node {node}, Slurm counts "
                            f"{counted}: give each chip its line (File=/dev/bm-sophonN), so that a task knows which chip "
                            "Slurm gave it")
    if partition:
        rc, text = run(["scontrol", "show", "partition", "-o", partition])
        if rc != 0:
            problems.append(f"{host}: the Slurm cluster has no partition {partition} ({text}): set sophon_slurm_partition "
                            "to one of `scontrol show partition`'s, or to '' for the cluster's default")
    rc, credential = run(["munge", "--no-input"])
    if rc == 0:
        rc, text = run(["unmunge"], credential.encode())
    if rc != 0:
        problems.append(f"{host}: munge does not work here ({credential if rc and not credential.startswith('MUNGE:') else text}): "
                        "start munged (systemctl start munge) with the cluster's key")
    elif not problems:
        # A drained or down node takes no job, not even a test one: then the user's access is what is tested.
        here = [] if state in params["unavailable_states"] else [f"--nodelist={node}"]
        submit = ["runuser", "-u", user, "--", "sbatch", "--test-only", *here, f"--gres={gres}:1",
                  *([f"--partition={partition}"] if partition else []), "--wrap=true"]
        rc, text = run(submit)
        if rc != 0:
            problems.append(f"{host}: {user} cannot submit a one-chip job {'to node ' + node if here else 'to the cluster'} "
                            f"({text}): give the user access to the partition (AllowGroups/AllowAccounts) and an account, "
                            "then rerun")
    return problems, state, reason


def main() -> None:
    # Here rather than at the top: the unit tests import check() where Ansible is not installed.
    from ansible.module_utils.basic import AnsibleModule  # pylint: disable=import-outside-toplevel

    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "node": {"type": "str", "required": True},
            "gres": {"type": "str", "required": True},
            "partition": {"type": "str", "default": ""},
            "user": {"type": "str", "required": True},
            "chips": {"type": "int", "required": True},
            "runners_dir": {"type": "path", "required": True},
            "unavailable_states": {"type": "list", "elements": "str", "required": True},
        },
        supports_check_mode=True,
    )
    # The kit's own reading of Slurm's output, from its root-owned runners folder.
    sys.path.insert(0, module.params["runners_dir"])
    try:
        import sdkit_slurm  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        module.fail_json(msg=f"no sdkit_slurm in {module.params['runners_dir']} ({exc}): deploy the runners first "
                             "(role sophon_runners, in site.yml before the Slurm play)")
    problems, state, reason = check(module.params, sdkit_slurm)
    module.exit_json(changed=False, problems=problems, state=state, reason=reason)


if __name__ == "__main__":
    main()
