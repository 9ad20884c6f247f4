"""roles/sophon_apt's check of the bundle's apt repository against a host (module_utils/sophon_apt_checks.py):
each message, in full. The messages are the ones the role's Jinja problem list printed before it became Python;
tests/roles/test_apt_signed_bundle.py installs from the repository through the role, and
tests/unit/roles/test_modules_run.py runs the action plugin under Ansible."""

from __future__ import annotations

import pytest
import sophon_apt_checks as checks

HOST = "bm-01"
BUNDLE = "/srv/kit/bundle/apt"
KEY = "/srv/kit/bundle/signing-key.asc"
BOOKWORM = {"codename": "bookworm", "architecture": "amd64"}


def problems(release=BOOKWORM, archive=True, key=True, host_release="bookworm", architecture="x86_64",
             transport="push", mirror_url="") -> list[str]:
    return checks.bundle_problems(HOST, release, archive, key, BUNDLE, KEY, host_release, architecture, transport,
                                  mirror_url)


def test_a_repository_built_for_the_hosts_release_has_no_problems():
    assert problems() == []
    assert problems(transport="mirror", mirror_url="http://10.0.0.5:8080") == []


MISSING = (f"sophon_apt_source is bundle but {BUNDLE}/release.yml, {BUNDLE}.tar or {KEY} is missing on the control "
           "node. Run `make bundle` where Debian packages can be downloaded (or set sophon_apt_source: mirror for hosts "
           "that reach a mirror) and rerun.")


@pytest.mark.parametrize("release, archive, key", [(None, True, True), ("not a mapping", True, True),
                                                   (BOOKWORM, False, True), (BOOKWORM, True, False)],
                         ids=["no-release", "release-not-yaml-mapping", "no-archive", "no-key"])
def test_a_missing_part_of_the_repository_names_all_three_and_make_bundle(release, archive, key):
    assert problems(release, archive, key) == [MISSING]


@pytest.mark.parametrize("host_release, architecture", [("trixie", "x86_64"), ("bookworm", "aarch64")],
                         ids=["release", "architecture"])
def test_a_repository_of_another_release_or_architecture_names_both(host_release, architecture):
    assert problems(host_release=host_release, architecture=architecture) == [
        f"{HOST} runs {host_release}/{architecture}, but the bundle's apt repository was built on bookworm/amd64. "
        "Build the bundle on a control node of the hosts' release, or set sophon_apt_source: mirror for this host."]


def test_mirror_transport_without_a_mirror_says_how_to_set_one():
    assert problems(transport="mirror") == [
        f"{HOST}: sophon_sd_bundle_transport is mirror, but no mirror is set: add a host to the inventory group "
        "bundle_mirror or set sophon_sd_bundle_mirror_url, or set sophon_sd_bundle_transport: push for this host."]


def test_a_missing_repository_and_no_mirror_are_both_reported():
    assert problems(release=None, transport="mirror") == [MISSING, problems(transport="mirror")[0]]
