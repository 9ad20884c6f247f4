"""roles/sophon_bundle's guard before a push (module_utils/sophon_bundle_checks.py), each message in full.
tests/roles/test_bundle_guard.py keeps, on a host, that a per-part playbook refuses a tampered bundle (the guard's
wiring), that skipping the check by tag pushes nothing, and the serial the host records."""

from __future__ import annotations

import hashlib

import sophon_bundle_checks as checks

HOST = "h1"
MANIFEST = "/srv/bundle/manifest.yml"
SERIAL_FILE = "/etc/sophon-sd/bundle-serial"
FIX = ("so nothing from /srv/bundle is pushed to this host. Run one of the kit's playbooks (make provision, "
       "playbooks/site.yml, apt.yml, stack.yml, runtime.yml, assets.yml, slurm.yml): each checks the bundle's "
       "signature and every file first, and --skip-tags cannot skip that check (skipping it, with --skip-tags "
       "always, leaves nothing pushed).")


def test_the_manifest_is_hashed_as_it_is_now(tmp_path):
    manifest = tmp_path / "manifest.yml"
    manifest.write_bytes(b"serial: 7\n")
    assert checks.manifest_sha256(str(manifest)) == hashlib.sha256(b"serial: 7\n").hexdigest()
    assert checks.manifest_sha256(str(tmp_path / "none.yml")) == ""


def test_the_verified_manifest_may_be_pushed_from():
    assert checks.unverified_problem(HOST, MANIFEST, "/srv/bundle", {"sha256": "ab", "serial": 7}, "ab") == ""


def test_no_check_in_this_run_stops_the_push():
    assert checks.unverified_problem(HOST, MANIFEST, "/srv/bundle", {}, "ab") == (
        f"{HOST}: {MANIFEST} is not the manifest this run verified (no bundle check ran in this run), {FIX}")


def test_a_manifest_changed_after_the_check_stops_the_push():
    assert checks.unverified_problem(HOST, MANIFEST, "/srv/bundle", {"sha256": "ab", "serial": 7}, "cd") == (
        f"{HOST}: {MANIFEST} is not the manifest this run verified (it changed after the check), {FIX}")
    # A manifest gone since the check hashes to nothing, which no check verified.
    assert "it changed after the check" in checks.unverified_problem(HOST, MANIFEST, "/srv/bundle", {"sha256": "ab"}, "")


def test_the_hosts_serial_file():
    assert checks.recorded_serial(None) == 0  # never got a bundle
    assert checks.recorded_serial("20261207234006\n") == 20261207234006
    assert checks.recorded_serial("") == checks.recorded_serial("garbage") == 0


def test_a_newer_or_the_same_bundle_goes_ahead():
    assert checks.older_problem(HOST, MANIFEST, 8, 7, 0, SERIAL_FILE) == ""
    assert checks.older_problem(HOST, MANIFEST, 7, 7, 0, SERIAL_FILE) == ""


def test_an_older_bundle_is_refused_naming_both_serials_and_the_way_back():
    assert checks.older_problem(HOST, MANIFEST, 6, 7, 0, SERIAL_FILE) == (
        f"{HOST}: the bundle {MANIFEST} has serial 6, older than serial 7, the last bundle this host got "
        f"({SERIAL_FILE}): an older bundle brings back the packages and wheels a newer one replaced. Use the newer "
        "bundle; or, to roll this host back on purpose, set sophon_sd_bundle_allow_older: 6 in the inventory (its "
        "host_vars or group_vars) and rerun. Nothing from this bundle was pushed to this host.")


def test_the_inventory_accepts_exactly_that_older_serial():
    assert checks.older_problem(HOST, MANIFEST, 6, 7, 6, SERIAL_FILE) == ""
    assert "has serial 5, older than serial 7" in checks.older_problem(HOST, MANIFEST, 5, 7, 6, SERIAL_FILE)
