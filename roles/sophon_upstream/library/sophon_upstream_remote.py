#!/usr/bin/python
"""Ansible module: ask a git source for the pinned tag before a fresh clone (problem: what stops the clone)."""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sophon_upstream_checks import remote_tag

DOCUMENTATION = r"""
---
module: sophon_upstream_remote
short_description: Ask a git source whether it has the pinned tag, before cloning from it
description:
  - Runs C(git ls-remote) for the tag on the host, and returns C(problem), the one message that stops the clone
    (empty when it may go ahead) - the source cannot be reached, it has no such tag, or the tag names another commit
    than the pin - and C(tag_commit), the commit the tag names. Changes nothing.
options:
  url:
    description: The repository to clone (sophon_upstream_git_base_url/<library>.git).
    type: str
    required: true
  tag:
    description: The library's tag.
    type: str
    required: true
  commit:
    description: The pinned commit; empty leaves the tag unchecked.
    type: str
    default: ""
  host:
    description: The host's inventory name, as the message names it.
    type: str
    required: true
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Ask the source for the tag
  sophon_upstream_remote:
    url: https://github.com/huggingface/diffusers.git
    tag: v0.20.0
    commit: "{{ pinned_commit }}"
    host: "{{ inventory_hostname }}"
  register: sophon_upstream_remote
"""

RETURN = r"""
problem:
  description: What stops the clone, naming the source, the tag, the pin and the fix; empty when nothing does.
  returned: always
  type: str
tag_commit:
  description: The commit the tag names (for an annotated tag, the commit it points to); empty when it has none.
  returned: always
  type: str
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "tag": {"type": "str", "required": True},
            "commit": {"type": "str", "default": ""},
            "host": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    problem, tag_commit = remote_tag(params["url"], params["tag"], params["commit"], params["host"])
    module.exit_json(changed=False, problem=problem, tag_commit=tag_commit)


if __name__ == "__main__":
    main()
