#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_torch_tpu_preflight.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_torch_tpu_preflight
short_description: Check a host's torch_tpu wheel on the control node before the host changes
description:
  - An action plugin, run on the control node for each host without a fork. It compares what the tasks before
    it found once per batch (the wheel's stat with its sha256, and its metadata as sophon_torch_tpu_check read
    it) with this host's pins.
  - Returns C(problems), the messages that stop the host (empty when it may go ahead): the wheel missing (with
    the torch_tpu wheels found beside it), sophon_torch_tpu_sha256 unset or not the wheel's, or a Sophgo wheel
    built for another torch than the host's profile pins. Changes nothing.
options:
  wheel:
    description: The wheel on the control node (sophon_torch_tpu_wheel_src).
    type: path
    required: true
  sha256:
    description: The sha256 Sophgo publishes for it (sophon_torch_tpu_sha256).
    type: str
  version:
    description: The torch_tpu version expected (sophon_torch_tpu_version), named when the wheel is missing.
    type: str
  python_tag:
    description: The CPython tag the wheel must be for (sophon_torch_tpu_python_tag).
    type: str
  torch_version:
    description: The torch the wheel is for, when its metadata does not say (sophon_torch_tpu_torch_version).
    type: str
  profile_torch:
    description: The torch the host's profile pins (sophon_venv_torch_version).
    type: str
  profile:
    description: The host's profile (sophon_sd_profile).
    type: str
  profile_dir:
    description: The profile's folder (sophon_sd_profile_dir).
    type: str
  stats:
    description: The results of the stat loop over the batch's wheels (loop variable sophon_torch_tpu_item).
    type: list
    elements: dict
  metadata:
    description: The results of the sophon_torch_tpu_check loop over the wheels that exist.
    type: list
    elements: dict
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Check the torch_tpu wheel
  sophon_torch_tpu_preflight:
    wheel: "{{ sophon_torch_tpu_wheel_src }}"
    sha256: "{{ sophon_torch_tpu_sha256 }}"
    stats: "{{ sophon_torch_tpu_wheel_stats.results }}"
    metadata: "{{ sophon_torch_tpu_wheel_metadata.results }}"
  register: sophon_torch_tpu_preflight
"""

RETURN = r"""
problems:
  description: What stops the host, each message naming the host, the file, the variable and the fix.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_torch_tpu_preflight runs on the control node as the role's action plugin "
                         "(roles/sophon_torch_tpu/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
