"""tools/sdkit_bundle.py on a tiny bundle in tmp_path: no network, no apt, no pip.

The wheelhouse and the apt repository come from pip and apt-get, so these tests pass --no-wheelhouse
and --no-apt; git runs against a bare repository made here and reached through a file:// URL.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

TOOL = Path(__file__).resolve().parents[3] / "tools" / "sdkit_bundle.py"
# The test profile (profiles/tutorial-2023-cpu), and the tar its hosts get.
PROFILE = "tutorial-2023-cpu"
TAR = f"wheelhouse-{PROFILE}.tar"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t.invalid"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def signing_home(tmp_path_factory) -> Path:
    """One signing key for the session, made as `make bundle-key` makes it (ed25519 takes a fraction of a second)."""
    home = tmp_path_factory.mktemp("gnupg")
    result = run("key", "--gnupghome", str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    return home


class Kit:
    """A bundle with two sdists and a vendor file, a download-share copy, and the libraries' pins."""

    def __init__(self, root: Path, signing_home: Path) -> None:
        self.gnupghome = signing_home
        self.fingerprint = (signing_home / "fingerprint").read_text().strip()
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

    def build(self, *extra: str, wheelhouse: bool = False, profiles: tuple = (PROFILE,)) -> subprocess.CompletedProcess:
        return run("build", "--bundle-dir", str(self.bundle), "--profile", *profiles,
                   *([] if wheelhouse else ["--no-wheelhouse"]), "--no-apt", "--libraries", str(self.libraries), "--git-base-url", self.git_base_url,
                   "--git-timeout", "5", "--assets-from", str(self.share), "--gnupghome", str(self.gnupghome), *extra)

    def verify(self, fingerprint: str | None = None) -> subprocess.CompletedProcess:
        return run("verify", "--bundle-dir", str(self.bundle), "--fingerprint", self.fingerprint if fingerprint is None else fingerprint)

    def manifest(self) -> dict:
        return yaml.safe_load((self.bundle / "manifest.yml").read_text())

    def items(self) -> dict:
        return {item["path"]: item for item in self.manifest()["items"]}


@pytest.fixture
def kit(tmp_path, signing_home) -> Kit:
    return Kit(tmp_path, signing_home)


@pytest.fixture
def built(kit) -> Kit:
    result = kit.build()
    assert result.returncode == 0, result.stdout + result.stderr
    return kit


def test_manifest_lists_every_file_with_its_sha256(built):
    files = {path.relative_to(built.bundle).as_posix() for path in built.bundle.rglob("*") if path.is_file()}
    files -= {"manifest.yml", "manifest.yml.asc"}
    items = built.items()
    assert set(items) == files
    for rel, item in items.items():
        assert item["sha256"] == sha256(built.bundle / rel), rel
    assert items["vendor/sophon-libsophon_0.5.1_amd64.deb"]["kind"] == "vendor"
    assert items["vendor/sophon-libsophon_0.5.1_amd64.deb"]["version"] == "0.5.1"
    assert items["assets/dataset/data/train-00000-of-00001.parquet"]["origin"] == f"local copy {built.share}/dataset"
    header = built.manifest()
    assert header["profiles"] == {PROFILE: {"python": "3.11", "torch": "2.13.0", "torch_tpu": "2.1.0.post1", "wheelhouse": ""}}


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
    assert result.returncode == 0 and result.stdout.startswith("bundle OK: 10 files")
    assert f"signed by {built.fingerprint}" in result.stdout


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


# --------------------------------------------------------------------------- trust (issue 9, item 3)


def test_verify_refuses_a_manifest_changed_after_signing(built):
    """Whoever can write bundle/ can rewrite the manifest to match a swapped file: the signature cannot follow."""
    vendor = built.bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb"
    vendor.write_bytes(b"a deb with another postinst")
    manifest = built.bundle / "manifest.yml"
    manifest.write_text(manifest.read_text().replace(built.items()["vendor/sophon-libsophon_0.5.1_amd64.deb"]["sha256"],
                                                     sha256(vendor)))
    result = built.verify()
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {built.bundle}/manifest.yml.asc is not a good signature of {built.bundle}/manifest.yml")
    assert "rerun make bundle" in result.stderr


