"""Action plugin: role sophon_slurm's check of the whole cluster, once, in the controller's process (it reads the
hosts' descriptions, the record from the controller and the munge key on the control node, so nothing needs to run
on a host). The documentation is library/sophon_slurm_cluster.py's.
"""

import base64
import binascii
import os
import sys

from ansible.plugins.action import ActionBase

# The role's module_utils, importable here without Ansible's module packaging (the action runs on the controller).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
from sophon_slurm_checks import cluster_plan  # noqa: E402  pylint: disable=wrong-import-position


class ActionModule(ActionBase):
    """Returns problems (empty when the cluster may be configured), the nodes to list, and changes nothing."""

    _VALID_ARGS = frozenset(("controller_group", "compute_group", "controllers", "compute_hosts", "play_hosts", "hosts",
                             "user", "munge_key_file", "munge_key_min_bytes", "record", "record_path"))
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        try:
            record_text = base64.b64decode(str(args.get("record") or "")).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            record_text = "not base64"  # read_record names the file as not the kit's
        plan = cluster_plan(
            controller_group=str(args["controller_group"]), compute_group=str(args["compute_group"]),
            controllers=list(args.get("controllers") or []), compute_hosts=list(args.get("compute_hosts") or []),
            play_hosts=list(args.get("play_hosts") or []), hosts=dict(args.get("hosts") or {}), user=str(args["user"]),
            munge_key_file=str(args["munge_key_file"]),
            munge_key_min_bytes=int(args["munge_key_min_bytes"]), record_text=record_text,
            record_path=str(args.get("record_path") or ""))
        result.update(changed=False, **plan)
        return result
