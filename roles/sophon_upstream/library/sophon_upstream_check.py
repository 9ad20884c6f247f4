#!/usr/bin/python
"""Ansible module: what the host has of each upstream library, and what stops sophon_upstream (problems)."""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sophon_upstream_checks import MARKER, look, problems

DOCUMENTATION = r"""
---
module: sophon_upstream_check
short_description: Look at the upstream libraries' trees on the host and list what stops the fetch
description:
  - For each library, whether its tree is there (a git checkout; or, in bundle mode, an unpacked sdist with PKG-INFO
    or an unpacked C(git archive) with the kit's marker), the checkout's commit or the tree's version, and in bundle
    mode the source archive it comes from (the C(git archive) of the tag when I(manifest_sources) lists one, else
    the sdist) with the sha256, and a git archive's commit, of the copy kept under I(src_dir)/.archives.
  - Returns those facts and C(problems), the messages that stop the role before it fetches (empty when it may go
    ahead). Changes nothing; the host's python3 runs it, before the venv is needed.
options:
  src_dir:
    description: The sources directory on the host (sophon_upstream_src_dir).
    type: path
    required: true
  source:
    description: Where the libraries come from (sophon_upstream_source).
    type: str
    choices: [bundle, git]
    required: true
  libraries:
    description: The profile's libraries - name, version, tag, commit (empty skips the check), sdist sha256.
    type: list
    elements: dict
    required: true
  bundle_dir:
    description: The control node's folder of source archives, as the messages name it.
    type: str
    required: true
  archives_on_control_node:
    description: The names of the source archives the control node has there.
    type: list
    elements: str
    default: []
  manifest_sources:
    description:
      - The verified manifest's entries under sources/, path to sha256. A C(sources/<name>-<version>.git.tar.gz)
        listed there is the library's archive, checked against that sha256 and its commit against the pin.
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Look at the libraries on the host
  sophon_upstream_check:
    src_dir: /opt/sophon-sd/src
    source: bundle
    libraries: "{{ sophon_upstream_libraries }}"
    bundle_dir: /srv/bundle/sources
    archives_on_control_node: [diffusers-0.20.0.tar.gz]
  register: sophon_upstream_probe
"""

RETURN = r"""
problems:
  description: What stops the role, each message naming the file, the pin and the fix.
  returned: always
  type: list
  elements: str
found:
  description:
    - Per library name - present, and commit (git); or, in bundle mode, version, tree (sdist or git archive, when
      present), archive (the file to unpack), archive_sha256, and for a git archive archive_commit and the tree's
      commit.
  returned: always
  type: dict
marker_file:
  description: The marker's name in a tree unpacked from a git archive (the content is found[name].marker).
  returned: always
  type: str
from_archives:
  description: Per library name, in bundle mode, the archive its tree was (or is about to be) unpacked from.
  returned: always
  type: dict
present:
  description: The names of the libraries whose tree is already on the host.
  returned: always
  type: list
  elements: str
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "src_dir": {"type": "path", "required": True},
            "source": {"type": "str", "choices": ["bundle", "git"], "required": True},
            "libraries": {"type": "list", "elements": "dict", "required": True},
            "bundle_dir": {"type": "str", "required": True},
            "archives_on_control_node": {"type": "list", "elements": "str", "default": []},
            "manifest_sources": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    found = look(params["src_dir"], params["source"], params["libraries"], params["manifest_sources"])
    from_archives = {name: what["from_archive"] for name, what in found.items() if "from_archive" in what}
    module.exit_json(changed=False, found=found, marker_file=MARKER, from_archives=from_archives, present=[name for name, what in found.items() if what["present"]],
                     problems=problems(found, params["libraries"], params["source"], params["src_dir"],
                                       params["bundle_dir"], params["archives_on_control_node"],
                                       params["manifest_sources"]))


if __name__ == "__main__":
    main()
