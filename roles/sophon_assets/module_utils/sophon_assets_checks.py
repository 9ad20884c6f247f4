"""sophon_assets' check of an assets folder on the control node against its SHA256SUMS (its action plugin's
logic), before any host changes. Standard library only: the unit tests (tests/unit/roles/sophon_assets) import it.
"""

import hashlib
import os
import re

CHUNK = 1 << 20


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def mismatches(folder):
    """The files SHA256SUMS lists that are missing or differ, one line each as `sha256sum --check --quiet` prints
    them (path: FAILED, or path: FAILED open or read)."""
    lines = []
    with open(os.path.join(folder, "SHA256SUMS"), encoding="utf-8") as sums:
        for number, entry in enumerate(sums, start=1):
            if not entry.strip():
                continue
            fields = entry.rstrip("\n").split(None, 1)
            if len(fields) != 2 or not re.fullmatch("[0-9a-fA-F]{64}", fields[0]):
                raise ValueError(f"line {number} is not <sha256>  <path>")
            expected, name = fields
            name = name[1:] if name.startswith("*") else name  # sha256sum's binary-mode marker
            try:
                if sha256(os.path.join(folder, name)) != expected.lower():
                    lines.append(f"{name}: FAILED")
            except OSError:
                lines.append(f"{name}: FAILED open or read")
    return lines


def folder_problems(folder, items):
    """What stops staging FOLDER (the control node's assets folder) on the hosts: no SHA256SUMS, or files that do
    not match it; ITEMS, the folders the hosts stage, are named in the fix. Empty when the folder is intact."""
    if not os.path.isfile(os.path.join(folder, "SHA256SUMS")):
        return [f"{folder}/SHA256SUMS is missing. Put the download share's folders ({', '.join(items)}) in {folder}, "
                "run `make assets-sums`, and rerun."]
    try:
        bad = mismatches(folder)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return [f"{folder}/SHA256SUMS cannot be read as a checksum list ({error}). Run `make assets-sums` and rerun."]
    if not bad:
        return []
    return [f"Assets in {folder} do not match SHA256SUMS: {'; '.join(bad)}. Copy those files again from the download "
            "share and rerun."]
