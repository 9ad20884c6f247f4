"""A bundle that cannot be trusted stops site.yml on the control node, before any host is contacted.

Each case runs site.yml against a host that does not exist: reaching any host at all would fail
differently. The bundles are small (the pinned libraries' source archives, a vendor file), signed
with a key made here as `make bundle-key` makes one, for the test profile. The host's profile is
checked on the control node too (an unknown name, a profile the bundle was not built for).
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import build_bundle

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools/sdkit_bundle.py"
VENDOR = "vendor/sophon-libsophon_0.4.9_amd64.deb"
PROFILE = "tutorial-2023-cpu"


@pytest.fixture(scope="module")
def signing_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("gnupg")
    subprocess.run([sys.executable, str(TOOL), "key", "--gnupghome", str(home)], check=True, capture_output=True)
    return home


@dataclass
class Bundle:
    path: Path
    fingerprint: str

    def site(self, tags: str = "all", fingerprint: str | None = None, profile: str = PROFILE) -> subprocess.CompletedProcess:
        fingerprint = self.fingerprint if fingerprint is None else fingerprint
        return subprocess.run(["ansible-playbook", str(REPO / "playbooks/site.yml"), "-i", "bm-node-unreachable,",
                               "-e", "sophon_sd_hosts=bm-node-unreachable", "-e", f"sophon_sd_bundle_dir={self.path}",
                               "-e", f"sophon_sd_profile={profile}",
                               "-e", f"sophon_sd_bundle_signing_fingerprint='{fingerprint}'", "--tags", tags],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})


@pytest.fixture
def bundle(tmp_path, signing_home) -> Bundle:
    # The profile's source archives are the smallest complete bundle (no wheels, no apt); the repo's
    # bundle/sources also holds the other test profile's, which this manifest would not list.
    path = tmp_path / "bundle"
    (path / "vendor").mkdir(parents=True)
    (path / VENDOR).write_bytes(b"the file Sophgo published")
    return Bundle(build_bundle(path, signing_home, PROFILE), (signing_home / "fingerprint").read_text().strip())


def stopped_before_any_host(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode != 0
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
    assert "bm-node-unreachable" not in result.stdout.split("PLAY RECAP", 1)[-1], "a host was contacted"


def test_a_whole_signed_bundle_lets_the_run_go_on_to_the_hosts(bundle):
    result = bundle.site(tags="preflight")
    recap = result.stdout.split("PLAY RECAP", 1)[-1]
    # The bundle check on the control node passed (its task count moves with the plays' shared-facts role).
    assert re.search(r"^localhost +: ok=[1-9]\d* .*failed=0 ", recap, re.MULTILINE), result.stdout[-3000:]
    assert "bm-node-unreachable" in recap, "the run stopped before the hosts"


@pytest.mark.parametrize("tags", ["all", "apt,venv"])
def test_corrupt_bundle_file_is_named_before_any_host_changes(bundle, tags):
    """Whatever part of site.yml runs (issue 9, item 3: TAGS=apt used to skip the check)."""
    (bundle.path / VENDOR).write_bytes(b"the file, damaged on the way")
    stopped_before_any_host(bundle.site(tags), VENDOR)


def test_no_manifest_stops_the_run(bundle):
    """Issue 9, item 3: without manifest.yml the preflight printed a line and went on."""
    (bundle.path / "manifest.yml").unlink()
    stopped_before_any_host(bundle.site("apt"), f"{bundle.path}/manifest.yml does not exist", "make bundle")


def test_no_fingerprint_configured_stops_the_run(bundle):
    stopped_before_any_host(bundle.site(fingerprint=""),
                            "set sophon_sd_bundle_signing_fingerprint in the inventory's group_vars/all (make bundle-key prints it)")


def test_a_manifest_rewritten_to_match_a_swapped_file_stops_the_run(bundle):
    """Whoever can write bundle/ could rewrite the unsigned manifest to match a swapped file."""
    vendor = bundle.path / VENDOR
    old = subprocess.run(["sha256sum", str(vendor)], capture_output=True, text=True, check=True).stdout.split()[0]
    vendor.write_bytes(b"a deb with another postinst")
    new = subprocess.run(["sha256sum", str(vendor)], capture_output=True, text=True, check=True).stdout.split()[0]
    manifest = bundle.path / "manifest.yml"
    manifest.write_text(manifest.read_text().replace(old, new))
    stopped_before_any_host(bundle.site(), "manifest.yml.asc is not a good signature of")


def test_a_bundle_signed_by_another_key_stops_the_run(bundle):
    stopped_before_any_host(bundle.site(fingerprint="0" * 40),
                            f"manifest.yml is signed by key {bundle.fingerprint}, not by {'0' * 40}")


def test_a_hidden_dataset_file_stops_the_run(bundle):
    """Issue 9, item 3: a hidden assets/dataset/.x.parquet passed verification, and the loader trains on it."""
    hidden = bundle.path / "assets/dataset/.x.parquet"
    hidden.parent.mkdir(parents=True)
    hidden.write_bytes(b"PAR1")
    stopped_before_any_host(bundle.site(), f"{hidden}: a dot-file")


def stopped_on_the_control_node(result: subprocess.CompletedProcess, *expected: str) -> None:
    """The host's own checks failed on the control node: the host was never contacted (no facts, no task on it)."""
    assert result.returncode != 0
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
    recap = result.stdout.split("PLAY RECAP", 1)[-1]
    assert "bm-node-unreachable" in recap and "unreachable=0" in recap.split("bm-node-unreachable", 1)[1], result.stdout[-3000:]
    assert "Gathering Facts" not in result.stdout and "UNREACHABLE" not in result.stdout, "a host was contacted"


def test_an_unknown_profile_is_named_with_the_profiles_that_exist(bundle):
    result = bundle.site(profile="tutorial-2042")
    stopped_on_the_control_node(result, "bm-node-unreachable: sophon_sd_profile is 'tutorial-2042', but there is no",
                                "/profiles/tutorial-2042/profile.yml. The profiles are: ",
                                "tutorial-2023, tutorial-2023-cpu", "Set sophon_sd_profile in this host's group_vars")


def test_a_profile_the_bundle_was_not_built_for_stops_its_hosts(bundle):
    """A fleet whose groups use different profiles needs a bundle built for each (make bundle PROFILES=...)."""
    result = bundle.site(profile="tutorial-2023")
    stopped_on_the_control_node(result, "bm-node-unreachable uses the profile tutorial-2023 (sophon_sd_profile), but the bundle",
                                f"was built for {PROFILE}", f"make bundle PROFILES='{PROFILE} tutorial-2023'")
