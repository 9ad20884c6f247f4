"""Action plugin: sophon_bundle's guard, in the controller's process (the manifest is on the control node; the host
gives only the serial of the last bundle it got, read with slurp). The documentation is
library/sophon_bundle_guard.py's.
"""

import base64
import os
import sys

from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_bundle_checks import (  # noqa: E402  pylint: disable=wrong-import-position
    manifest_sha256, older_problem, recorded_serial, unverified_problem)


class ActionModule(ActionBase):
    """Returns problems (empty when the role may push), serial and host_serial; changed when the host moves to
    another bundle (the role's handler then records the new serial)."""

    _VALID_ARGS = frozenset(("manifest", "bundle_dir", "verified", "allow_older", "serial_file"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        host = (task_vars or {}).get("inventory_hostname")
        verified = args.get("verified") or {}
        problem = unverified_problem(host, args["manifest"], args["bundle_dir"], verified,
                                     manifest_sha256(args["manifest"]))
        if problem:  # the host is not asked: nothing from this bundle reaches it
            result.update(changed=False, problems=[problem])
            return result
        # A host that never got a bundle has no file: serial 0.
        try:
            slurped = self._execute_module(module_name="ansible.builtin.slurp",
                                           module_args={"src": args["serial_file"]}, task_vars=task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        text = base64.b64decode(slurped["content"]).decode(errors="replace") if "content" in slurped else None
        serial, host_serial = int(verified.get("serial", 0)), recorded_serial(text)
        problem = older_problem(host, args["manifest"], serial, host_serial, int(args.get("allow_older") or 0),
                                args["serial_file"])
        result.update(changed=not problem and serial != host_serial, problems=[problem] if problem else [],
                      serial=serial, host_serial=host_serial)
        return result
