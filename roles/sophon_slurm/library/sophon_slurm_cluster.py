#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_slurm_cluster.py, which does the work on the control
node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_slurm_cluster
short_description: Check the kit's Slurm cluster as a whole, and say which nodes slurm.conf lists
description:
  - An action plugin, run once on the control node for the whole cluster (O(sophon_slurm_cluster=provision)).
  - Returns C(problems), the messages that stop every host before any changes - not exactly one controller, the
    controller not in this run, more chips claimed than a host's device fact shows, a compute host without the
    runner user, the runner user's uid:gid differing across the cluster, an unusable munge key on the control node,
    a hostname or address that cannot go into slurm.conf, a node record the kit did not write.
  - A compute host that this run leaves out (C(--limit), unreachable, failed) does not stop the others. It keeps
    the node line recorded on the controller when it was last configured; one never configured is left out of
    slurm.conf with a warning that names it and how to add it. Changes nothing.
options:
  controller_group:
    description: The controller group's name, as the messages name it.
    type: str
    required: true
  compute_group:
    description: The compute group's name, as the messages name it.
    type: str
    required: true
  controllers:
    description: The hosts of the controller group.
    type: list
    elements: str
    required: true
  compute_hosts:
    description: The hosts of the compute group.
    type: list
    elements: str
    required: true
  play_hosts:
    description: The hosts in this run (ansible_play_hosts); the others are left out.
    type: list
    elements: str
    required: true
  hosts:
    description: >-
      Each host in this run by inventory name - its node name, address, CPUs, memory in MB, the chips it claims,
      the usable chips and device files of its device fact, and the runner user's uid:gid (empty if it has none).
    type: dict
    required: true
  user:
    description: The runner user, as the messages name it.
    type: str
    required: true
  munge_key_file:
    description: The cluster's munge key on the control node.
    type: path
    required: true
  munge_key_min_bytes:
    description: The shortest key munged accepts.
    type: int
    required: true
  record:
    description: The controller's node record, base64 (slurp's content); empty where there is none yet.
    type: str
    default: ""
  record_path:
    description: Where the record is on the controller, as the messages name it.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Check the cluster
  sophon_slurm_cluster:
    controller_group: slurm_controller
    compute_group: slurm_compute
    controllers: [ctl]
    compute_hosts: [bm-a, bm-b]
    play_hosts: "{{ ansible_play_hosts }}"
    hosts:
      ctl: {name: ctl, addr: 10.0.0.1, cpus: 8, memory_mb: 15000, claimed: 0, usable: [], dev_nodes: [], user: ""}
      bm-a: {name: bm-a, addr: 10.0.0.2, cpus: 64, memory_mb: 250000, claimed: 2, usable: [0, 1],
             dev_nodes: [/dev/bm-sophon0, /dev/bm-sophon1], user: "990:990"}
    user: sophon-sd
    munge_key_file: ~/.sophon-sd-munge.key
    munge_key_min_bytes: 32
    record: "{{ sophon_slurm_record.content | default('') }}"
    record_path: /etc/slurm/sophon-sd-nodes.json
  run_once: true
  register: sophon_slurm_described
"""

RETURN = r"""
problems:
  description: What stops the cluster, each message naming the host, the variable and the fix.
  returned: always
  type: list
  elements: str
warnings:
  description: Compute hosts this run leaves out, each with what slurm.conf keeps of it and how to add it.
  returned: always
  type: list
  elements: str
nodes:
  description: The compute nodes slurm.conf and gres.conf list, by node name - name, addr, cpus, memory_mb, chips, user.
  returned: always
  type: list
  elements: dict
controller:
  description: The controller's name and address (SlurmctldHost); empty when it is not in this run.
  returned: always
  type: dict
record:
  description: What the controller records for the next run (the compute nodes by inventory name).
  returned: always
  type: dict
ids:
  description: The runner user's uid and gid on the compute hosts, for a controller that lacks the user; empty if unknown.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_slurm_cluster runs on the control node as the role's action plugin "
                         "(roles/sophon_slurm/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
