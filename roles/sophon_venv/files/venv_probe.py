"""venv_probe.py ROOT VENV: what sophon_venv's preflight needs from the host, in one round trip.

Run by the interpreter the venv is built from (ansible.builtin.script, executable). Prints one JSON
object: that interpreter's major.minor, whether VENV already has a python, and the free MB (MiB, as
`df -m`) of the filesystem ROOT is or will be on (its nearest existing folder).
"""

import json
import os
import sys


def main(root: str, venv: str) -> None:
    existing = root
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing) or "/"
    stat = os.statvfs(existing)
    print(json.dumps({
        "python": "%d.%d" % sys.version_info[:2],
        "venv": os.path.exists(os.path.join(venv, "bin", "python")),
        "free_mb": stat.f_bavail * stat.f_frsize // (1024 * 1024),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
