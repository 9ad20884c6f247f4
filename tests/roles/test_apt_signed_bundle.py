"""playbooks/apt.yml with sophon_apt_source: bundle: apt on the host checks the bundle repository's
signature (Signed-By the bundle's key) instead of trusting it (issue 9, item 3: `Trusted: yes`).

Uses the test bundle's apt repository (make test-bundle), pushed to a throwaway host.
"""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO, build_bundle

sys.path.insert(0, str(REPO / "tools"))
from sdkit_signing import create_key, sign  # noqa: E402

BUNDLE = REPO / "bundle"
# In the bundle's repository (resolved with every dependency) and not in the test-host image.
PACKAGE = "make"


@pytest.fixture(scope="module")
def repository() -> Path:
    if not (BUNDLE / "apt/InRelease").is_file():
        pytest.fail("the test bundle has no signed apt repository: run make test-bundle")
    return BUNDLE


def test_the_bundle_repository_installs_with_signed_by(throwaway_host, repository):
    result = throwaway_host.play("apt.yml", {"sophon_apt_source": "bundle", "sophon_apt_packages": [PACKAGE]})
    assert not result.failed, result.output[-3000:]
    source = throwaway_host.check_output("cat /etc/apt/sources.list.d/sophon-sd-bundle.sources")
    assert "Signed-By: /etc/apt/keyrings/sophon-sd-bundle.asc" in source and "Trusted" not in source
    assert throwaway_host.run(f"{PACKAGE} --version").returncode == 0


def test_a_repository_signed_by_another_key_is_refused(throwaway_host, repository, tmp_path):
    """The same packages, their index re-signed by a key that is not the bundle's: apt refuses the
    index, so nothing from it is installed (with Trusted: yes it was). The manifest is signed by the
    bundle's key, so the preflight passes and apt's own check is what is tested."""
    bundle = tmp_path / "bundle"
    shutil.copytree(repository / "apt", bundle / "apt")
    other = tmp_path / "other-gnupg"
    fingerprint = create_key(other)
    release = (bundle / "apt/Release").read_bytes()
    (bundle / "apt/InRelease").write_bytes(sign(other, fingerprint, release, clearsign=True))
    with tarfile.open(bundle / "apt.tar", "w") as tar:
        for path in sorted((bundle / "apt").iterdir()):
            tar.add(path, arcname=path.name)
    build_bundle(bundle)
    result = throwaway_host.play("apt.yml", {"sophon_apt_source": "bundle", "sophon_apt_packages": ["libncurses5"],
                                             "sophon_sd_bundle_dir": str(bundle)})
    assert result.failed
    assert "NO_PUBKEY" in result.output, result.output[-3000:]
    assert throwaway_host.run("dpkg -s libncurses5").returncode != 0
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "gpg-agent"], check=False)
