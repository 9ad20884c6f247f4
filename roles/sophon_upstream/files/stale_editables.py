"""Print, as JSON, which of NAME=VERSION=PATH arguments are not installed editable from PATH at VERSION.

Run with the venv's interpreter. pip reinstalls an editable path on every call, so the role asks
this first and installs only what is missing or stale.
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


stale = [spec.split("=", 1)[0] for spec in sys.argv[1:] if not is_current(*spec.split("=", 2))]
print(json.dumps(stale))
