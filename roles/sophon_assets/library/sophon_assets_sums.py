#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_assets_sums.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_assets_sums
short_description: Check an assets folder on the control node against its SHA256SUMS before any host changes
description:
  - An action plugin, run on the control node. It hashes every file the folder's SHA256SUMS lists.
  - Returns C(problems), the messages that stop the hosts that stage the folder (empty when it is intact) - no
    SHA256SUMS, or files missing or not matching it, each named as C(sha256sum --check) names it. Changes nothing.
options:
  folder:
    description: The control-node folder in the layout of Sophgo's download share (sophon_assets_src).
    type: path
    required: true
  items:
    description: The folders the hosts stage from it (sophon_assets_items), named in the fix.
    type: list
    elements: str
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Verify the assets on the control node
  sophon_assets_sums:
    folder: /srv/bundle/assets
    items: [CompVis_SD14_pretrained_weights, dataset]
  register: sophon_assets_local_check
"""

RETURN = r"""
problems:
  description: What stops staging the folder, naming the files and the fix.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_assets_sums runs on the control node as the role's action plugin "
                         "(roles/sophon_assets/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