def test_verify_refuses_a_bundle_signed_with_another_key(built, tmp_path):
    """A bundle re-signed with another key and shipped with that key's public half: the fingerprint decides."""
    other = tmp_path / "other-gnupg"
    assert run("key", "--gnupghome", str(other)).returncode == 0
    other_fingerprint = (other / "fingerprint").read_text().strip()
    sign = ["gpg", "--homedir", str(other), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*sign, "--yes", "--armor", "--detach-sign", "--output", str(built.bundle / "manifest.yml.asc"),
                    str(built.bundle / "manifest.yml")], check=True, capture_output=True)
    with open(built.bundle / "signing-key.asc", "wb") as key:
        subprocess.run([*sign, "--armor", "--export", other_fingerprint], check=True, stdout=key)
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "gpg-agent"], check=False)
    result = built.verify()
    assert result.returncode == 2
    assert f"manifest.yml is signed by key {other_fingerprint}, not by {built.fingerprint}" in result.stderr


@pytest.mark.parametrize("missing", ["manifest.yml.asc", "signing-key.asc"])
def test_verify_refuses_an_unsigned_manifest(built, missing):
    (built.bundle / missing).unlink()
    result = built.verify()
    assert result.returncode == 2
    assert f"{built.bundle}/{missing} does not exist, so the manifest is not signed: rerun make bundle" in result.stderr


def test_verify_without_a_fingerprint_says_where_to_set_it(built):
    result = built.verify(fingerprint="")
    assert result.returncode == 2
    assert "set sophon_sd_bundle_signing_fingerprint in the inventory's group_vars/all (make bundle-key prints it)" \
        in result.stderr


def test_build_without_a_signing_key_says_how_to_make_one(kit, tmp_path):
    kit.gnupghome = tmp_path / "no-key-here"
    result = kit.build()
    assert result.returncode == 2
    assert "holds no secret key: make bundle signs with the one key `make bundle-key` creates there" in result.stderr
    assert not (kit.bundle / "manifest.yml").exists()


