"""Action plugin: libsophon's control-node checks for one host, in the controller's process.

The vendor files were hashed once per batch by the task before it; this compares those results with the
host's platform and pins, without a fork or a transfer per host. The documentation is
library/sophon_libsophon_preflight.py's.
"""

import os
import sys

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_libsophon_checks import preflight_problems  # noqa: E402  pylint: disable=wrong-import-position


class ActionModule(ActionBase):
    """Returns problems (empty when the host may go ahead) and changes nothing."""

    _VALID_ARGS = frozenset(("platform", "architecture", "supported_platforms", "supported_architectures", "version",
                             "files", "found", "vendor_dir", "driver_enabled"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        result.update(changed=False, problems=preflight_problems(
            host=(task_vars or {}).get("inventory_hostname"), platform=str(args["platform"]),
            architecture=str(args["architecture"]), supported_platforms=list(args["supported_platforms"]),
            supported_architectures=list(args["supported_architectures"]), version=str(args["version"]),
            files=list(args["files"]), found=dict(args["found"]), vendor_dir=os.path.realpath(args["vendor_dir"]),
            driver_enabled=boolean(args["driver_enabled"], strict=False)))
        return result
