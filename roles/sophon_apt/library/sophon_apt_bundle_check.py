#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_apt_bundle_check.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_apt_bundle_check
short_description: Check the bundle's apt repository on the control node against one host before it changes
description:
  - An action plugin, run on the control node for each host without a fork. It reads the repository's
    release.yml and looks for its archive and signing key on the control node, and compares the release
    and architecture it was built for with the host's facts.
  - Returns C(problems), the messages that stop the host (empty when it may go ahead) - the repository missing,
    built for another release or architecture, or mirror transport with no mirror. Changes nothing.
options:
  bundle_dir:
    description: The control-node folder of the bundle's apt repository (sophon_apt_bundle_dir); its archive is <bundle_dir>.tar.
    type: path
    required: true
  signing_key:
    description: The bundle's signing key on the control node (sophon_apt_signing_key).
    type: path
    required: true
  distribution_release:
    description: The host's release (ansible_facts.distribution_release), e.g. bookworm.
    type: str
    required: true
  architecture:
    description: The host's architecture (ansible_facts.architecture), e.g. x86_64.
    type: str
    required: true
  transport:
    description: How the host gets the repository (sophon_apt_transport) - push or mirror.
    type: str
    required: true
  mirror_url:
    description: The bundle mirror's URL (sophon_apt_mirror_url); empty when none is set.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Check the bundle's repository against this host
  sophon_apt_bundle_check:
    bundle_dir: "{{ sophon_apt_bundle_dir }}"
    signing_key: "{{ sophon_apt_signing_key }}"
    distribution_release: "{{ ansible_facts['distribution_release'] }}"
    architecture: "{{ ansible_facts['architecture'] }}"
    transport: "{{ sophon_apt_transport }}"
    mirror_url: "{{ sophon_apt_mirror_url }}"
  register: sophon_apt_bundle_check
"""

RETURN = r"""
problems:
  description: What stops the host, each message naming the files or variables and the fix.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_apt_bundle_check runs on the control node as the role's action plugin "
                         "(roles/sophon_apt/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
