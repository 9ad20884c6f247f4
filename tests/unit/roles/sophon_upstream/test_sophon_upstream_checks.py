"""roles/sophon_upstream's check (module_utils/sophon_upstream_checks.py): what is on the host, and each message
that stops the role before it fetches, in full. The container suites (fleet scenario) run it for real."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import sophon_upstream_checks as checks

BUNDLE = "/srv/bundle/sources"
SHA = "ab" * 32
DIFFUSERS = {"name": "diffusers", "version": "0.20.0", "tag": "v0.20.0", "commit": "c" * 40, "sha256": SHA}
ACCELERATE = {"name": "accelerate", "version": "0.30.1", "tag": "v0.30.1", "commit": "", "sha256": SHA}
LIBRARIES = [DIFFUSERS, ACCELERATE]
ARCHIVES = ["diffusers-0.20.0.tar.gz", "accelerate-0.30.1.tar.gz"]


def sdist(src: Path, name: str, version: str) -> None:
    (src / name).mkdir(parents=True)
    (src / name / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_bundle_host_with_nothing_yet_has_no_problems(tmp_path):
    found = checks.look(str(tmp_path), "bundle", LIBRARIES)
    assert found == {name: {"present": False, "version": None, "archive": f"{name}-{version}.tar.gz",
                            "from_archive": f"{name}-{version}.tar.gz", "archive_sha256": None, "marker": None}
                     for name, version in (("diffusers", "0.20.0"), ("accelerate", "0.30.1"))}
    assert checks.problems(found, LIBRARIES, "bundle", str(tmp_path), BUNDLE, ARCHIVES) == []


def test_archive_missing_on_the_control_node():
    found = {"diffusers": {"present": False, "version": None, "archive_sha256": None},
             "accelerate": {"present": False, "version": None, "archive_sha256": None}}
    assert checks.problems(found, LIBRARIES, "bundle", "/opt/sophon-sd/src", BUNDLE, ARCHIVES[1:]) == [
        f"{BUNDLE}/diffusers-0.20.0.tar.gz is missing on the control node. Run `make wheelhouse` (it also downloads "
        "the source archives) and rerun."]


def test_archive_on_the_host_with_another_sha256_and_a_tree_at_another_version(tmp_path):
    (tmp_path / ".archives").mkdir()
    (tmp_path / ".archives" / "diffusers-0.20.0.tar.gz").write_bytes(b"tampered")
    sdist(tmp_path, "accelerate", "0.29.0")
    found = checks.look(str(tmp_path), "bundle", LIBRARIES)
    actual = hashlib.sha256(b"tampered").hexdigest()
    assert found["accelerate"]["present"] and found["diffusers"]["archive_sha256"] == actual
    assert checks.problems(found, LIBRARIES, "bundle", str(tmp_path), BUNDLE, ARCHIVES) == [
        f"diffusers-0.20.0.tar.gz has sha256 {actual}, expected {SHA}. Replace the file in {BUNDLE} with the "
        "published sdist and rerun.",
        f"{tmp_path}/accelerate holds accelerate 0.29.0, not the pinned 0.30.1. The kit does not overwrite a tree it "
        "did not make: move it away and rerun."]


def test_tree_at_the_pin_is_present_and_fine(tmp_path):
    sdist(tmp_path, "diffusers", "0.20.0")
    found = checks.look(str(tmp_path), "bundle", LIBRARIES)
    assert found["diffusers"] == {"present": True, "tree": "sdist", "version": "0.20.0", "archive_sha256": None,
                                  "archive": "diffusers-0.20.0.tar.gz", "from_archive": "diffusers-0.20.0.tar.gz",
                                  "marker": None}
    assert checks.problems(found, LIBRARIES, "bundle", str(tmp_path), BUNDLE, ARCHIVES) == []


@pytest.mark.parametrize("commit, expected", [("c" * 40, []), ("", [])])
def test_checkout_at_its_pin_or_unpinned_passes(tmp_path, commit, expected):
    found = {"diffusers": {"present": True, "commit": "c" * 40}, "accelerate": {"present": True, "commit": "d" * 40}}
    assert checks.problems(found, [dict(DIFFUSERS, commit=commit), ACCELERATE], "git", str(tmp_path), BUNDLE,
                           []) == expected


def test_checkout_at_another_commit_is_not_overwritten(tmp_path):
    repo = tmp_path / "diffusers"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git[:3], "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    found = checks.look(str(tmp_path), "git", LIBRARIES)
    assert found == {"diffusers": {"present": True, "commit": head}, "accelerate": {"present": False, "commit": None}}
    assert checks.problems(found, LIBRARIES, "git", str(tmp_path), BUNDLE, []) == [
        f"{tmp_path}/diffusers is at {head}, not diffusers v0.20.0 ({'c' * 40}). The kit does not overwrite a "
        "checkout it did not make: move it away and rerun."]
