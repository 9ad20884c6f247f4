#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_bundle_guard.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_bundle_guard
short_description: Check, before a role pushes from the bundle, that this run verified it and the host had no newer one
description:
  - An action plugin, run on the control node for each host. It hashes the manifest as it is now and compares it with
    what this run's bundle check verified; only then does it read, with C(slurp), the serial of the last bundle the
    host got.
  - Returns C(problems), the messages that stop the push to the host (empty when it may go ahead) - the manifest is
    not the one this run verified (no check ran, or it changed after the check), or the bundle is older than the
    host's last and the inventory does not allow exactly its serial. Changed when the host moves to another bundle.
options:
  manifest:
    description: The bundle's manifest on the control node (sophon_bundle_manifest).
    type: path
    required: true
  bundle_dir:
    description: The bundle's folder on the control node, as the message names it (sophon_bundle_dir).
    type: path
    required: true
  verified:
    description: What this run's bundle check verified - sha256 of the manifest bytes and serial; {} when none ran.
    type: dict
    required: true
  allow_older:
    description: The one older serial the inventory accepts for this host (sophon_sd_bundle_allow_older); 0 for none.
    type: int
    default: 0
  serial_file:
    description: Where the host records the serial of the last bundle pushed to it (sophon_bundle_serial_file).
    type: path
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Check the bundle before pushing from it
  sophon_bundle_guard:
    manifest: /srv/bundle/manifest.yml
    bundle_dir: /srv/bundle
    verified: "{{ sophon_bundle_verified }}"
    serial_file: /etc/sophon-sd/bundle-serial
  register: sophon_bundle_guarded
"""

RETURN = r"""
problems:
  description: What stops the push to this host, naming the manifest, the serials and the fix.
  returned: always
  type: list
  elements: str
serial:
  description: The verified bundle's serial.
  returned: when the manifest is the verified one
  type: int
host_serial:
  description: The serial of the last bundle the host got; 0 when it never got one.
  returned: when the manifest is the verified one
  type: int
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_bundle_guard runs on the control node as the role's action plugin "
                         "(roles/sophon_bundle/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
