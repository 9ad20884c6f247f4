#!/usr/bin/env python3
"""runners_archive.py OUT RUNNERS PATCHES: the runners and the patches as one tar, on the control node.

Members, sorted: runners/*.py from the RUNNERS folder (mode 0755) and every file under PATCHES as
patches/<path> (0644), with their folders (0755); owned by root, all dated 2000-01-01. The same files
therefore always make the same bytes, and hosts get a new archive only when a file really changed.
OUT is replaced atomically, and only when its bytes change; prints "changed" or "unchanged".
Standard library only: it runs with the control node's Ansible Python.
"""

import io
import os
import sys
import tarfile
import tempfile

MTIME = 946684800  # 2000-01-01T00:00:00Z


def entries(runners, patches):
    """(member name, source path or None for a folder, mode), in archive order."""
    yield "runners", None, 0o755
    for name in sorted(os.listdir(runners)):
        path = os.path.join(runners, name)
        if name.endswith(".py") and os.path.isfile(path):
            yield "runners/" + name, path, 0o755
    yield "patches", None, 0o755
    for folder, subfolders, files in os.walk(patches):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__")))
        relative = os.path.relpath(folder, patches)
        prefix = "patches" if relative == "." else "patches/" + relative.replace(os.sep, "/")
        if relative != ".":
            yield prefix, None, 0o755
        for name in sorted(f for f in files if not f.startswith(".")):
            yield prefix + "/" + name, os.path.join(folder, name), 0o644


def build(runners, patches):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, path, mode in entries(runners, patches):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, MTIME, 0, 0, "root", "root"
            if path is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main(out, runners, patches):
    data = build(runners, patches)
    try:
        with open(out, "rb") as handle:
            if handle.read() == data:
                print("unchanged")
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".runners-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, out)
    print("changed")


if __name__ == "__main__":
    main(*sys.argv[1:4])
