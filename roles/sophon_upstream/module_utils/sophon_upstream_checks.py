"""What sophon_upstream finds on the host, and what stops it before fetching (its module's logic).

For each library: whether its tree is there (a git checkout, SOURCE git; an unpacked sdist with
PKG-INFO, SOURCE bundle), the checkout's commit or the sdist's version, and, in bundle mode, the sha256
of its source archive kept under SRC_DIR/.archives. Standard library only: the module
(library/sophon_upstream_check.py) runs it with the host's python3, before the venv is needed, and the unit
tests (tests/unit/roles/sophon_upstream) import it.
"""

import hashlib
import json
import os
import subprocess


def sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def pkg_version(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return ""


def git_head(path):
    try:
        result = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, check=False)
    except OSError as exc:
        return "(git failed: %s)" % exc
    return result.stdout.strip() if result.returncode == 0 else "(git failed: %s)" % result.stderr.strip()


def probe(src_dir, source, name, version):
    tree = os.path.join(src_dir, name)
    if source == "git":
        present = os.path.isdir(os.path.join(tree, ".git"))
        return {"present": present, "commit": git_head(tree) if present else None}
    present = os.path.isfile(os.path.join(tree, "PKG-INFO"))
    archive = os.path.join(src_dir, ".archives", "%s-%s.tar.gz" % (name, version))
    return {"present": present, "version": pkg_version(os.path.join(tree, "PKG-INFO")) if present else None,
            "archive_sha256": sha256(archive)}


def problems(found, libraries, source, src_dir, bundle_dir, archives_on_control_node):
    """Everything wrong before fetching, one message each: an archive missing on the control node or not matching
    its pin, a tree or checkout on the host at another version than the pin. The kit never overwrites a tree it
    did not make."""
    out = []
    for lib in libraries:
        name, version = lib["name"], str(lib["version"])
        here = found[name]
        dest = "%s/%s" % (src_dir, name)
        archive = "%s-%s.tar.gz" % (name, version)
        if source == "bundle" and archive not in archives_on_control_node:
            out.append("%s/%s is missing on the control node. Run `make wheelhouse` (it also downloads the source "
                       "archives) and rerun." % (bundle_dir, archive))
        elif source == "bundle" and here.get("archive_sha256") is not None and here["archive_sha256"] != lib["sha256"]:
            out.append("%s has sha256 %s, expected %s. Replace the file in %s with the published sdist and rerun."
                       % (archive, here["archive_sha256"], lib["sha256"], bundle_dir))
        commit = lib.get("commit") or ""
        if here["present"] and source == "git" and commit and here["commit"] != commit:
            out.append("%s is at %s, not %s %s (%s). The kit does not overwrite a checkout it did not make: move it "
                       "away and rerun." % (dest, here["commit"], name, lib.get("tag"), commit))
        elif here["present"] and source == "bundle" and here["version"] != version:
            out.append("%s holds %s %s, not the pinned %s. The kit does not overwrite a tree it did not make: move it "
                       "away and rerun." % (dest, name, here["version"], version))
    return out


def look(src_dir, source, libraries):
    """What the host has of each library, keyed by name."""
    return {lib["name"]: probe(src_dir, source, lib["name"], str(lib["version"])) for lib in libraries}
