#!/usr/bin/python
"""Ansible module: what the kit venv and the torch_tpu wheel are, and what stops the install (problems)."""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sophon_torch_tpu_checks import host_problems, probe

DOCUMENTATION = r"""
---
module: sophon_torch_tpu_check
short_description: Inspect the kit venv and Sophgo's torch_tpu wheel, and list what stops the install
description:
  - Run it with the kit venv's Python as the interpreter (C(ansible_python_interpreter)), so that it sees the
    venv's torch and torch_tpu and its Python tag. Imports neither: versions come from package metadata, the
    wheel is read as a zip.
  - Returns the facts the role's later tasks use and C(problems), the messages that stop the install (empty
    when it may go ahead). Changes nothing.
  - Without I(venv), only the facts are returned (the control-node preflight reads the wheel's metadata so).
options:
  marker:
    description: The word Sophgo's wheel has in its author fields (with a torch_tpu/tpu/ package).
    type: str
    default: sophgo
  wheel:
    description: The torch_tpu wheel to read, a path on the machine the module runs on.
    type: path
  wheel_name:
    description: The wheel's file name, as the messages name it.
    type: str
  vendor_dir:
    description: The control node's folder the wheel came from, as the messages name it.
    type: str
  venv:
    description: The kit venv's path, as the messages name it; without it no problems are listed.
    type: str
  host:
    description: The inventory name of the host, as the messages name it.
    type: str
  torch_version:
    description: The torch the wheel is for, when its metadata does not say (sophon_torch_tpu_torch_version).
    type: str
    default: ""
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Inspect the venv and the wheel
  sophon_torch_tpu_check:
    wheel: /opt/sophon-sd/vendor/torch_tpu-2.1.0.post1-cp310-cp310-linux_x86_64.whl
    wheel_name: torch_tpu-2.1.0.post1-cp310-cp310-linux_x86_64.whl
    vendor_dir: /srv/bundle/vendor
    venv: /opt/sophon-sd/venv
    host: "{{ inventory_hostname }}"
  vars:
    ansible_python_interpreter: /opt/sophon-sd/venv/bin/python
  register: sophon_torch_tpu_state
"""

RETURN = r"""
problems:
  description: What stops the install, each message naming the host, the file, the variable and the fix.
  returned: always
  type: list
  elements: str
python:
  description: The interpreter the module ran under (version, tag such as cp311, machine, prefix).
  returned: always
  type: dict
torch:
  description: The installed torch version, or null.
  returned: always
  type: str
installed:
  description: The installed torch_tpu distribution (name, version, author, has_tpu, vendor, location), or null.
  returned: always
  type: dict
wheel:
  description: The wheel's name, version, author, tags, fits_python, torch_pin, has_tpu, vendor; null when unreadable.
  returned: always
  type: dict
wheel_error:
  description: Why the wheel could not be read, or null.
  returned: always
  type: str
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "marker": {"type": "str", "default": "sophgo"},
            "wheel": {"type": "path"},
            "wheel_name": {"type": "str"},
            "vendor_dir": {"type": "str"},
            "venv": {"type": "str"},
            "host": {"type": "str"},
            "torch_version": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    state = probe(params["marker"], params["wheel"])
    problems = []
    if params["venv"]:
        problems = host_problems(state, params["host"], params["venv"], params["wheel_name"], params["vendor_dir"],
                                 params["torch_version"])
    module.exit_json(changed=False, problems=problems, **state)


if __name__ == "__main__":
    main()
