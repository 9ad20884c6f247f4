"""Action plugin: sophon_assets' check of an assets folder against its SHA256SUMS, in the controller's process
(the folder is on the control node). The documentation is library/sophon_assets_sums.py's.
"""

import os
import sys

from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_assets_checks import folder_problems  # noqa: E402  pylint: disable=wrong-import-position


class ActionModule(ActionBase):
    """Returns problems (empty when the folder is intact) and changes nothing."""

    _VALID_ARGS = frozenset(("folder", "items"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        result.update(changed=False, problems=folder_problems(str(args["folder"]), [str(i) for i in args["items"]]))
        return result
