"""The sophon_libsophon role's control-node preflight: the host's platform and every vendor .deb (present,
checksum set, checksum right), each problem named once in one message set.

Imported by the role's action plugin (action_plugins/sophon_libsophon_preflight.py) and by the unit tests
(tests/unit/roles/sophon_libsophon). Stdlib only. The role's tests assert the messages' text.
"""

import re

SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def preflight_problems(host, platform, architecture, supported_platforms, supported_architectures, version, files,
                       found, vendor_dir, driver_enabled):
    """files: the .debs this host needs (file, src, sha256, var); found: the stat of each src on the control node
    (exists, checksum), hashed once per batch; vendor_dir: the vendor folder's real path, as the messages name it."""
    out = []
    if platform not in supported_platforms or architecture not in supported_architectures:
        out.append("%s runs %s on %s; Sophgo's libsophon %s packages are used by the kit on %s on %s "
                   "(sophon_libsophon_supported_platforms, sophon_libsophon_supported_architectures). Remove this "
                   "host from the inventory or reinstall it with a supported OS."
                   % (host, platform, architecture, version, ", ".join(supported_platforms),
                      ", ".join(supported_architectures)))
    missing = ["%s/%s" % (vendor_dir, f["file"]) for f in files if not (found.get(f["src"]) or {}).get("exists")]
    if missing:
        # The space before an empty driver note is the old YAML message's, kept so that its text does not change.
        out.append("Missing on the control node: %s. Download libsophon %s from Sophgo (SDK download page or the "
                   "tutorial's download share), put the file(s) in %s/ under exactly that name, set their sha256 "
                   "variables and rerun. %s"
                   % (", ".join(missing), version, vendor_dir,
                      "Hosts whose driver is managed elsewhere: set sophon_libsophon_driver_enabled: false."
                      if driver_enabled else ""))
    unset = [f for f in files if not SHA256.match(f["sha256"] or "")]
    if unset:
        out.append("%s must be set to the sha256 that Sophgo publishes for %s (64 hex digits, in group_vars). "
                   "`sha256sum` shows what the file you have hashes to; only a published value proves it is "
                   "Sophgo's." % (", ".join(f["var"] for f in unset), ", ".join(f["file"] for f in unset)))
    mismatch = ["%s has sha256 %s, %s says %s" % (f["file"], found[f["src"]]["checksum"], f["var"], f["sha256"])
                for f in files
                if (found.get(f["src"]) or {}).get("exists") and SHA256.match(f["sha256"] or "")
                and found[f["src"]]["checksum"].lower() != f["sha256"].lower()]
    if mismatch:
        out.append("Checksum mismatch in %s: %s. Nothing was installed. The file is corrupt, truncated or not the "
                   "release the variable names: download it again from Sophgo (or fix the variable) and rerun."
                   % (vendor_dir, "; ".join(mismatch)))
    return out
