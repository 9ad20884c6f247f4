"""Action plugin: the torch_tpu wheel's control-node checks for one host, in the controller's process.

It runs once per host without a fork or a transfer: the wheel was hashed and read once per batch by the
tasks before it (each distinct wheel once), and this only compares those results with the host's pins.
The documentation is library/sophon_torch_tpu_preflight.py's.
"""

import glob
import os
import sys

from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_torch_tpu_checks import preflight_problems  # noqa: E402  pylint: disable=wrong-import-position


def _result_for(results, wheel):
    """The loop result whose item is this wheel (the loop variable is sophon_torch_tpu_item), or {}."""
    for result in results or []:
        item = result.get("sophon_torch_tpu_item")
        if isinstance(item, dict):  # the metadata loop's item is the stat loop's result
            item = item.get("sophon_torch_tpu_item")
        if item == wheel:
            return result
    return {}


class ActionModule(ActionBase):
    """Returns problems (empty when the host may go ahead) and changes nothing."""

    _VALID_ARGS = frozenset(("wheel", "sha256", "version", "python_tag", "torch_version", "profile_torch", "profile",
                             "profile_dir", "stats", "metadata"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        wheel = args["wheel"]
        stat = _result_for(args.get("stats"), wheel).get("stat") or {}
        meta = _result_for(args.get("metadata"), wheel).get("wheel")
        vendor_dir = os.path.realpath(os.path.dirname(wheel))
        others = sorted(os.path.basename(path) for path in glob.glob(os.path.join(vendor_dir, "torch_tpu-*.whl"))
                        if os.path.isfile(path))
        result.update(changed=False, problems=preflight_problems(
            host=(task_vars or {}).get("inventory_hostname"), wheel_name=os.path.basename(wheel),
            vendor_dir=vendor_dir, exists=bool(stat.get("exists")), checksum=stat.get("checksum") or "",
            sha256=str(args.get("sha256") or ""), meta=meta, version=str(args.get("version")),
            python_tag=str(args.get("python_tag")), torch_version=str(args.get("torch_version") or ""),
            profile_torch=str(args.get("profile_torch")), profile=args.get("profile"),
            profile_dir=args.get("profile_dir"), other_wheels=others))
        return result
