#!/usr/bin/python
"""Documentation of the action plugin action_plugins/sophon_host_env_check.py, which does the work on the
control node; this file only runs if the action plugin is not found."""

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sophon_host_env_check
short_description: Check the host environment settings before the host changes
description:
  - An action plugin, run on the control node for each host without a fork; it reads only its arguments.
  - Returns C(problems), the messages that stop the host (empty when it may go ahead) - settings the env file
    cannot carry or that do not fit (open-files limits, assets source, device), a Sophgo host without a usable
    chip, a token in the world-readable env file. Changes nothing.
options:
  nofile_soft:
    description: The open-files soft limit (sophon_host_env_nofile_soft); at least 1024.
    type: raw
    required: true
  nofile_hard:
    description: The open-files hard limit (sophon_host_env_nofile_hard); at least the soft one.
    type: raw
    required: true
  assets_source:
    description: Where the model and data come from (sophon_host_env_assets_source) - bundle or hub.
    type: str
    required: true
  device:
    description: The runners' device (sophon_host_env_device) - cpu or one of I(devices).
    type: str
    required: true
  devices:
    description: The host's usable chips as devices (sophon_host_env_devices).
    type: list
    elements: str
    required: true
  env_values:
    description: The env file's values (sophon_host_env_environment); none may hold spaces, quotes, $ or backslashes.
    type: dict
    required: true
  runtime:
    description: The host's runtime (sophon_host_env_runtime) - none for a CPU host.
    type: str
    required: true
  fact:
    description: The libsophon role's device fact (ansible_local.sophon), empty when there is none.
    type: dict
    default: {}
  extra_env:
    description: Extra env file values (sophon_host_env_extra_env); no token may be among them.
    type: dict
    default: {}
  token_keys:
    description: The keys that hold tokens (sophon_host_env_token_keys).
    type: list
    elements: str
    default: []
  env_file:
    description: The env file on the host, as the messages name it.
    type: str
    required: true
  hub_token_file:
    description: The hub token's own file on the host, as the messages name it.
    type: str
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Look at the settings
  sophon_host_env_check:
    nofile_soft: 65535
    nofile_hard: 524288
    assets_source: bundle
    device: tpu:0
    devices: [tpu:0]
    env_values: {SOPHON_SD_RUNTIME: sophgo}
    runtime: sophgo
    fact: "{{ ansible_local.sophon | default({}) }}"
    env_file: /etc/sophon-sd/env
    hub_token_file: /etc/sophon-sd/hub-token
  register: sophon_host_env_check
"""

RETURN = r"""
problems:
  description: What stops the host, each message naming the host, the values, the variable and the fix.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(argument_spec={}, bypass_checks=True, supports_check_mode=True)
    module.fail_json(msg="sophon_host_env_check runs on the control node as the role's action plugin "
                         "(roles/sophon_host_env/action_plugins): run it from the role.")


if __name__ == "__main__":
    main()
