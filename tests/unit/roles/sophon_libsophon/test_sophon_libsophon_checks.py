"""roles/sophon_libsophon's control-node preflight (module_utils/sophon_libsophon_checks.py): each message, in full.
These were container tests (tests/roles/test_runtime_bad_input.py); the checksum-mismatch case stays there as
the wiring test of the role's action plugin."""

from __future__ import annotations

import pytest
import sophon_libsophon_checks as checks

HOST = "sdkit-rt-bad-1"
VENDOR = "/srv/bundle/vendor"
GOOD, OTHER = "ab" * 32, "cd" * 32
SUPPORTED = (["Debian 12", "Ubuntu 22.04"], ["x86_64"])
VARIABLES = {"libsophon": "sophon_libsophon_sha256", "libsophon-dev": "sophon_libsophon_dev_sha256",
             "driver": "sophon_libsophon_driver_sha256"}


def deb(part: str, sha256: str = GOOD) -> dict:
    name = f"sophon-{part}_0.4.9_amd64.deb"
    return {"part": part, "file": name, "src": f"{VENDOR}/{name}", "sha256": sha256, "var": VARIABLES[part]}


def preflight(files: list[dict], found: dict[str, str | None], platform: str = "Debian 12",
              architecture: str = "x86_64", driver_enabled: bool = True) -> list[str]:
    """found: the checksum of each part on the control node, None where the file is missing."""
    stats = {f["src"]: ({"exists": True, "checksum": found[f["part"]]} if found.get(f["part"]) else {"exists": False})
             for f in files}
    return checks.preflight_problems(HOST, platform, architecture, *SUPPORTED, "0.4.9", files, stats, VENDOR,
                                     driver_enabled)


def test_everything_in_place_has_no_problems():
    assert preflight([deb("libsophon"), deb("driver")], {"libsophon": GOOD, "driver": GOOD}) == []


@pytest.mark.parametrize("platform, architecture", [("Ubuntu 20.04", "x86_64"), ("Debian 12", "aarch64")],
                         ids=["os", "architecture"])
def test_unsupported_platform_fails_in_preflight(platform, architecture):
    """Was tests/roles/test_runtime_bad_input.py::test_unsupported_platform_fails_in_preflight[os, architecture]."""
    assert preflight([deb("libsophon")], {"libsophon": GOOD}, platform, architecture) == [
        f"{HOST} runs {platform} on {architecture}; Sophgo's libsophon 0.4.9 packages are used by the kit on "
        "Debian 12, Ubuntu 22.04 on x86_64 (sophon_libsophon_supported_platforms, "
        "sophon_libsophon_supported_architectures). Remove this host from the inventory or reinstall it with a "
        "supported OS."]


MISSING = ("Missing on the control node: {files}. Download libsophon 0.4.9 from Sophgo (SDK download page or the "
           f"tutorial's download share), put the file(s) in {VENDOR}/ under exactly that name, set their sha256 "
           "variables and rerun. ")


def test_missing_vendor_file_names_the_file_and_the_folder():
    """Was tests/roles/test_runtime_bad_input.py::test_missing_vendor_file_names_the_file_and_the_folder[deb]."""
    files = [deb("libsophon"), deb("libsophon-dev"), deb("driver")]
    missing = f"{VENDOR}/sophon-libsophon_0.4.9_amd64.deb, {VENDOR}/sophon-driver_0.4.9_amd64.deb"
    assert preflight(files, {"libsophon-dev": GOOD}) == [
        MISSING.format(files=missing) + "Hosts whose driver is managed elsewhere: set sophon_libsophon_driver_enabled: "
        "false."]
    assert preflight(files[:1], {}, driver_enabled=False) == [
        MISSING.format(files=f"{VENDOR}/sophon-libsophon_0.4.9_amd64.deb")]


def test_unset_checksums_are_named_with_their_files():
    files = [deb("libsophon", ""), deb("libsophon-dev", "not-a-sha"), deb("driver")]
    assert preflight(files, {"libsophon": GOOD, "libsophon-dev": GOOD, "driver": GOOD}) == [
        "sophon_libsophon_sha256, sophon_libsophon_dev_sha256 must be set to the sha256 that Sophgo publishes for "
        "sophon-libsophon_0.4.9_amd64.deb, sophon-libsophon-dev_0.4.9_amd64.deb (64 hex digits, in group_vars). "
        "`sha256sum` shows what the file you have hashes to; only a published value proves it is Sophgo's."]


def test_checksum_mismatch_names_each_file_and_variable():
    """The container test of the same name stays, as the wiring test."""
    files = [deb("libsophon", GOOD.upper()), deb("libsophon-dev"), deb("driver")]
    assert preflight(files, {"libsophon": GOOD, "libsophon-dev": OTHER, "driver": OTHER}) == [
        f"Checksum mismatch in {VENDOR}: sophon-libsophon-dev_0.4.9_amd64.deb has sha256 {OTHER}, "
        f"sophon_libsophon_dev_sha256 says {GOOD}; sophon-driver_0.4.9_amd64.deb has sha256 {OTHER}, "
        f"sophon_libsophon_driver_sha256 says {GOOD}. Nothing was installed. The file is corrupt, truncated or not the "
        "release the variable names: download it again from Sophgo (or fix the variable) and rerun."]
