"""tools/sdkit_bundle.py on a tiny bundle in tmp_path: no network, no apt, no pip.

The wheelhouse and the apt repository come from pip and apt-get, so these tests pass --no-wheelhouse
and --no-apt; git runs against a bare repository made here and reached through a file:// URL.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TOOL = Path(__file__).resolve().parents[3] / "tools" / "sdkit_bundle.py"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t.invalid"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, timeout=120)


class Kit:
    """A bundle with two sdists and a vendor file, a download-share copy, and the libraries' pins."""

    def __init__(self, root: Path) -> None:
        self.bundle = root / "bundle"
        self.share = root / "share"
        self.libraries = root / "libraries.yml"
        self.git_base_url = f"file://{root}/no-git-here"
        (self.bundle / "sources").mkdir(parents=True)
        (self.bundle / "vendor").mkdir()
        (self.bundle / "vendor" / "sophon-libsophon_0.5.1_amd64.deb").write_bytes(b"Sophgo's deb")
        pins = []
        for name, version in (("accelerate", "0.16.0"), ("diffusers", "0.20.0")):
            sdist = self.bundle / "sources" / f"{name}-{version}.tar.gz"
            sdist.write_bytes(f"sdist of {name}".encode())
            pins.append({"name": name, "version": version, "tag": f"v{version}", "commit": "", "sha256": sha256(sdist)})
        self.write_pins(pins)
        for rel in ("CompVis_SD14_pretrained_weights/model_index.json", "CompVis_SD14_pretrained_weights/unet/weights.bin",
                    "dataset/data/train-00000-of-00001.parquet", "sayakpau_sd_lora-t4/pytorch_lora_weights.bin",
                    "SophgoTrained_lroa_weight/pytorch_lora_weights.bin"):
            (self.share / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.share / rel).write_bytes(rel.encode())

    def write_pins(self, pins: list) -> None:
        self.libraries.write_text(yaml.safe_dump({"sophon_upstream_libraries": pins}))

    def build(self, *extra: str) -> subprocess.CompletedProcess:
        return run("build", "--bundle-dir", str(self.bundle), "--profile", "torch-2.13.0-py3.11", "--no-wheelhouse",
                   "--no-apt", "--libraries", str(self.libraries), "--git-base-url", self.git_base_url,
                   "--git-timeout", "5", "--assets-from", str(self.share), *extra)

    def verify(self) -> subprocess.CompletedProcess:
        return run("verify", "--bundle-dir", str(self.bundle))

    def manifest(self) -> dict:
        return yaml.safe_load((self.bundle / "manifest.yml").read_text())

    def items(self) -> dict:
        return {item["path"]: item for item in self.manifest()["items"]}


@pytest.fixture
def kit(tmp_path) -> Kit:
    return Kit(tmp_path)


@pytest.fixture
def built(kit) -> Kit:
    result = kit.build()
    assert result.returncode == 0, result.stdout + result.stderr
    return kit


def test_manifest_lists_every_file_with_its_sha256(built):
    files = {path.relative_to(built.bundle).as_posix() for path in built.bundle.rglob("*") if path.is_file()}
    files.discard("manifest.yml")
    items = built.items()
    assert set(items) == files
    for rel, item in items.items():
        assert item["sha256"] == sha256(built.bundle / rel), rel
    assert items["vendor/sophon-libsophon_0.5.1_amd64.deb"]["kind"] == "vendor"
    assert items["vendor/sophon-libsophon_0.5.1_amd64.deb"]["version"] == "0.5.1"
    assert items["assets/dataset/data/train-00000-of-00001.parquet"]["origin"] == f"local copy {built.share}/dataset"
    header = built.manifest()
    assert (header["profile"], header["python"]) == ("torch-2.13.0-py3.11", "3.11")


def test_assets_checksum_list_is_what_the_assets_role_checks(built):
    result = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=built.bundle / "assets",
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert len(result.stdout.splitlines()) == 5


def test_rerun_fetches_nothing_and_changes_nothing(built):
    before = {path: path.stat().st_mtime_ns for path in built.bundle.rglob("*")}
    manifest = (built.bundle / "manifest.yml").read_bytes()
    result = built.build()
    assert result.returncode == 0, result.stdout
    assert "fetched 0," in result.stdout and "manifest unchanged" in result.stdout
    assert {path: path.stat().st_mtime_ns for path in built.bundle.rglob("*")} == before
    assert (built.bundle / "manifest.yml").read_bytes() == manifest


def test_verify_passes_on_a_whole_bundle(built):
    result = built.verify()
    assert result.returncode == 0 and result.stdout.startswith("bundle OK: 9 files")


def test_verify_names_a_corrupt_file(built):
    (built.bundle / "assets/dataset/data/train-00000-of-00001.parquet").write_bytes(b"truncated")
    result = built.verify()
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{built.bundle}/assets/dataset/data/train-00000-of-00001.parquet: sha256 differs from the manifest "
        "(corrupt or replaced); fix: copy it again from the download share (make bundle ASSETS_FROM=<copy of the share>) "
        "or rerun make bundle"]


