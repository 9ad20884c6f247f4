"""The sophon_venv role's preflight: whether this host can run the pinned stack, everything found named at once.

What the host has (the interpreter's major.minor, whether the venv exists, the free disk) is read by the role's
module (library/sophon_venv_check.py) on the host; what the control node has (the constraints file, the
wheelhouse) comes in as arguments. Imported by that module and by the unit tests (tests/unit/roles/sophon_venv).
Stdlib only. The role's tests assert the messages' text.
"""

import os

# Printed by the interpreter the venv is built from, which may not be the one running the module.
PYTHON_VERSION = 'import sys; print("%d.%d" % sys.version_info[:2])'


def free_mb(root):
    """Free MiB (as `df -m`) of the filesystem root is or will be on (its nearest existing folder)."""
    existing = root
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing) or "/"
    stat = os.statvfs(existing)
    return stat.f_bavail * stat.f_frsize // (1024 * 1024)


def tightest_disk(paths):
    """(free MiB, path) of the path whose filesystem has the least free: the venv and the wheelhouse may sit
    on different disks, and either filling up stops the build."""
    return min((free_mb(path), path) for path in paths)


def venv_exists(venv):
    return os.path.exists(os.path.join(venv, "bin", "python"))


def problems(host, facts, python, python_found, venv_found, free, pins, control_node, root, min_free_mb):
    """facts: os_family, distribution, distribution_version, architecture; python: the interpreter's path and
    python_found its major.minor (None when it does not run); pins: python_version, torch_version, constraints,
    profile, profile_dir; control_node: constraints_src, constraints_found, package_source, wheelhouse_src,
    wheelhouse_found, index_url."""
    out = []
    if facts["os_family"] != "Debian" or facts["architecture"] != "x86_64":
        out.append("%s runs %s %s on %s; the kit supports Debian/Ubuntu on x86_64 only (Sophgo ships libsophon and "
                   "torch_tpu for amd64). Remove this host from the inventory."
                   % (host, facts["distribution"], facts["distribution_version"], facts["architecture"]))
    if python_found != pins["python_version"]:
        out.append("%s on %s is %s, but the pins (torch %s, constraints %s) are for Python %s (profile %s, "
                   "%s/profile.yml). Point sophon_venv_python at a Python %s interpreter, or set sophon_sd_profile "
                   "(in this host's group_vars) to a profile for this Python (profiles/*/profile.yml)."
                   % (python, host, python_found if python_found is not None else "missing", pins["torch_version"],
                      pins["constraints"], pins["python_version"], pins["profile"], pins["profile_dir"],
                      pins["python_version"]))
    if not control_node["constraints_found"]:
        out.append("No constraints file %s (sophon_venv_constraints) on the control node: the kit has no resolved "
                   "dependency set for torch %s on Python %s (profile %s). Set sophon_sd_profile to a profile with a "
                   "constraints.txt, or add that file."
                   % (control_node["constraints_src"], pins["torch_version"], pins["python_version"], pins["profile"]))
    if control_node["package_source"] == "wheelhouse" and not control_node["wheelhouse_found"]:
        out.append("The wheelhouse %s does not exist on the control node. Build it on the control node with `make "
                   "wheelhouse PROFILE=%s` (or set sophon_venv_package_source=index and sophon_venv_index_url)."
                   % (control_node["wheelhouse_src"], pins["profile"]))
    if control_node["package_source"] == "index" and not control_node["index_url"]:
        out.append("sophon_venv_package_source is 'index' but sophon_venv_index_url is empty; set it to your package "
                   "index.")
    # Only before a first build: a venv that exists is rebuilt in place, and the wheelhouse is already there.
    if python_found is not None and not venv_found and free < int(min_free_mb):
        out.append("Only %s MB free under %s on %s; the wheelhouse and the venv need about %s MB. Free some space (or "
                   "move the venv, sophon_sd_venv, and its wheelhouse, sophon_venv_root, to a larger disk) and rerun."
                   % (free, root, host, min_free_mb))
    return out
