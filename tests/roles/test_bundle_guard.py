"""Nothing is pushed from a bundle this run did not verify, and an older bundle is refused (issue 21, items 1, 7).

One throwaway host, in order: tampered bundles first (the host must stay without the bundle's key and
repository), then genuine bundles of two serials. The bundles are small (the test profile's sources,
the test bundle's apt repository), signed with the test bundle's key as make bundle signs.
"""

import hashlib
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, build_bundle

sys.path.insert(0, str(REPO / "tools"))
from sdkit_signing import create_key, export_public  # noqa: E402

KEYRING = "/etc/apt/keyrings/sophon-sd-bundle.asc"
REPO_TAR = "/opt/sophon-sd/apt.tar"
SERIAL_FILE = "/etc/sophon-sd/bundle-serial"
APT_FROM_BUNDLE = {"sophon_apt_source": "bundle", "sophon_apt_packages": []}
ASSET = "assets/dataset/train.parquet"
ASSETS = {"sophon_assets_items": ["dataset"]}
ASSETS_ON_HOST = "/opt/sophon-sd/assets/dataset"


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A signed bundle with the test bundle's apt repository."""
    if not (REPO / "bundle/apt.tar").is_file():
        pytest.fail("the test bundle has no apt repository: run make test-bundle")
    path = tmp_path_factory.mktemp("genuine") / "bundle"
    shutil.copytree(REPO / "bundle/apt", path / "apt")
    shutil.copy2(REPO / "bundle/apt.tar", path / "apt.tar")
    write_asset(path, b"PAR1 the captions")
    return build_bundle(path)


def write_asset(bundle: Path, data: bytes) -> None:
    """assets/dataset/train.parquet and the SHA256SUMS the assets role checks it against (make assets-sums)."""
    (bundle / ASSET).parent.mkdir(parents=True, exist_ok=True)
    (bundle / ASSET).write_bytes(data)
    (bundle / "assets/SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {ASSET.split('/', 1)[1]}\n")


@pytest.fixture
def tampered(genuine, tmp_path) -> Path:
    """The attack of issue 21, item 1: another signing key and another apt.tar, the signed manifest left as it was."""
    path = tmp_path / "bundle"
    shutil.copytree(genuine, path)
    other = tmp_path / "other-gnupg"
    (path / "signing-key.asc").write_bytes(export_public(other, create_key(other)))
    with tarfile.open(path / "apt.tar", "w") as tar:
        tar.add(path / "apt/Release", arcname="Release")
    # The checksum list rewritten with the swapped file, as whoever swaps it would.
    write_asset(path, b"PAR1 other captions")
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "gpg-agent"], check=False)
    return path


def nothing_pushed(host, result) -> None:
    assert result.failed, result.output[-3000:]
    for path in (KEYRING, REPO_TAR, ASSETS_ON_HOST):
        assert not host.exists(path), f"{path}: pushed from the tampered bundle"


@pytest.mark.parametrize("playbook", ["apt.yml", "assets.yml"])
def test_a_per_part_playbook_refuses_a_tampered_bundle(throwaway_host, tampered, playbook):
    """apt.yml and assets.yml (like stack.yml, runtime.yml, slurm.yml) pushed bundle/ as it was, without the check."""
    result = throwaway_host.play(playbook, {**APT_FROM_BUNDLE, **ASSETS, "sophon_sd_bundle_dir": str(tampered)})
    nothing_pushed(throwaway_host, result)
    assert "manifest.yml.asc is not a good signature of" in result.output, result.output[-3000:]


@pytest.mark.parametrize("skip", ["preflight", "always"])
def test_skipping_the_check_by_tag_pushes_nothing(throwaway_host, tampered, skip):
    """site.yml --skip-tags preflight skipped the check; --skip-tags always still does, and then the role refuses."""
    result = throwaway_host.play("site.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(tampered)},
                                 tags="apt", skip_tags=skip)
    nothing_pushed(throwaway_host, result)
    expected = ("manifest.yml.asc is not a good signature of" if skip == "preflight" else
                f"{throwaway_host.name}: {tampered}/manifest.yml is not the manifest this run verified (no bundle check ran in this run)")
    assert expected in result.output, result.output[-3000:]


# --------------------------------------------------------------------------- serial (issue 21, item 7)


@pytest.fixture(scope="module")
def newer(genuine, tmp_path_factory) -> Path:
    """The same bundle rebuilt after a change: genuinely signed, with a higher serial."""
    path = tmp_path_factory.mktemp("newer") / "bundle"
    shutil.copytree(genuine, path)
    (path / "vendor").mkdir()
    (path / "vendor/sophon-libsophon_0.4.9_amd64.deb").write_bytes(b"a newer deb")
    return build_bundle(path)


def serial(bundle: Path) -> int:
    return yaml.safe_load((bundle / "manifest.yml").read_text())["serial"]


def test_the_host_records_the_serial_of_the_bundle_it_got(throwaway_host, newer):
    result = throwaway_host.play("apt.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(newer)})
    assert not result.failed, result.output[-3000:]
    assert throwaway_host.check_output(f"cat {SERIAL_FILE}").strip() == str(serial(newer))
    assert throwaway_host.check_output(f"stat -c %U:%a {SERIAL_FILE}").strip() == "root:644"


def test_an_older_bundle_is_refused_naming_both_serials(throwaway_host, genuine, newer):
    """Genuinely signed, with the packages a newer bundle replaced: refused before anything is pushed."""
    old, new = serial(genuine), serial(newer)
    assert old < new
    result = throwaway_host.play("apt.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(genuine)})
    assert result.failed
    assert (f"{throwaway_host.name}: the bundle {genuine}/manifest.yml has serial {old}, older than serial {new}, the last "
            f"bundle this host got ({SERIAL_FILE})") in result.output, result.output[-3000:]
    assert f"set sophon_sd_bundle_allow_older: {old} in the inventory" in result.output
    assert throwaway_host.check_output(f"cat {SERIAL_FILE}").strip() == str(new)


def test_the_inventory_accepts_exactly_that_older_serial(throwaway_host, genuine, newer):
    old = serial(genuine)
    other = throwaway_host.play("apt.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(genuine),
                                            "sophon_sd_bundle_allow_older": old - 1})
    assert other.failed and f"has serial {old}, older than serial {serial(newer)}" in other.output, other.output[-3000:]
    result = throwaway_host.play("apt.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(genuine),
                                             "sophon_sd_bundle_allow_older": old})
    assert not result.failed, result.output[-3000:]
    assert throwaway_host.check_output(f"cat {SERIAL_FILE}").strip() == str(old)
    rerun = throwaway_host.play("apt.yml", {**APT_FROM_BUNDLE, "sophon_sd_bundle_dir": str(genuine)})
    assert not rerun.failed and "changed=0" in rerun.output.split("PLAY RECAP", 1)[1], rerun.output[-3000:]
