#!/usr/bin/python
"""Ansible module: whether this host can run the pinned stack (sophon_venv's preflight), as problems."""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sophon_venv_checks import PYTHON_VERSION, problems, tightest_disk, venv_exists

DOCUMENTATION = r"""
---
module: sophon_venv_check
short_description: Check that the host can run the pinned stack before the venv is built
description:
  - Runs I(python) to read its version, and reads whether I(venv) exists and the free disk under I(root) and I(venv) (the tighter of the two).
  - Returns those facts and C(problems), the messages that stop the role before the host changes (empty when it
    may go ahead) - a platform the kit does not support, an interpreter that is not the pins' Python, no
    constraints file or wheelhouse on the control node (from I(control_node)), an index source without a URL,
    too little disk for a first build. Changes nothing.
options:
  host:
    description: The inventory name of the host, as the messages name it.
    type: str
    required: true
  facts:
    description: The host's os_family, distribution, distribution_version and architecture (ansible_facts).
    type: dict
    required: true
  python:
    description: The interpreter the venv is built from (sophon_venv_python).
    type: path
    required: true
  venv:
    description: The venv's path (sophon_venv_path).
    type: path
    required: true
  root:
    description: The kit's root on the host (sophon_venv_root), whose filesystem the venv goes on.
    type: path
    required: true
  min_free_mb:
    description: The free MiB a first build needs (sophon_venv_min_free_mb).
    type: int
    required: true
  pins:
    description: python_version, torch_version, constraints, profile and profile_dir, as the messages name them.
    type: dict
    required: true
  control_node:
    description: >-
      What the control node has - constraints_src and constraints_found, package_source, wheelhouse_src and
      wheelhouse_found, index_url.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Look at the host's Python, venv and free disk
  sophon_venv_check:
    host: "{{ inventory_hostname }}"
    facts: {os_family: Debian, distribution: Debian, distribution_version: "12", architecture: x86_64}
    python: /usr/bin/python3
    venv: /opt/sophon-sd/venv
    root: /opt/sophon-sd
    min_free_mb: 4000
    pins: {python_version: "3.11", torch_version: 2.13.0, constraints: constraints.txt, profile: p, profile_dir: /k/p}
    control_node: {constraints_src: /k/p/constraints.txt, constraints_found: true, package_source: index,
                   wheelhouse_src: "", wheelhouse_found: false, index_url: https://pypi.example/simple}
  register: sophon_venv_probe
"""

RETURN = r"""
problems:
  description: What stops the role, each message naming the host, the file, the variable and the fix.
  returned: always
  type: list
  elements: str
python:
  description: The major.minor of I(python), or null when it does not run.
  returned: always
  type: str
venv:
  description: Whether I(venv) already has a python.
  returned: always
  type: bool
free_mb:
  description: Free MiB on the tighter of the filesystems of I(root) and I(venv) (each its nearest existing folder).
  returned: always
  type: int
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "facts": {"type": "dict", "required": True},
            "python": {"type": "path", "required": True},
            "venv": {"type": "path", "required": True},
            "root": {"type": "path", "required": True},
            "min_free_mb": {"type": "int", "required": True},
            "pins": {"type": "dict", "required": True},
            "control_node": {"type": "dict", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        # Raised rather than failed: an interpreter that is missing or cannot run is a problem to name, not an error.
        rc, out, _ = module.run_command([params["python"], "-c", PYTHON_VERSION], handle_exceptions=False)
    except OSError:
        rc, out = 127, ""
    python = out.strip() if rc == 0 else None
    venv = venv_exists(params["venv"])
    free, tightest = tightest_disk([params["root"], params["venv"]])
    pins = {key: str(value) for key, value in params["pins"].items()}
    module.exit_json(changed=False, python=python, venv=venv, free_mb=free, problems=problems(
        params["host"], params["facts"], params["python"], python, venv, free, pins, params["control_node"],
        tightest, params["min_free_mb"]))


if __name__ == "__main__":
    main()