def test_verify_names_a_missing_file(built):
    (built.bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb").unlink()
    result = built.verify()
    assert result.returncode == 1
    assert result.stdout.startswith(f"{built.bundle}/vendor/sophon-libsophon_0.5.1_amd64.deb: missing; fix: drop Sophgo's file again")
    assert len(result.stdout.splitlines()) == 1


def test_verify_names_an_unlisted_file(built):
    (built.bundle / "sources/stray.tar.gz").write_bytes(b"?")
    result = built.verify()
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{built.bundle}/sources/stray.tar.gz: not in the manifest; fix: remove it "
                                          "(make bundle does not record it)"]


def test_verify_without_a_manifest_says_how_to_make_one(kit):
    result = kit.verify()
    assert result.returncode == 2 and "make bundle" in result.stderr


def test_rebuild_copies_a_corrupt_asset_again(built):
    asset = built.bundle / "assets/sayakpau_sd_lora-t4/pytorch_lora_weights.bin"
    asset.write_bytes(b"bit rot")
    result = built.build()
    assert result.returncode == 0, result.stdout
    assert "fetched 1," in result.stdout
    assert asset.read_bytes() == b"sayakpau_sd_lora-t4/pytorch_lora_weights.bin"
    assert built.verify().returncode == 0


def test_a_changed_vendor_file_is_reported_not_recorded(built):
    vendor = built.bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb"
    recorded = built.items()["vendor/sophon-libsophon_0.5.1_amd64.deb"]["sha256"]
    vendor.write_bytes(b"another deb")
    result = built.build()
    assert result.returncode == 1
    assert f"{built.bundle}/vendor/sophon-libsophon_0.5.1_amd64.deb: sha256 {sha256(vendor)} differs" in result.stdout
    assert built.items()["vendor/sophon-libsophon_0.5.1_amd64.deb"]["sha256"] == recorded
    assert built.build("--accept-changes").returncode == 0
    assert built.items()["vendor/sophon-libsophon_0.5.1_amd64.deb"]["sha256"] == sha256(vendor)


def test_missing_share_folder_is_reported_and_fails_only_when_required(kit):
    for path in sorted((kit.share / "SophgoTrained_lroa_weight").rglob("*"), reverse=True):
        path.unlink()
    result = kit.build()
    assert result.returncode == 0
    assert f"missing: {kit.bundle}/assets/SophgoTrained_lroa_weight/: make bundle ASSETS_FROM=" in result.stdout
    assert kit.manifest()["missing"][0]["name"] == "assets/SophgoTrained_lroa_weight"
    assert kit.build("--require-assets").returncode == 1


def test_git_unreachable_keeps_the_sdist(built):
    items = built.items()
    assert items["sources/accelerate-0.16.0.tar.gz"]["origin"] == "pypi sdist (git unreachable)"
    assert not any(rel.endswith(".git.tar.gz") for rel in items)


def make_bare_repo(root: Path, name: str, tag: str) -> str:
    """A bare repository <root>/<name>.git with one commit tagged TAG; returns the commit."""
    env = {**os.environ, **GIT_IDENTITY}
    work = root / f"{name}-work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "__init__.py").write_text(f"# {name}\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", name], ["tag", "-a", tag, "-m", tag]):
        subprocess.run(["git", "-C", str(work), *argv], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / f"{name}.git")], check=True, env=env)
    return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_kit(kit, tmp_path) -> Kit:
    pins = yaml.safe_load(kit.libraries.read_text())["sophon_upstream_libraries"]
    for pin in pins:
        pin["commit"] = make_bare_repo(tmp_path / "git", pin["name"], pin["tag"])
    kit.write_pins(pins)
    kit.git_base_url = f"file://{tmp_path}/git"
    return kit


def test_git_archive_records_the_commit(git_kit):
    result = git_kit.build()
    assert result.returncode == 0, result.stdout
    items = git_kit.items()
    pins = {pin["name"]: pin for pin in yaml.safe_load(git_kit.libraries.read_text())["sophon_upstream_libraries"]}
    archive = items["sources/diffusers-0.20.0.git.tar.gz"]
    assert archive["origin"] == f"{git_kit.git_base_url}/diffusers.git {pins['diffusers']['commit']}".join(["git ", ""])
    assert (archive["kind"], archive["name"], archive["version"]) == ("source", "diffusers", "0.20.0")
    assert items["sources/diffusers-0.20.0.tar.gz"]["origin"] == "pypi sdist"
    listing = subprocess.run(["tar", "tzf", str(git_kit.bundle / archive["path"])], capture_output=True, text=True).stdout
    assert "diffusers-0.20.0/src/__init__.py" in listing.splitlines()
    rerun = git_kit.build()
    assert "fetched 0," in rerun.stdout and "manifest unchanged" in rerun.stdout


def test_git_tag_at_another_commit_is_refused(git_kit):
    pins = yaml.safe_load(git_kit.libraries.read_text())["sophon_upstream_libraries"]
    pins[0]["commit"] = "0" * 40
    git_kit.write_pins(pins)
    result = git_kit.build()
    assert result.returncode == 1
    assert f"{git_kit.bundle}/sources/accelerate-0.16.0.git.tar.gz: made from commit" in result.stdout
    assert "the pin says " + "0" * 40 in result.stdout
    assert "sources/accelerate-0.16.0.git.tar.gz" not in git_kit.items()
    assert not (git_kit.bundle / "sources/accelerate-0.16.0.git.tar.gz").exists()
