#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_libsophon_preflight.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_libsophon_preflight
short_description: Check a host's platform and libsophon vendor files on the control node before it changes
description:
  - An action plugin, run on the control node for each host without a fork. It compares the stat (with sha256)
    of each vendor file, taken once per batch by the task before it, with this host's files and pins.
  - Returns C(problems), the messages that stop the host (empty when it may go ahead) - an unsupported platform,
    files missing, sha256 variables unset, files that do not match them. Changes nothing.
options:
  platform:
    description: The host's platform as the role names it (sophon_libsophon_platform), e.g. Debian 12.
    type: str
    required: true
  architecture:
    description: The host's architecture (ansible_facts.architecture).
    type: str
    required: true
  supported_platforms:
    description: The platforms Sophgo's packages are used on (sophon_libsophon_supported_platforms).
    type: list
    elements: str
    required: true
  supported_architectures:
    description: The architectures they are used on (sophon_libsophon_supported_architectures).
    type: list
    elements: str
    required: true
  version:
    description: The libsophon version (sophon_libsophon_version).
    type: str
    required: true
  files:
    description: The .debs this host needs - file, src (on the control node), sha256 and the variable that holds it.
    type: list
    elements: dict
    required: true
  found:
    description: The stat of each src on the control node (exists, checksum), keyed by src.
    type: dict
    required: true
  vendor_dir:
    description: The vendor folder on the control node (sophon_libsophon_vendor_dir).
    type: path
    required: true
  driver_enabled:
    description: Whether the kit installs the driver here (sophon_libsophon_driver_enabled).
    type: bool
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Compare the vendor files with this host's pins
  sophon_libsophon_preflight:
    platform: "{{ sophon_libsophon_platform }}"
    architecture: "{{ ansible_facts['architecture'] }}"
    supported_platforms: "{{ sophon_libsophon_supported_platforms }}"
    supported_architectures: "{{ sophon_libsophon_supported_architectures }}"
    version: "{{ sophon_libsophon_version }}"
    files: "{{ sophon_libsophon_files }}"
    found: "{{ sophon_libsophon_vendor_stat.results | items2dict(key_name='sophon_libsophon_item', value_name='stat') }}"
    vendor_dir: "{{ sophon_libsophon_vendor_dir }}"
    driver_enabled: "{{ sophon_libsophon_driver_enabled }}"
  register: sophon_libsophon_preflight
"""

RETURN = r"""
problems:
  description: What stops the host, each message naming the host, the files, the variables and the fix.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_libsophon_preflight runs on the control node as the role's action plugin "
                         "(roles/sophon_libsophon/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
