"""sophon_bundle's guard before a role pushes from the bundle (its action plugin's logic): the manifest is the
one this run verified, and its serial is not older than the last bundle the host got. Standard library only: the
unit tests (tests/unit/roles/sophon_bundle) import it.
"""

import hashlib


def manifest_sha256(path):
    """The sha256 of the manifest's bytes as they are now on the control node; empty when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return ""


def recorded_serial(text):
    """The serial in the host's serial file (its text; None when the host never got a bundle): 0 when none."""
    try:
        return int((text or "").strip() or 0)
    except ValueError:
        return 0


def unverified_problem(host, manifest, bundle_dir, verified, sha256_now):
    """Why nothing may be pushed from a manifest this run did not verify; empty when it did."""
    if verified and verified.get("sha256") == sha256_now:
        return ""
    why = "it changed after the check" if verified else "no bundle check ran in this run"
    return (f"{host}: {manifest} is not the manifest this run verified ({why}), so nothing from {bundle_dir} is "
            "pushed to this host. Run one of the kit's playbooks (make provision, playbooks/site.yml, apt.yml, "
            "stack.yml, runtime.yml, assets.yml, slurm.yml): each checks the bundle's signature and every file "
            "first, and --skip-tags cannot skip that check (skipping it, with --skip-tags always, leaves nothing "
            "pushed).")


def older_problem(host, manifest, serial, host_serial, allow_older, serial_file):
    """Why a bundle older than the host's last one is refused, unless the inventory allows exactly its serial."""
    if serial >= host_serial or serial == allow_older:
        return ""
    return (f"{host}: the bundle {manifest} has serial {serial}, older than serial {host_serial}, the last bundle "
            f"this host got ({serial_file}): an older bundle brings back the packages and wheels a newer one replaced. "
            f"Use the newer bundle; or, to roll this host back on purpose, set sophon_sd_bundle_allow_older: {serial} "
            "in the inventory (its host_vars or group_vars) and rerun. Nothing from this bundle was pushed to this "
            "host.")
