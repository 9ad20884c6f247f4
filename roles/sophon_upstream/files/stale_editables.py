"""stale_editables.py NAME=VERSION=PATH ... [--require NAME ...]: what the venv still lacks, as JSON.

"stale": the NAME=VERSION=PATH libraries not installed editable from PATH at VERSION; "missing": the
--require distributions not installed at all. Run with the venv's interpreter. pip reinstalls an
editable path on every call, and each pip call costs a round trip, so the role asks this first and
installs only what is missing or stale.
"""

import json
import sys
from importlib import metadata


def is_current(name: str, version: str, path: str) -> bool:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    return (
        dist.version == version
        and direct_url.get("dir_info", {}).get("editable", False)
        and direct_url.get("url") == "file://" + path
    )


def is_installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


specs = sys.argv[1:sys.argv.index("--require")] if "--require" in sys.argv else sys.argv[1:]
required = [arg for arg in sys.argv[len(specs) + 1:] if arg != "--require"]
print(json.dumps({
    "stale": [spec.split("=", 1)[0] for spec in specs if not is_current(*spec.split("=", 2))],
    "missing": [name for name in required if not is_installed(name)],
}))
