#!/usr/bin/python
"""The shared run folder (sophon_slurm_shared_run_dir), checked on one compute host as the runner user."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sophon_slurm_shared
short_description: Check the shared run folder on a compute host and mark it, to tell whether every host sees the same one
description:
  - For O(sophon_slurm_shared_run_dir) (role sophon_slurm). Works as the runner user from a child process, never
    as root, so that nothing the runner user planted there (a link to a root-only file) is followed with root's
    rights, and so that it also works where the storage maps root to nobody (NFS root_squash).
  - Checks that the folder is the runner user's, that no one else may write it, and that no folder above it can
    be swapped by another user (the runners' sdkit_slurm.shared_dir_problem, which the job tool applies too).
  - With O(state=present) writes this host's marker file there (an empty file, never following a link); with
    O(expect) lists which of those markers this host cannot see; with O(state=absent) removes its marker. Run
    present, then expect, then absent, each over every compute host, and a host that misses another's marker
    does not share the folder with it. A probe: it reports no change.
options:
  host:
    description: This host's name in the inventory, which the messages name.
    type: str
    required: true
  path:
    description: The shared run folder.
    type: str
    required: true
  user:
    description: The runner user, as whom the tasks write there.
    type: str
    required: true
  marker:
    description: This host's marker file name (C(.sdkit-shared-<token>-<host>)).
    type: str
    required: true
  state:
    description: present - write the marker; absent - remove it; omitted - neither.
    type: str
    choices: [present, absent]
  expect:
    description: The marker names every host wrote; those missing here are returned in RV(missing).
    type: list
    elements: str
    default: []
  runners_dir:
    description: The kit's runners on this host (root's), whose sdkit_slurm holds the folder rule.
    type: path
    required: true
author: sophon-sd-kit
"""

EXAMPLES = r"""
- name: Mark the shared run folder
  sophon_slurm_shared:
    host: "{{ inventory_hostname }}"
    path: /shared/sophon-sd/runs
    user: sophon-sd
    marker: .sdkit-shared-Xk3p-bm-a
    state: present
    runners_dir: /opt/sophon-sd/runners
"""

RETURN = r"""
problems:
  description: What makes the folder unfit here, one line each, with the fix.
  returned: always
  type: list
  elements: str
missing:
  description: The names in O(expect) that this host does not see in the folder.
  returned: always
  type: list
  elements: str
"""

import errno
import os
import pwd
import re
import sys
from typing import Any, Callable, Dict, List

MARKER = re.compile(r"\.sdkit-shared-[A-Za-z0-9._-]{1,200}")


def probe(params: Dict[str, Any], sdkit_slurm: Any) -> Dict[str, List[str]]:
    """The check and the marker work, as whoever runs it (the runner user: see as_user)."""
    host, path, marker = params["host"], params["path"], params["marker"]
    problem = sdkit_slurm.shared_dir_problem(path)
    if problem:
        return {"problems": [f"{host}: {problem}"], "missing": []}
    if not MARKER.fullmatch(marker) or not all(MARKER.fullmatch(name) for name in params["expect"]):
        return {"problems": [f"{host}: marker names must match {MARKER.pattern}"], "missing": []}
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if params["state"] == "present":
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder))
            except FileExistsError:
                pass  # this check's own marker, from a retry
            except OSError as exc:
                return {"problems": [f"{host}: {params['user']} cannot write in the shared run folder {path} "
                                     f"({exc.strerror}): it must be that user's folder on every compute host"],
                        "missing": []}
        names = set(os.listdir(folder)) if params["expect"] else set()
        missing = [name for name in params["expect"] if name not in names]
        if params["state"] == "absent":
            try:
                os.unlink(marker, dir_fd=folder)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    finally:
        os.close(folder)
    return {"problems": [], "missing": missing}


def as_user(user: str, work: Callable[[], Dict[str, List[str]]], sdkit_job: Any) -> Dict[str, List[str]]:
    """``work()`` in a child that became ``user`` for good (the job tool's as_user; here when already that user)."""
    account = pwd.getpwnam(user)
    try:
        return sdkit_job.as_user(None if os.geteuid() == account.pw_uid else account, work)
    except sdkit_job.JobError as exc:
        return {"problems": [str(exc)], "missing": []}


def main() -> None:
    # Here rather than at the top: the unit tests import probe() where Ansible is not installed.
    from ansible.module_utils.basic import AnsibleModule  # pylint: disable=import-outside-toplevel

    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "path": {"type": "str", "required": True},
            "user": {"type": "str", "required": True},
            "marker": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"]},
            "expect": {"type": "list", "elements": "str", "default": []},
            "runners_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    sys.path.insert(0, module.params["runners_dir"])
    try:
        import sdkit_job  # pylint: disable=import-outside-toplevel
        import sdkit_slurm  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        module.fail_json(msg=f"no sdkit_job or sdkit_slurm in {module.params['runners_dir']} ({exc}): deploy the runners first "
                             "(role sophon_runners, in site.yml before the Slurm play)")
    try:
        answer = as_user(module.params["user"], lambda: probe(module.params, sdkit_slurm), sdkit_job)
    except KeyError:
        module.fail_json(msg=f"{module.params['host']}: the runner user {module.params['user']} does not exist here: "
                             "provision the host with site.yml (role sophon_host_env creates it)")
    # A probe: the marker comes and goes within the check.
    module.exit_json(changed=False, **answer)


if __name__ == "__main__":
    main()
