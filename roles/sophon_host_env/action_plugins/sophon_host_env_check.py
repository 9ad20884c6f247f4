"""Action plugin: sophon_host_env's checks of its settings for one host, in the controller's process (they read
only variables and the device fact, so nothing needs to run on the host). The documentation is
library/sophon_host_env_check.py's.
"""

import os
import sys

from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_host_env_checks import problems  # noqa: E402  pylint: disable=wrong-import-position


class ActionModule(ActionBase):
    """Returns problems (empty when the host may go ahead) and changes nothing."""

    _VALID_ARGS = frozenset(("nofile_soft", "nofile_hard", "assets_source", "device", "devices", "env_values",
                             "runtime", "fact", "extra_env", "token_keys", "env_file", "hub_token_file"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        result.update(changed=False, problems=problems(
            host=(task_vars or {}).get("inventory_hostname"), nofile_soft=args.get("nofile_soft"),
            nofile_hard=args.get("nofile_hard"), assets_source=args.get("assets_source"), device=args.get("device"),
            devices=list(args.get("devices") or []), environment=dict(args.get("env_values") or {}),
            runtime=args.get("runtime"), fact=dict(args.get("fact") or {}), extra_env=dict(args.get("extra_env") or {}),
            token_keys=list(args.get("token_keys") or []), env_file=args.get("env_file"),
            hub_token_file=args.get("hub_token_file")))
        return result
