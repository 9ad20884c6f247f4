"""Action plugin: sophon_apt's check of the bundle's apt repository for one host, in the controller's process
(the repository is on the control node; the host gives only its facts). The documentation is
library/sophon_apt_bundle_check.py's.
"""

import os
import sys

import yaml
from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_apt_checks import bundle_problems  # noqa: E402  pylint: disable=wrong-import-position


def read_release(path):
    """release.yml's mapping, or None when it is missing or not YAML: the check then names the files to rebuild."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None


class ActionModule(ActionBase):
    """Returns problems (empty when the host may go ahead) and changes nothing."""

    _VALID_ARGS = frozenset(("bundle_dir", "signing_key", "distribution_release", "architecture", "transport",
                             "mirror_url"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        bundle_dir = args["bundle_dir"]
        result.update(changed=False, problems=bundle_problems(
            host=(task_vars or {}).get("inventory_hostname"), release=read_release(os.path.join(bundle_dir, "release.yml")),
            archive_present=os.path.isfile(bundle_dir + ".tar"), key_present=os.path.isfile(args["signing_key"]),
            bundle_dir=bundle_dir, signing_key=args["signing_key"],
            host_release=str(args["distribution_release"]), host_architecture=str(args["architecture"]),
            transport=str(args["transport"]), mirror_url=str(args.get("mirror_url") or "")))
        return result
