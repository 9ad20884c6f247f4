#!/usr/bin/env python3
"""Make everything under the kit's root root:root and not group- or other-writable.

Root imports and runs this code (editable reinstalls, the runners, the host Makefile) and so does every
job of the runner user. A tree an older kit left can hold files of the sdists' makers (uid 1000,
0664) or of a loose umask: whoever has that uid or group could edit code that root runs. Prints JSON:
{"fixed": <count>, "examples": [<up to 10 paths>]}; with --check it only counts.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys

WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
EXAMPLES = 10


def repair(path: str, info: os.stat_result, check: bool) -> bool:
    """Fix one entry from its lstat; True when it needed fixing. A link's own mode means nothing on Linux,
    and chmod would follow it: links only get their owner fixed (lchown never follows)."""
    wrong_owner = (info.st_uid, info.st_gid) != (0, 0)
    wrong_mode = not stat.S_ISLNK(info.st_mode) and info.st_mode & WRITABLE_BY_OTHERS
    if check or not (wrong_owner or wrong_mode):
        return bool(wrong_owner or wrong_mode)
    if wrong_owner:
        os.lchown(path, 0, 0)
    if wrong_mode:
        # chown cleared any setuid/setgid bit already; keep the remaining bits but the write ones.
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~WRITABLE_BY_OTHERS)
    return True


def walk(root: str, check: bool) -> list[str]:
    """Top-down, so that a folder is root's and closed before its entries are touched: nobody else can
    swap an entry for a link between our lstat and chown/chmod. Links to folders are not entered."""
    fixed = [root] if repair(root, os.stat(root), check) else []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if repair(path, os.lstat(path), check):
                fixed.append(path)
    return fixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="The kit's root on this host (sophon_sd_root), e.g. /opt/sophon-sd.")
    parser.add_argument("--check", action="store_true",
                        help="Only report what would be fixed (Ansible's check mode).")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        print(json.dumps({"fixed": 0, "examples": []}))
        return 0
    fixed = walk(args.root, args.check)
    print(json.dumps({"fixed": len(fixed), "examples": fixed[:EXAMPLES]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