def test_a_changed_bundle_is_signed_again(built):
    signature = (built.bundle / "manifest.yml.asc").read_bytes()
    (built.bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb").write_bytes(b"a newer deb")
    assert built.build("--accept-changes").returncode == 0
    assert (built.bundle / "manifest.yml.asc").read_bytes() != signature
    assert built.verify().returncode == 0


def test_a_new_key_signs_the_whole_bundle_again(built, tmp_path):
    """make clean removes the test key: the next build ships the new public key and signs with it."""
    other = tmp_path / "new-gnupg"
    assert run("key", "--gnupghome", str(other)).returncode == 0
    built.gnupghome, old_fingerprint = other, built.fingerprint
    built.fingerprint = (other / "fingerprint").read_text().strip()
    result = built.build()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"signed by {built.fingerprint}" in result.stdout
    assert built.verify().returncode == 0
    assert built.verify(fingerprint=old_fingerprint).returncode == 2


def plant(bundle: Path, rel: str, how: str) -> None:
    path = bundle / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "dot-file":
        path.write_bytes(b"PAR1 a hidden dataset shard")
    elif how == "symlink":
        path.symlink_to("/etc/shadow")
    elif how == "symlinked folder":
        path.symlink_to(bundle.parent / "share" / "dataset", target_is_directory=True)
    elif how == "hard link":
        os.link(bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb", path)
    elif how == "fifo":
        os.mkfifo(path)


@pytest.mark.parametrize("rel, how, why", [
    ("assets/dataset/.x.parquet", "dot-file", "a dot-file (hidden, yet read by the loaders)"),
    ("assets/dataset/.hidden/x.parquet", "dot-file", "a dot-file (hidden, yet read by the loaders)"),
    ("vendor/libsophon.deb", "symlink", "a symbolic link"),
    ("assets/dataset/more", "symlinked folder", "a symbolic link"),
    ("vendor/sophon-libsophon-copy_0.5.1_amd64.deb", "hard link", "a hard link"),
    ("vendor/pipe", "fifo", "a device file, FIFO or socket"),
])
def test_links_special_files_and_dot_files_are_refused(built, rel, how, why):
    plant(built.bundle, rel, how)
    named = rel.split("/.hidden/")[0] + "/.hidden" if "/.hidden/" in rel else rel
    line = f"{built.bundle}/{named}: {why}; fix: remove it (the bundle holds plain files only)"
    result = built.verify()
    assert result.returncode == 1
    assert line in result.stdout.splitlines()
    rebuilt = built.build()
    assert rebuilt.returncode == 1
    assert line in rebuilt.stdout.splitlines()
    assert not any(rel.startswith(named) for rel in built.items())


def write_wheelhouse(bundle: Path, wheels: dict[str, bytes], profile: str = PROFILE) -> None:
    """bundle/wheelhouse/<profile>/ and wheelhouse-<profile>.tar as make wheelhouse writes them (a tar of the folder's files)."""
    folder = bundle / "wheelhouse" / profile
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in wheels.items():
        (folder / name).write_bytes(data)
    subprocess.run(["tar", "-C", str(folder), "-cf", str(bundle / f"wheelhouse-{profile}.tar"), "."], check=True)


WHEELS = {"torch-2.13.0-cp311-none-linux_x86_64.whl": b"the real torch", "six-1.16.0-py2.py3-none-any.whl": b"six"}


@pytest.fixture
def with_wheels(kit) -> Kit:
    write_wheelhouse(kit.bundle, WHEELS)
    result = kit.build(wheelhouse=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return kit


def test_each_profile_has_its_wheelhouse_and_the_manifest_names_them(with_wheels):
    """Host groups with different profiles share one bundle: one wheelhouse tar per profile."""
    write_wheelhouse(with_wheels.bundle, {"torch-2.1.0-cp310-cp310-manylinux1_x86_64.whl": b"torch 2.1"}, "tutorial-2023")
    result = with_wheels.build(wheelhouse=True, profiles=(PROFILE, "tutorial-2023"))
    assert result.returncode == 0, result.stdout + result.stderr
    profiles = with_wheels.manifest()["profiles"]
    assert profiles["tutorial-2023"] == {"python": "3.10", "torch": "2.1.0", "torch_tpu": "2.1.0.post1",
                                         "wheelhouse": "wheelhouse-tutorial-2023.tar"}
    assert profiles[PROFILE]["wheelhouse"] == TAR
    items = with_wheels.items()
    assert items["wheelhouse-tutorial-2023.tar"]["members"] == {
        "torch-2.1.0-cp310-cp310-manylinux1_x86_64.whl": hashlib.sha256(b"torch 2.1").hexdigest()}
    assert "wheelhouse/tutorial-2023/torch-2.1.0-cp310-cp310-manylinux1_x86_64.whl" in items
    verified = with_wheels.verify()
    assert verified.returncode == 0 and f"(profiles {PROFILE} tutorial-2023)" in verified.stdout, verified.stdout


def test_a_wheelhouse_of_a_profile_not_asked_for_is_a_problem(with_wheels):
    result = with_wheels.build(wheelhouse=True, profiles=("tutorial-2023",))
    assert result.returncode == 1
    assert (f"{with_wheels.bundle}/{TAR}: is not for the profiles this bundle is built for (tutorial-2023); fix: remove it, "
            "or add its profile (make bundle PROFILES='tutorial-2023 <profile>')") in result.stdout.splitlines()


def test_an_unknown_profile_names_the_profiles(kit):
    result = kit.build(profiles=("tutorial-2042",))
    assert result.returncode == 2
    assert "no profile 'tutorial-2042' (no profiles/tutorial-2042/profile.yml): the profiles are " in result.stderr
    assert "tutorial-2023, tutorial-2023-cpu" in result.stderr


def test_an_unresolved_profile_gets_no_wheelhouse(tmp_path):
    """torch-tpu-2.8 could not be resolved here: refused with why, before pip downloads anything."""
    result = run("wheelhouse", "--bundle-dir", str(tmp_path), "--profile", "torch-tpu-2.8")
    assert result.returncode == 2
    assert "no wheelhouse for the profile torch-tpu-2.8 (profiles/torch-tpu-2.8/profile.yml, wheelhouse_blocked): " in result.stderr
    assert "nvidia-cudnn-cu12==9.10.2.21" in result.stderr
    assert not (tmp_path / "wheelhouse").exists()


def test_the_sources_of_a_profile_are_its_libraries_sdists():
    result = run("sources", "--profile", PROFILE)
    assert result.stdout.split() == ["transformers-4.29.1.tar.gz", "accelerate-0.16.0.tar.gz", "diffusers-0.20.0.tar.gz"]


def test_tar_members_are_recorded(with_wheels):
    members = with_wheels.items()[TAR]["members"]
    assert members == {name: hashlib.sha256(data).hexdigest() for name, data in WHEELS.items()}


def test_a_same_size_change_inside_the_wheelhouse_tar_is_named_not_recorded(with_wheels):
    recorded = with_wheels.items()[TAR]["sha256"]
    tampered = b"the evil torch"
    assert len(tampered) == len(WHEELS["torch-2.13.0-cp311-none-linux_x86_64.whl"])
    work = with_wheels.bundle.parent / "tampered"
    work.mkdir()
    for name, data in WHEELS.items():
        (work / name).write_bytes(tampered if name.startswith("torch") else data)
    subprocess.run(["tar", "-C", str(work), "-cf", str(with_wheels.bundle / TAR), "."], check=True)

    verified = with_wheels.verify()
    assert verified.returncode == 1
    assert (f"{with_wheels.bundle}/{TAR}: member torch-2.13.0-cp311-none-linux_x86_64.whl differs from the manifest; "
            "fix: rerun make bundle") in verified.stdout.splitlines()

    rebuilt = with_wheels.build(wheelhouse=True)
    assert rebuilt.returncode == 1
    assert (f"{with_wheels.bundle}/{TAR}: member torch-2.13.0-cp311-none-linux_x86_64.whl has sha256 "
            f"{hashlib.sha256(tampered).hexdigest()}, wheelhouse/{PROFILE}/torch-2.13.0-cp311-none-linux_x86_64.whl has "
            f"{hashlib.sha256(WHEELS['torch-2.13.0-cp311-none-linux_x86_64.whl']).hexdigest()}") in rebuilt.stdout
    assert with_wheels.items()[TAR]["sha256"] == recorded
    assert not (with_wheels.bundle / TAR).exists(), "left for make wheelhouse to write again"


@pytest.mark.parametrize("tar_name", [TAR, "apt.tar"])
@pytest.mark.parametrize("member, kind, why", [
    ("./.x.whl", tarfile.REGTYPE, "a dot-file (hidden, yet read by the loaders)"),
    ("./evil.whl", tarfile.SYMTYPE, "a symbolic link"),
    ("./twin.whl", tarfile.LNKTYPE, "a hard link"),
    ("./dev.whl", tarfile.CHRTYPE, "a device file, FIFO or socket"),
])
def test_links_special_files_and_dot_files_inside_the_tars_are_refused(with_wheels, tar_name, member, kind, why):
    with tarfile.open(with_wheels.bundle / tar_name, "a" if tar_name == TAR else "w") as tar:
        info = tarfile.TarInfo(member)
        info.type = kind
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else "./six-1.16.0-py2.py3-none-any.whl"
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    result = with_wheels.build(wheelhouse=True)
    assert result.returncode == 1
    assert (f"{with_wheels.bundle}/{tar_name}: member {member[2:]} is {why}; fix: rerun make bundle "
            f"(it writes {tar_name} from plain files only)") in result.stdout.splitlines()
    assert "unsigned until the problems are fixed" in result.stdout


# --------------------------------------------------------------------------- serial (issue 21, item 7)


def test_each_new_manifest_gets_a_higher_serial_and_a_rerun_keeps_it(built):
    """Hosts refuse a bundle whose serial is below the last one they got: it must only go up."""
    first = built.manifest()["serial"]
    assert isinstance(first, int) and first >= 20250101000000
    assert built.build().returncode == 0
    assert built.manifest()["serial"] == first
    (built.bundle / "vendor/sophon-libsophon_0.5.1_amd64.deb").write_bytes(b"a newer deb")
    assert built.build("--accept-changes").returncode == 0
    assert built.manifest()["serial"] > first


def test_a_bundle_rebuilt_without_its_old_manifest_still_gets_a_higher_serial(built):
    """Another control node (or a fresh clone) has no old manifest to count from: the clock still moves it up."""
    first = built.manifest()["serial"]
    for rel in ("manifest.yml", "manifest.yml.asc"):
        (built.bundle / rel).unlink()
    time.sleep(1.1)
    assert built.build().returncode == 0
    assert built.manifest()["serial"] > first


def test_verify_refuses_a_signed_manifest_without_a_serial(built):
    """A bundle made before serials cannot be ordered against what hosts have, so it is refused, not waved through."""
    manifest = built.bundle / "manifest.yml"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(keepends=True) if not line.startswith("serial:")))
    sign = ["gpg", "--homedir", str(built.gnupghome), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*sign, "--yes", "--armor", "--local-user", built.fingerprint, "--detach-sign", "--output",
                    str(built.bundle / "manifest.yml.asc"), str(manifest)], check=True, capture_output=True)
    result = built.verify()
    assert result.returncode == 2
    assert f"{built.bundle}/manifest.yml has no serial (a bundle made before serials): rebuild it with make bundle" \
        in result.stderr


def test_verify_reports_the_sha256_and_serial_of_the_manifest_it_verified(built):
    """The preflight records these; the roles refuse to push unless the manifest they find has that sha256."""
    result = run("verify", "--bundle-dir", str(built.bundle), "--fingerprint", built.fingerprint, "--facts")
    assert result.returncode == 0, result.stdout + result.stderr
    facts = json.loads(result.stdout.splitlines()[-1])
    assert facts == {"sha256": sha256(built.bundle / "manifest.yml"), "serial": built.manifest()["serial"]}
    assert f", serial {facts['serial']} " in result.stdout
