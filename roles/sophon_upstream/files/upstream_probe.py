"""upstream_probe.py SRC_DIR SOURCE NAME=VERSION ...: what sophon_upstream finds on the host, in one round trip.

For each library: whether its tree is there (a git checkout, SOURCE git; an unpacked sdist with
PKG-INFO, SOURCE bundle), the checkout's commit or the sdist's version, and, in bundle mode, the sha256
of its source archive kept under SRC_DIR/.archives. Prints one JSON object keyed by library name.
Standard library only: it runs with the host's python3, before the venv is needed.
"""

import hashlib
import json
import os
import subprocess
import sys


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


def main(argv):
    src_dir, source = argv[0], argv[1]
    found = {}
    for spec in argv[2:]:
        name, version = spec.split("=", 1)
        found[name] = probe(src_dir, source, name, version)
    print(json.dumps(found))


if __name__ == "__main__":
    main(sys.argv[1:])
