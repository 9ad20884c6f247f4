#!/usr/bin/env python3
"""Build and verify bundle/: everything an air-gapped fleet needs, listed with sha256.

The control node that builds the bundle can reach PyPI (and maybe git and the Hugging Face
hub); the fleet and the control node that provisions it may reach nothing. The bundle is
the only thing carried between them, so every file in it is listed in bundle/manifest.yml
with where it came from and its sha256 (a tar's members each with theirs), the manifest is signed
with the operator's OpenPGP key (tools/sdkit_signing.py), and `verify` proves the copy is whole and
signed by the key the inventory names before any host changes (playbooks/preflight.yml runs it
first in site.yml). Only plain files are bundled: links, special files and dot-files are refused,
in bundle/ and inside its tars.

Layout (paths relative to bundle/):

  wheelhouse/<profile>/*.whl         each profile's wheels (`wheelhouse` below, run by make wheelhouse)
  wheelhouse-<profile>.tar           the same wheels as the one tar hosts of that profile get
  sources/<name>-<version>.tar.gz    the profiles' pinned libraries' PyPI sdists (same command)
  sources/<name>-<version>.git.tar.gz  `git archive` of the pinned tag, when git is reachable
  vendor/*                           Sophgo's files, dropped in by the user, never downloaded
  assets/<share folder>/...          the download share's folders, and assets/SHA256SUMS
  apt/*.deb, apt/Packages(.gz)       the kit's apt packages and all their dependencies, as a
  apt/Release, apt/InRelease         flat apt repository for hosts of this machine's release, signed
  manifest.yml, manifest.yml.asc     the list of everything above and its detached signature
  signing-key.asc                    the public half of the signing key

`build` fetches only what is missing. A file that no longer matches its manifest entry is
reported and fetched again where that is possible; its entry is never silently replaced
(--accept-changes records files as they are now, after a deliberate change).

A profile is one folder of profiles/ (profile.yml: python, torch, torch_tpu, libraries, ...;
constraints.txt: the closed dependency set). A bundle serves every profile it was built for (the
manifest's `profiles`), so host groups with different profiles share one bundle.

Usage: tools/sdkit_bundle.py key --gnupghome DIR
       tools/sdkit_bundle.py wheelhouse --profile tutorial-2023
       tools/sdkit_bundle.py build --gnupghome DIR --profile tutorial-2023 [tutorial-2023-cpu ...] [--assets-from DIR] [--no-apt]
       tools/sdkit_bundle.py verify --fingerprint FPR
       tools/sdkit_bundle.py sources --profile tutorial-2023-cpu
"""

from __future__ import annotations

import argparse
import ast
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
# The runners' stdlib-only helpers (sdkit_env, which needs torch, stays out of reach on purpose).
sys.path.insert(0, str(REPO / "runners"))
from sdkit_files import write_text_atomic  # noqa: E402
from sdkit_signing import FINGERPRINT, SigningError, create_key, export_public, normalize, sign, signer, signing_key  # noqa: E402

ROLES = REPO / "roles"
PROFILES = REPO / "profiles"
# The kit's Debian packages, which the roles install (make bundle puts them in bundle/apt).
APT_PACKAGES = REPO / "data" / "apt-packages.yml"
# Where a profile's torch_index name finds its URL (the one home of those URLs), and what comes from there.
TORCH_INDEXES = PROFILES / "torch-indexes.yml"
TORCH_PROJECTS = ("torch", "torchvision")
MANIFEST = "manifest.yml"
# The manifest's detached signature and the public half of the key that made it (tools/sdkit_signing.py).
SIGNATURE = "manifest.yml.asc"
PUBLIC_KEY = "signing-key.asc"
# The tars hosts get: the manifest records each member's sha256 as well as the tar's.
TARS = ("apt.tar",)
WHEELHOUSE_TAR = re.compile(r"wheelhouse-[^/]+\.tar")
# The platforms a fleet host's pip accepts (x86_64 Linux, glibc), newest first, for pip download.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64", "linux_x86_64")
KINDS = ("wheel", "source", "vendor", "asset", "deb", "apt-index", "signing-key")
CHUNK = 1 << 20


class BadInput(Exception):
    """Input the operator must fix before anything runs; printed as one line, exit code 2."""


@dataclass
class Entry:
    path: str
    kind: str
    name: str
    version: str
    sha256: str
    origin: str
    # A tar's members (name inside the tar -> sha256), so that a change inside it is named.
    members: Optional[Dict[str, str]] = None

    def item(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


# --------------------------------------------------------------------------- reading the kit


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def in_kit(path: Path) -> str:
    """PATH as messages name it: relative to the repository when inside it (profiles/x/profile.yml)."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def profile_names() -> List[str]:
    return sorted(path.parent.name for path in PROFILES.glob("*/profile.yml"))


def load_profile(name: str) -> dict:
    """profiles/NAME/profile.yml; an unknown name is the operator's to fix, with the names that exist."""
    path = PROFILES / name / "profile.yml"
    if not path.is_file():
        raise BadInput(f"no profile {name!r} (no {in_kit(path)}): the profiles are {', '.join(profile_names())}; "
                       "fix: pass one of them (make ... PROFILE=<name> or PROFILES='<name> ...')")
    try:
        profile = yaml.safe_load(path.read_text()) or {}
        for key in ("python", "torch", "libraries"):
            profile[key]  # noqa: B018 - present, or the KeyError below names it
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise BadInput(f"{in_kit(path)} is not a profile ({exc}): fix it as profiles/tutorial-2023/profile.yml is written") from None
    return profile


def wheelhouse_tar(profile: str) -> str:
    return f"wheelhouse-{profile}.tar"


def share_folders() -> Tuple[List[str], Dict[str, Tuple[str, str]]]:
    """The download share's folders (as the assets role stages them) and, for those the hub has,
    (repo id, repo type) as the runners map them.

    runners/sdkit_env.py is read rather than imported: it imports torch, which the control
    node's .venv does not have.
    """
    folders = list(role_defaults("sophon_assets")["sophon_assets_items"])
    tree = ast.parse((REPO / "runners" / "sdkit_env.py").read_text())
    constants: Dict[str, ast.expr] = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }

    def value(node: ast.expr):
        return ast.literal_eval(constants[node.id] if isinstance(node, ast.Name) else node)

    hub_to_share = constants["HUB_TO_BUNDLE"]
    assert isinstance(hub_to_share, ast.Dict)
    dataset_folder = value(constants["BUNDLE_DATASET_DIR"])
    hub = {}
    for key, folder_node in zip(hub_to_share.keys, hub_to_share.values):
        folder = value(folder_node)
        hub[folder] = (value(key), "dataset" if folder == dataset_folder else "model")
    return folders, hub


def apt_packages(with_driver: bool) -> List[str]:
    """The kit's Debian packages: every list of data/apt-packages.yml, the one the roles read theirs from
    (the `*driver*` lists only with the driver). The driver's kernel headers depend on the host's kernel:
    not bundled from here."""
    lists = yaml.safe_load(APT_PACKAGES.read_text()) or {}
    names = [name for key, value in lists.items() if with_driver or "driver" not in key for name in value]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- files and manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def own_file(rel: str) -> bool:
    """Files the kit's tools keep in bundle/ and never list: the manifest and its signature, Make's
    wheelhouse stamps (.wheelhouse-<profile>), apt's lock and partial downloads while it runs."""
    return rel in (MANIFEST, SIGNATURE, "apt/lock", "apt/partial") or rel.startswith("apt/partial/") \
        or re.fullmatch(r"\.wheelhouse-[^/]+", rel) is not None


def refusal(name: str, mode: int, links: int) -> str:
    """Why a bundle file (or tar member) named NAME is refused ('' when it is a plain file or folder).
    Links and special files would make hosts read something the manifest does not list; dot-files
    are hidden from ls yet read by loaders (a dataset folder's .x.parquet is trained on)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode) and links > 1:
        return "a hard link"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "a device file, FIFO or socket"
    if name.startswith("."):
        return "a dot-file (hidden, yet read by the loaders)"
    return ""


def scan(bundle: Path) -> Tuple[List[str], List[str]]:
    """Every plain file of the bundle, relative, and a one-line message for each path refused."""
    files, refused = [], []
    for root, folders, names in os.walk(bundle):
        for name in sorted(folders + names):
            path = Path(root) / name
            rel = path.relative_to(bundle).as_posix()
            if own_file(rel):
                if name in folders:
                    folders.remove(name)
                continue
            info = path.lstat()
            why = refusal(name, info.st_mode, info.st_nlink)
            if why:
                refused.append(f"{shown(bundle)}/{rel}: {why}; fix: remove it (the bundle holds plain files only)")
                if name in folders:
                    folders.remove(name)
            elif stat.S_ISREG(info.st_mode):
                files.append(rel)
    return sorted(files), refused


def bundle_files(bundle: Path) -> List[str]:
    """Every plain file of the bundle that may be listed (the refused ones are not)."""
    return scan(bundle)[0]


def tar_members(bundle: Path, rel: str) -> Tuple[Dict[str, str], List[str]]:
    """The sha256 of each file in bundle/REL (a tar) and a one-line message for each member refused."""
    members: Dict[str, str] = {}
    refused = []
    try:
        with tarfile.open(bundle / rel) as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in ("", "."):
                    continue
                mode = (stat.S_IFLNK if member.issym() else stat.S_IFDIR if member.isdir() else
                        stat.S_IFREG if member.isfile() or member.islnk() else stat.S_IFCHR)
                why = "a hard link" if member.islnk() else refusal(name.rstrip("/").rsplit("/", 1)[-1], mode, 1)
                if not why and any(part.startswith(".") or part == ".." for part in name.split("/")):
                    why = "under a dot-folder"
                if why:
                    refused.append(f"{shown(bundle)}/{rel}: member {name} is {why}; fix: rerun make bundle (it writes "
                                   f"{rel} from plain files only)")
                elif member.isfile():
                    digest = hashlib.sha256()
                    handle = tar.extractfile(member)
                    assert handle is not None
                    while chunk := handle.read(CHUNK):
                        digest.update(chunk)
                    members[name] = digest.hexdigest()
    except (tarfile.TarError, OSError) as exc:
        refused.append(f"{shown(bundle)}/{rel}: not a readable tar ({exc}); fix: rerun make bundle")
    return members, refused


def files_under(bundle: Path, folder: str) -> List[str]:
    return [rel for rel in bundle_files(bundle) if rel.startswith(folder + "/")]


def load_manifest(bundle: Path, text: Optional[bytes] = None) -> Tuple[dict, Dict[str, Entry]]:
    """The manifest's header and entries: of TEXT when given (the bytes whose signature was checked), else of the file."""
    path = bundle / MANIFEST
    if text is None and not path.exists():
        return {}, {}
    try:
        data = yaml.safe_load(path.read_bytes() if text is None else text) or {}
        entries = {item["path"]: Entry(**{k: str(item[k]) for k in Entry.__dataclass_fields__ if k != "members"},
                                       members=({str(k): str(v) for k, v in item["members"].items()}
                                                if item.get("members") is not None else None))
                   for item in data.get("items") or []}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{path} is not a manifest this tool wrote ({exc}): move it away and run make bundle") from None
    return {k: v for k, v in data.items() if k != "items"}, entries


def serial_of(header: dict) -> int:
    """The manifest's serial, 0 when it has none (a bundle made before serials) or not a positive integer."""
    serial = header.get("serial")
    return serial if isinstance(serial, int) and not isinstance(serial, bool) and serial > 0 else 0


def next_serial(old_header: dict, now: datetime.datetime) -> int:
    """Above the previous manifest's serial, and above every serial made before NOW on any control node:
    hosts refuse a bundle older than the last one they got, also when this one was built where the old
    manifest never was (a second control node, a fresh clone)."""
    return max(serial_of(old_header) + 1, int(now.strftime("%Y%m%d%H%M%S")))


def write_manifest(bundle: Path, header: dict, entries: Dict[str, Entry]) -> bool:
    """Write the manifest when its content changed (a rerun that changes nothing keeps the file and its
    serial); a new manifest gets the next serial."""
    old_header, old_entries = load_manifest(bundle)
    items = [entries[path].item() for path in sorted(entries)]
    same_header = {k: v for k, v in old_header.items() if k not in ("created", "serial")} == header
    if same_header and serial_of(old_header) and [old_entries[p].item() for p in sorted(old_entries)] == items:
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    document = {"created": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "serial": next_serial(old_header, now), **header, "items": items}
    text = "# Every file of this bundle: written by `make bundle`, checked by `make bundle-verify`.\n"
    text += yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=4096)
    write_text_atomic(bundle / MANIFEST, text)
    return True


def shown(bundle: Path) -> str:
    """The bundle as messages name it: relative to the current folder when inside it."""
    try:
        return str(bundle.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(bundle)


def fix_for(rel: str, kind: str) -> str:
    if kind == "vendor" or rel.startswith("vendor/"):
        return "drop Sophgo's file again into bundle/vendor/ (or rerun make bundle BUNDLE_ARGS=--accept-changes if you replaced it on purpose)"
    if kind == "asset" or rel.startswith("assets/"):
        return "copy it again from the download share (make bundle ASSETS_FROM=<copy of the share>) or rerun make bundle"
    return "rerun make bundle"


def parse_name_version(filename: str) -> Tuple[str, str]:
    """Name and version from a wheel, deb or sdist file name ('' when it follows none)."""
    patterns = (r"([^-]+)-([^-]+)-.+\.whl", r"([^_]+)_([^_]+)_[^_]+\.deb", r"(.+)-(\d[^-]*?)(?:\.git)?\.tar\.gz")
    for pattern in patterns:
        match = re.fullmatch(pattern, filename)
        if match:
            return match.group(1), urllib.parse.unquote(match.group(2))  # a deb's epoch is written %3a
    return filename, ""


# --------------------------------------------------------------------------- build


class Builder:
    """Collects the bundle's entries: each file is checked against the old manifest and fetched
    only when it is missing or no longer matches."""

    def __init__(self, args: argparse.Namespace, old_entries: Dict[str, Entry]) -> None:
        self.args = args
        self.bundle: Path = args.bundle_dir
        self.old = old_entries
        self.entries: Dict[str, Entry] = {}
        self.problems: List[str] = []
        self.missing: List[dict] = []
        self.fetched: List[str] = []
        self._digests: Dict[str, str] = {}
        self._hub: Optional[Tuple[bool, str]] = None
        self.shown = shown(self.bundle)
        # The key that signs the manifest and the apt repository's InRelease (make bundle-key made it).
        self.fingerprint = signing_key(args.gnupghome)

    def say(self, message: str) -> None:
        print(message, flush=True)

    def problem(self, rel: str, what: str, fix: str) -> None:
        self.problems.append(f"{self.shown}/{rel}: {what}; fix: {fix}")

    def digest(self, rel: str) -> str:
        if rel not in self._digests:
            self._digests[rel] = sha256_of(self.bundle / rel)
        return self._digests[rel]

    def intact(self, rel: str) -> bool:
        """Whether bundle/REL exists and matches its manifest entry."""
        old = self.old.get(rel)
        return old is not None and (self.bundle / rel).is_file() and self.digest(rel) == old.sha256

    def old_origin(self, rel: str, otherwise: str) -> str:
        return self.old[rel].origin if rel in self.old else otherwise

    def take(self, rel: str, kind: str, name: str, version: str, origin: str,
             fetch: Optional[Callable[[Path], None]] = None, fix: str = "") -> bool:
        """Record bundle/REL, fetching it with FETCH when it is absent or differs from its manifest
        entry. Returns whether it is in the bundle and recorded now."""
        path = self.bundle / rel
        old = self.old.get(rel)
        fix = fix or fix_for(rel, kind)
        if path.is_file():
            if old is None or self.digest(rel) == old.sha256:
                self.entries[rel] = Entry(rel, kind, name, version, self.digest(rel), origin)
                return True
            self.say(f"{self.shown}/{rel}: sha256 {self.digest(rel)} differs from the manifest's {old.sha256}")
            if fetch is None or self.args.accept_changes:
                return self._changed(old, Entry(rel, kind, name, version, self.digest(rel), origin), fix)
            path.unlink()
        elif fetch is None:
            if old is not None and not self.args.accept_changes:
                self.entries[rel] = old
                self.problem(rel, "listed in the manifest but missing", fix)
            return False
        self._digests.pop(rel, None)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fetch(path)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            if old is not None:
                self.entries[rel] = old
            self.problem(rel, " ".join(str(exc).split()), fix)
            return False
        self.fetched.append(rel)
        self.say(f"fetched {self.shown}/{rel} ({origin})")
        new = Entry(rel, kind, name, version, self.digest(rel), origin)
        if old is not None and new.sha256 != old.sha256:
            return self._changed(old, new, "check the source, then rerun make bundle BUNDLE_ARGS=--accept-changes to record it")
        self.entries[rel] = new
        return True

    def _changed(self, old: Entry, new: Entry, fix: str) -> bool:
        if self.args.accept_changes:
            self.say(f"{self.shown}/{new.path}: recorded as it is now (--accept-changes); it was {old.sha256}")
            self.entries[new.path] = new
            return True
        self.entries[new.path] = old
        self.problem(new.path, f"sha256 {new.sha256} differs from the manifest's {old.sha256}", fix)
        return False

    # ------------------------------------------------------------------ wheelhouse

    def refetch_by_wheelhouse_rule(self, path: Path) -> None:
        """Wheels and sdists come from the Makefile's wheelhouse rule: a bad or missing copy is
        removed together with the rule's stamp so that the next `make bundle` downloads it again."""
        path.unlink(missing_ok=True)
        for stamp in self.bundle.glob(".wheelhouse-*"):
            stamp.unlink()
        raise RuntimeError("missing or changed: removed it and the wheelhouse stamp, so that the wheelhouse rule downloads it again")

    def wheelhouse(self) -> None:
        """Each profile's wheels (wheelhouse/<profile>/) and its tar; a wheel or tar of a profile this build
        is not for is a problem, so that a host never gets a wheelhouse nobody asked for."""
        profiles = self.args.profile
        wanted = tuple(f"wheelhouse/{profile}/" for profile in profiles)
        present = files_under(self.bundle, "wheelhouse") + [rel for rel in bundle_files(self.bundle) if WHEELHOUSE_TAR.fullmatch(rel)]
        for rel in sorted(present):
            if not rel.startswith(wanted) and rel not in [wheelhouse_tar(profile) for profile in profiles]:
                self.problem(rel, f"is not for the profiles this bundle is built for ({' '.join(profiles)})",
                             f"remove it, or add its profile (make bundle PROFILES='{' '.join(profiles)} <profile>')")
        for profile in profiles:
            folder = f"wheelhouse/{profile}"
            wheels = files_under(self.bundle, folder)
            listed = [rel for rel in self.old if rel.startswith(folder + "/")]
            if not wheels and not listed:
                if not self.args.no_wheelhouse:
                    self.problem(folder + "/", "has no wheels", f"run make bundle PROFILES='{' '.join(profiles)}' (or pass --no-wheelhouse)")
                continue
            for rel in sorted(set(wheels) | set(listed)):
                self.take(rel, "wheel", *parse_name_version(Path(rel).name), "pypi", self.refetch_by_wheelhouse_rule,
                          fix="rerun make bundle")
            self.wheelhouse_tar(profile, sorted(rel for rel in wheels if rel in self.entries))

    def wheelhouse_tar(self, profile: str, wheels: List[str]) -> None:
        """wheelhouse-<profile>.tar, what the venv role pushes to that profile's hosts. The wheelhouse command
        writes it anew whenever it runs, so a new checksum is recorded (and said) when each member has the
        sha256 of its wheel listed above. A member that differs (at the same size too) is named, and the
        tar is removed for the command to write again."""
        rel, folder = wheelhouse_tar(profile), f"wheelhouse/{profile}"
        path = self.bundle / rel
        origin = f"tar of {folder}/ (by make wheelhouse)"
        if not path.is_file():
            self.take(rel, "wheel", "wheelhouse", profile, origin, self.refetch_by_wheelhouse_rule, "rerun make bundle")
            return
        old = self.old.get(rel)
        members = self.tar_members(rel)
        if members is None:
            return
        expected = {Path(wheel).name: self.entries[wheel].sha256 for wheel in wheels}
        differences = [f"member {name} has sha256 {members[name]}, {folder}/{name} has {expected[name]}"
                       for name in sorted(set(members) & set(expected)) if members[name] != expected[name]]
        differences += [f"member {name} is not in {folder}/" for name in sorted(set(members) - set(expected))]
        differences += [f"lacks {folder}/{name}" for name in sorted(set(expected) - set(members))]
        if differences:
            if old is not None:
                self.entries[rel] = old
            for what in differences:
                self.problem(rel, what, f"rerun make bundle (make wheelhouse writes the tar again from {folder}/)")
            try:
                self.refetch_by_wheelhouse_rule(path)
            except RuntimeError:
                pass
            return
        if old is not None and not self.intact(rel):
            self.say(f"{self.shown}/{rel}: written again by make wheelhouse and holds exactly the {len(wheels)} wheels: recorded")
        self.entries[rel] = Entry(rel, "wheel", "wheelhouse", profile, self.digest(rel), origin, members)

    def tar_members(self, rel: str) -> Optional[Dict[str, str]]:
        """The sha256 of each member of the tar bundle/REL (from the manifest while the tar is intact);
        None, with a problem for each, when it has members the bundle refuses."""
        old = self.old.get(rel)
        if old is not None and old.members is not None and self.intact(rel):
            return old.members
        members, refused = tar_members(self.bundle, rel)
        self.problems += refused
        return None if refused else members

    def tars(self) -> None:
        """Each recorded tar's members, where the step that recorded it did not list them."""
        for rel in [*TARS, *(rel for rel in self.entries if WHEELHOUSE_TAR.fullmatch(rel))]:
            entry = self.entries.get(rel)
            if entry is not None and entry.members is None and (self.bundle / rel).is_file():
                entry.members = self.tar_members(rel)

    # ------------------------------------------------------------------ signing

    def public_key(self) -> None:
        """signing-key.asc: the public half of the signing key, what verification (and each host's apt)
        imports. Never trusted by itself: verification also checks the key's fingerprint."""
        data = export_public(self.args.gnupghome, self.fingerprint)
        path = self.bundle / PUBLIC_KEY
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            self._digests.pop(PUBLIC_KEY, None)
            self.say(f"wrote {self.shown}/{PUBLIC_KEY} (key {self.fingerprint})")
        self.entries[PUBLIC_KEY] = Entry(PUBLIC_KEY, "signing-key", "signing-key", self.fingerprint, self.digest(PUBLIC_KEY),
                                         "gpg --export of the key in the operator's BUNDLE_GNUPGHOME")

    def signed_by_us(self, signature: str, data: Optional[str] = None) -> bool:
        path = self.bundle / signature
        return path.is_file() and signer(self.bundle / PUBLIC_KEY, path, self.bundle / data if data else None) == self.fingerprint

    def sign_manifest(self, written: bool) -> bool:
        """manifest.yml.asc, made again when the manifest changed or the signature is not the key's.
        A bundle with problems is left unsigned: verification then refuses it."""
        path = self.bundle / SIGNATURE
        if self.problems:
            if written:
                path.unlink(missing_ok=True)
            return False
        if not written and self.signed_by_us(SIGNATURE, MANIFEST):
            return False
        write_text_atomic(path, sign(self.args.gnupghome, self.fingerprint, (self.bundle / MANIFEST).read_bytes()).decode())
        return True

    # ------------------------------------------------------------------ sources

    def libraries(self) -> List[dict]:
        """The union of the profiles' libraries (one sdist per name and version), or --libraries'."""
        if self.args.libraries is None:
            union: Dict[Tuple[str, str], dict] = {}
            for profile in self.args.profile:
                for library in load_profile(profile)["libraries"]:
                    union.setdefault((str(library["name"]), str(library["version"])), library)
            return list(union.values())
        try:
            return list(yaml.safe_load(self.args.libraries.read_text())["sophon_upstream_libraries"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise BadInput(f"--libraries {self.args.libraries}: cannot read sophon_upstream_libraries from it ({exc})") from None

    def git(self, *argv: str, timeout: Optional[float] = 600, input_bytes: Optional[bytes] = None) -> str:
        """Run git without ever prompting; a failure raises RuntimeError with git's own last line."""
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        result = subprocess.run(["git", *argv], capture_output=True, timeout=timeout, env=env, input=input_bytes)
        if result.returncode != 0:
            last = (result.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"git {argv[0]} failed (exit {result.returncode}): {last}")
        return result.stdout.decode().strip()

    def git_unreachable(self, url: str, tag: str) -> str:
        """'' when URL answers within --git-timeout and has TAG; otherwise why not, short."""
        try:
            self.git("ls-remote", "--exit-code", url, f"refs/tags/{tag}", timeout=self.args.git_timeout)
        except subprocess.TimeoutExpired:
            self.say(f"git: no answer from {url} within {self.args.git_timeout:g}s")
            return "git unreachable"
        except RuntimeError as exc:
            self.say(f"git: {url}: {exc}")
            return f"git has no tag {tag}" if "(exit 2)" in str(exc) else "git unreachable"
        return ""

    def archive_commit(self, path: Path) -> str:
        """The commit a `git archive` tarball was made from (git stores it in the tar header)."""
        with gzip.open(path) as archive:
            head = archive.read(10240)
        return self.git("get-tar-commit-id", input_bytes=head)

    def git_archive(self, url: str, library: dict) -> Callable[[Path], None]:
        def fetch(dest: Path) -> None:
            with tempfile.TemporaryDirectory(prefix="sdkit-bundle-") as work:
                self.git("clone", "--quiet", "--depth", "1", "--branch", str(library["tag"]), url, work)
                partial = dest.with_name(f".{dest.name}.partial")
                # The sdist's layout (<name>-<version>/...), so both archives unpack the same way.
                self.git("-C", work, "archive", "--format=tar.gz", f"--prefix={library['name']}-{library['version']}/",
                         "-o", str(partial), "HEAD")
                partial.replace(dest)
        return fetch

    def sources(self) -> None:
        """The three libraries: `git archive` of the pinned tag when git is reachable, and always
        the PyPI sdists (the wheelhouse rule downloads them). The upstream role's bundle mode unpacks
        the git archive where the manifest lists one, and the sdist otherwise."""
        for library in self.libraries():
            name, version, tag = str(library["name"]), str(library["version"]), str(library["tag"])
            pinned_commit, pinned_sha = str(library.get("commit") or ""), str(library.get("sha256") or "")
            url = f"{self.args.git_base_url.rstrip('/')}/{name}.git"
            archive, sdist = f"sources/{name}-{version}.git.tar.gz", f"sources/{name}-{version}.tar.gz"
            # An archive fetched before is verified against the manifest; git is asked only without one.
            unreachable = "" if archive in self.old or (self.bundle / archive).is_file() else self.git_unreachable(url, tag)
            if not unreachable and self.take(archive, "source", name, version, f"git {url}", self.git_archive(url, library)):
                commit = self.archive_commit(self.bundle / archive)
                self.entries[archive].origin = f"git {url} {commit}"
                if pinned_commit and commit != pinned_commit:
                    del self.entries[archive]
                    (self.bundle / archive).unlink()
                    self.problem(archive, f"made from commit {commit} of tag {tag}, the pin says {pinned_commit} "
                                 "(the tag moved or the mirror differs): removed",
                                 "check the mirror (--git-base-url) or the pin, and rerun make bundle")
            origin = "pypi sdist" if archive in self.entries else f"pypi sdist ({unreachable or 'git archive failed'})"
            if self.take(sdist, "source", name, version, origin, self.refetch_by_wheelhouse_rule, "rerun make bundle"):
                if pinned_sha and self.entries[sdist].sha256 != pinned_sha:
                    self.problem(sdist, f"sha256 differs from the pin {pinned_sha} in sophon_upstream_libraries",
                                 "delete it, rm bundle/.wheelhouse-*, and rerun make bundle")

    # ------------------------------------------------------------------ vendor files

    def vendor(self) -> None:
        listed = {rel for rel in self.old if rel.startswith("vendor/")}
        for rel in sorted(set(files_under(self.bundle, "vendor")) | listed):
            self.take(rel, "vendor", *parse_name_version(Path(rel).name), "vendor: dropped in by the user")

    # ------------------------------------------------------------------ assets

    def hub_ready(self) -> Tuple[bool, str]:
        """Whether the hub can be used: huggingface_hub importable, not offline, its endpoint answering."""
        if self._hub is None:
            try:
                from huggingface_hub import constants
            except ImportError:
                self._hub = (False, "huggingface_hub is not installed: .venv/bin/pip install huggingface_hub")
            else:
                if constants.HF_HUB_OFFLINE:
                    self._hub = (False, "HF_HUB_OFFLINE is set")
                else:
                    try:
                        urllib.request.urlopen(constants.ENDPOINT, timeout=self.args.hub_timeout).close()
                        self._hub = (True, "")
                    except urllib.error.HTTPError:
                        self._hub = (True, "")  # it answered
                    except (OSError, ValueError) as exc:
                        self._hub = (False, f"the hub is unreachable: {exc}")
        return self._hub

    def hub_files(self, repo_id: str, repo_type: str) -> List[str]:
        from huggingface_hub import HfApi
        # The share holds the diffusers folders, not the original single-file checkpoints (GBs each).
        return [name for name in HfApi().list_repo_files(repo_id, repo_type=repo_type)
                if not name.endswith(".ckpt") and not name.startswith(".")]

    def hub_fetch(self, repo_id: str, repo_type: str, filename: str) -> Callable[[Path], None]:
        def fetch(dest: Path) -> None:
            from huggingface_hub import hf_hub_download
            shutil.copyfile(hf_hub_download(repo_id, filename, repo_type=repo_type), dest)
        return fetch

    def assets(self) -> None:
        """The share's folders, and anything else the user put in bundle/assets/."""
        wanted, hub = share_folders()
        known = {rel for rel in bundle_files(self.bundle) + list(self.old) if rel.startswith("assets/") and rel.count("/") >= 2}
        for folder in dict.fromkeys(wanted + sorted({rel.split("/")[1] for rel in known})):
            prefix = f"assets/{folder}/"
            why = self.asset_folder(folder, {rel[len(prefix):] for rel in known if rel.startswith(prefix)}, hub.get(folder))
            if folder in wanted and not any(rel.startswith(prefix) for rel in self.entries):
                fix = f"make bundle ASSETS_FROM=<copy of Sophgo's download share> (or copy its {folder}/ into bundle/assets/)"
                if folder in hub:
                    fix += f", or make bundle where hub {hub[folder][0]} is reachable ({why})"
                self.missing.append({"name": f"assets/{folder}", "fix": fix})
                self.say(f"missing: {self.shown}/assets/{folder}/: {fix}")
        self.assets_sums()

    def asset_folder(self, folder: str, names: set, hub_repo: Optional[Tuple[str, str]]) -> str:
        """Record one folder: copied from --assets-from, else from the hub when a file is missing and
        the hub is usable, else as bundle/assets/ holds it. Returns why the hub was not used."""
        prefix = f"assets/{folder}/"
        local = self.args.assets_from / folder if self.args.assets_from else None
        copies = {path.relative_to(local).as_posix(): path for path in local.rglob("*") if path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(local).parts)} if local else {}
        if copies:
            for name in sorted(names | set(copies)):
                if name in copies:
                    self.take(prefix + name, "asset", folder, "", f"local copy {local}",
                              lambda dest, src=copies[name]: shutil.copyfile(src, dest))
                else:
                    self.take(prefix + name, "asset", folder, "", self.old_origin(prefix + name, "local copy bundle/assets"))
            return ""
        why = ""
        if hub_repo and (not names or not all(self.intact(prefix + name) for name in names)):
            ready, why = self.hub_ready()
            if ready:
                try:
                    names = names | set(self.hub_files(*hub_repo))
                except Exception as exc:  # the hub library's own errors: the folder counts as missing
                    why = f"listing {hub_repo[0]} on the hub failed: {exc}"
                else:
                    for name in sorted(names):
                        self.take(prefix + name, "asset", folder, "", f"hub {hub_repo[0]}", self.hub_fetch(*hub_repo, name))
                    return ""
        for name in sorted(names):
            self.take(prefix + name, "asset", folder, "", self.old_origin(prefix + name, "local copy bundle/assets"))
        return why

    def assets_sums(self) -> None:
        """assets/SHA256SUMS, what the assets role checks: the lines `make assets-sums` writes,
        from the checksums just verified."""
        sums = sorted((rel[len("assets/"):], e.sha256) for rel, e in self.entries.items() if rel.startswith("assets/") and rel.count("/") >= 2)
        if not sums:
            return
        rel, path = "assets/SHA256SUMS", self.bundle / "assets" / "SHA256SUMS"
        text = "".join(f"{digest}  {name}\n" for name, digest in sums)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            self._digests.pop(rel, None)
            self.say(f"wrote {self.shown}/{rel} ({len(sums)} files)")
        self.entries[rel] = Entry(rel, "asset", "SHA256SUMS", "", self.digest(rel), "checksums of assets/ (as make assets-sums writes them)")

    # ------------------------------------------------------------------ apt repository

    def apt(self, old_header: dict) -> dict:
        """A flat apt repository of the kit's packages and everything they depend on, resolved as for
        a host with nothing installed, for hosts of this machine's release and architecture."""
        listed = sorted(rel for rel in self.old if rel.startswith("apt/") and rel.endswith(".deb"))
        if self.args.no_apt:
            on_disk = files_under(self.bundle, "apt") + (["apt.tar"] if (self.bundle / "apt.tar").is_file() else [])
            for rel in sorted({rel for rel in self.old if rel.startswith("apt")} | set(on_disk)):
                if rel in self.old:
                    self.take(rel, self.old[rel].kind, self.old[rel].name, self.old[rel].version, self.old[rel].origin)
                else:
                    kind = "deb" if rel.endswith(".deb") else "apt-index"
                    name, version = parse_name_version(Path(rel).name) if kind == "deb" else (Path(rel).name, "")
                    self.take(rel, kind, name, version, "local copy bundle/apt")
            return old_header.get("apt") or {}
        for tool, package in (("apt-get", "apt"), ("dpkg-scanpackages", "dpkg-dev")):
            if shutil.which(tool) is None:
                raise BadInput(f"{tool} not found: the apt repository is built on a Debian/Ubuntu control node of the hosts' "
                               f"release, with `apt-get install {package}`; or pass --no-apt (make bundle BUNDLE_ARGS=--no-apt)")
        os_release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        codename = os_release.get("VERSION_CODENAME", "").strip('"')
        architecture = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()
        header = {"codename": codename, "architecture": architecture, "packages": apt_packages(self.args.with_driver)}
        origin = f"debian {codename} via apt"
        # The same request with every .deb intact needs no apt-get: reruns stay offline and quick.
        download = old_header.get("apt") != header or not listed or not all(self.intact(rel) for rel in listed)
        if download:
            for rel in listed:
                if (self.bundle / rel).is_file() and not self.intact(rel):
                    (self.bundle / rel).unlink()
                    self._digests.pop(rel, None)
            self.download_debs(header["packages"])
        for rel in sorted(set(listed) | {r for r in files_under(self.bundle, "apt") if r.endswith(".deb")}):
            self.take(rel, "deb", *parse_name_version(Path(rel).name), self.old_origin(rel, origin))
        stale = self.apt_index(stale=download, origin=f"dpkg-scanpackages of the .debs ({origin})")
        stale = self.apt_release(header) or stale
        self.apt_archive(header, stale)
        return header

    def download_debs(self, packages: List[str]) -> None:
        apt_dir = self.bundle / "apt"
        (apt_dir / "partial").mkdir(parents=True, exist_ok=True)
        before = set(files_under(self.bundle, "apt"))
        with tempfile.NamedTemporaryFile(prefix="sdkit-empty-status-") as empty_status:
            # An empty dpkg status makes apt resolve every dependency, as for a minimal host; with the
            # package caches switched off, this machine's apt state is left as it was. Recommends are
            # kept: the roles' apt tasks install them, so a host gets the same packages either way.
            command = ["apt-get", "install", "--download-only", "--yes",
                       "-o", f"Dir::State::status={empty_status.name}", "-o", f"Dir::Cache::archives={apt_dir.resolve()}",
                       "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", *packages]
            self.say(f"apt-get install --download-only {' '.join(packages)}, with every dependency")
            result = subprocess.run(command, capture_output=True, text=True)
        shutil.rmtree(apt_dir / "partial", ignore_errors=True)
        (apt_dir / "lock").unlink(missing_ok=True)
        if result.returncode != 0:
            tail = " ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise BadInput(f"apt-get could not download the packages ({tail}); run `apt-get update` and rerun, or pass --no-apt")
        self.fetched += sorted(set(files_under(self.bundle, "apt")) - before)

    def apt_index(self, stale: bool, origin: str) -> bool:
        """apt/Packages and Packages.gz, the index that apt/InRelease signs. Returns whether they were written."""
        apt_dir = self.bundle / "apt"
        names = ("Packages", "Packages.gz")
        written = False
        if stale or not all(self.intact(f"apt/{name}") for name in names):
            scan = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=apt_dir, capture_output=True, text=True, check=True)
            if not all((apt_dir / name).is_file() for name in names) or (apt_dir / "Packages").read_text() != scan.stdout:
                (apt_dir / "Packages").write_text(scan.stdout)
                (apt_dir / "Packages.gz").write_bytes(gzip.compress(scan.stdout.encode(), mtime=0))
                self.say(f"wrote {self.shown}/apt/Packages ({scan.stdout.count('Package: ')} packages)")
                written = True
            for name in names:
                self._digests.pop(f"apt/{name}", None)
        for name in names:
            rel = f"apt/{name}"
            self.entries[rel] = Entry(rel, "apt-index", name, "", self.digest(rel), origin)
        return written

    def apt_release(self, header: dict) -> bool:
        """apt/Release and apt/InRelease (the same, clearsigned with the bundle's key): the sha256 of the
        index, which pins every .deb's, so hosts check the repository with Signed-By instead of trusting
        it. Written again when the index changed or the signature is not the key's; returns whether it was."""
        lines = ["Origin: sophon-sd-kit", "Label: sophon-sd-kit bundle", f"Architectures: {header['architecture']}",
                 "SHA256:"]
        for name in ("Packages", "Packages.gz"):
            lines.append(f" {self.digest(f'apt/{name}')} {(self.bundle / 'apt' / name).stat().st_size} {name}")
        body = "\n".join(lines) + "\n"
        release, in_release = self.bundle / "apt" / "Release", "apt/InRelease"
        current = release.read_text() if release.is_file() else ""
        written = re.sub(r"^Date: .*\n", "", current, flags=re.MULTILINE) != body or not self.signed_by_us(in_release)
        if written:
            # The date only says when it was built: hosts do not check it (Check-Date: no in the role's
            # source), since an air-gapped host's clock may lag the control node's.
            date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")
            text = body.replace("SHA256:", f"Date: {date}\nSHA256:", 1)
            release.write_text(text)
            (self.bundle / in_release).write_bytes(sign(self.args.gnupghome, self.fingerprint, text.encode(), clearsign=True))
            for rel in ("apt/Release", in_release):
                self._digests.pop(rel, None)
            self.say(f"wrote {self.shown}/{in_release} (signed by {self.fingerprint})")
        for rel in ("apt/Release", in_release):
            self.entries[rel] = Entry(rel, "apt-index", Path(rel).name, "", self.digest(rel),
                                      "the index's sha256, signed with the bundle's key")
        return written

    def apt_archive(self, header: dict, stale: bool) -> None:
        """apt/release.yml (the release the sophon_apt role checks each host against) and apt.tar,
        the repository as the one archive that role pushes. The tar is byte-for-byte the same for
        the same files (sorted, no owners or dates), so a rerun leaves its checksum alone."""
        release = self.bundle / "apt" / "release.yml"
        text = yaml.safe_dump({"codename": header["codename"], "architecture": header["architecture"]}, sort_keys=False)
        if not release.is_file() or release.read_text() != text:
            release.write_text(text)
            self._digests.pop("apt/release.yml", None)
            stale = True
        self.entries["apt/release.yml"] = Entry("apt/release.yml", "apt-index", "release.yml", "", self.digest("apt/release.yml"),
                                                "the release and architecture the .debs were resolved for")
        members = files_under(self.bundle, "apt")
        if stale or not self.intact("apt.tar"):
            partial = self.bundle / ".apt.tar.partial"
            with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
                for rel in members:
                    info = tar.gettarinfo(self.bundle / rel, arcname=rel[len("apt/"):])
                    info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                    with open(self.bundle / rel, "rb") as handle:
                        tar.addfile(info, handle)
            partial.replace(self.bundle / "apt.tar")
            self._digests.pop("apt.tar", None)
            self.say(f"wrote {self.shown}/apt.tar ({len(members)} files)")
        self.entries["apt.tar"] = Entry("apt.tar", "apt-index", "apt.tar", header["codename"], self.digest("apt.tar"),
                                        "tar of apt/ (pushed by the sophon_apt role)", self.tar_members("apt.tar"))


def build(args: argparse.Namespace) -> int:
    bundle: Path = args.bundle_dir
    if args.assets_from is not None and not args.assets_from.is_dir():
        raise BadInput(f"--assets-from {args.assets_from} is not a folder: give a copy of Sophgo's download share "
                       "(CompVis_SD14_pretrained_weights/, dataset/, ...)")
    bundle.mkdir(parents=True, exist_ok=True)
    old_header, old_entries = load_manifest(bundle)
    builder = Builder(args, old_entries)
    builder.public_key()
    builder.wheelhouse()
    builder.sources()
    builder.vendor()
    builder.assets()
    apt_header = builder.apt(old_header)
    builder.tars()
    builder.problems += scan(bundle)[1]
    header = {
        # What each profile's hosts get: verified by playbooks/preflight.yml against each host's sophon_sd_profile.
        "profiles": {name: {"python": str(profile["python"]), "torch": str(profile["torch"]),
                            "torch_tpu": str(profile.get("torch_tpu") or ""),
                            "wheelhouse": wheelhouse_tar(name) if wheelhouse_tar(name) in builder.entries else ""}
                     for name, profile in ((name, load_profile(name)) for name in args.profile)},
        "platform": "linux x86_64 (manylinux wheels)",
        "apt": apt_header,
        "missing": builder.missing,
    }
    written = write_manifest(bundle, header, builder.entries)
    signed = builder.sign_manifest(written)
    size = sum((bundle / rel).stat().st_size for rel in builder.entries if (bundle / rel).is_file())
    for line in builder.problems:
        print(line)
    print(f"bundle {bundle}: {len(builder.entries)} files, {size / 2**20:.0f} MiB, fetched {len(builder.fetched)}, "
          f"missing {len(builder.missing)}, problems {len(builder.problems)}; manifest {'written' if written else 'unchanged'}"
          f"{f', signed by {builder.fingerprint}' if signed else ''}{'; unsigned until the problems are fixed' if builder.problems else ''}")
    if builder.problems:
        return 1
    if builder.missing and args.require_assets:
        print("--require-assets: the bundle lacks " + ", ".join(item["name"] for item in builder.missing))
        return 1
    return 0


# --------------------------------------------------------------------------- wheelhouse (make wheelhouse)


def sdist_names(profile: dict) -> List[str]:
    return [f"{library['name']}-{library['version']}.tar.gz" for library in profile["libraries"]]


def torch_index(name: str, profile: dict) -> str:
    """The simple index (PEP 503 root) the profile's torch and torchvision come from, or '' for pip's own index.

    A profile names its index (torch_index: pytorch-cpu) and TORCH_INDEXES maps each name to its URL, so that
    the URL has one home that the operator points at a mirror. Plain http only on the loopback: a wheelhouse
    is signed as downloaded, so a torch swapped in transit would be signed too."""
    key = str(profile.get("torch_index") or "")
    if not key:
        return ""
    where = in_kit(PROFILES / name / "profile.yml")
    try:
        indexes = yaml.safe_load(TORCH_INDEXES.read_text()) or {}
        url = str(indexes[key]).rstrip("/")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise BadInput(f"{where} takes torch from the index {key!r}, which {in_kit(TORCH_INDEXES)} does not map to a URL "
                       f"({type(exc).__name__}: {exc}). Fix: add `{key}: <the index's simple URL>` there, or drop "
                       f"torch_index from {where}") from None
    if not url:
        raise BadInput(f"{where} takes torch from the index {key!r}, whose URL {in_kit(TORCH_INDEXES)} leaves empty (the kit "
                       f"names no index host). Fix: set `{key}: <its https simple-index URL>` there (for pytorch-cpu, the "
                       "URL PyTorch's install selector gives for Linux, pip, CPU, or your mirror of it) and rerun")
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not (parts.scheme == "https" and parts.hostname) and not (parts.scheme == "http" and loopback):
        raise BadInput(f"{in_kit(TORCH_INDEXES)}: {key} is {url!r}, not an https URL (plain http only on 127.0.0.1, a local "
                       "mirror): the wheels downloaded from it are signed into the bundle as they arrive. Fix: give its https URL")
    return url


def torch_index_answers(url: str, key: str) -> None:
    """Ask the index for torch's page before pip does: pip retries an unreachable index for minutes and ends
    with 'no matching distribution', which reads like a wrong pin."""
    try:
        urllib.request.urlopen(f"{url}/torch/", timeout=15).close()
    except (OSError, ValueError) as exc:
        raise BadInput(f"the torch index {key} ({url}, {in_kit(TORCH_INDEXES)}) did not answer for torch ({exc}). Fix: run "
                       f"make wheelhouse on a control node that reaches it, or point {key} in {in_kit(TORCH_INDEXES)} at a "
                       "mirror of it (a PEP 503 simple index)") from None


def torch_pip_env() -> Dict[str, str]:
    """pip's environment for the download from a profile's torch index: no config files and no other index or
    find-links, so that the named index is the only place torch can come from (an extra index with a higher
    torch would otherwise win). A CA for that index goes in PIP_CERT, which stays."""
    dropped = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT")
    return {**{key: value for key, value in os.environ.items() if key not in dropped}, "PIP_CONFIG_FILE": os.devnull}


def split_torch_pins(pins: List[str]) -> Tuple[List[str], List[str]]:
    """(torch and torchvision pins, the others) of constraints.txt's lines."""
    def project(line: str) -> str:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""
    return [line.strip() for line in pins if project(line) in TORCH_PROJECTS], [line for line in pins if project(line) not in TORCH_PROJECTS]


def download_wheelhouse(args: argparse.Namespace) -> int:
    """wheelhouse/<profile>/ from the profile's constraints.txt (the whole closed set, so --no-deps downloads
    exactly what the hosts install, for the profile's Python rather than this machine's), the libraries'
    sdists into sources/, and wheelhouse-<profile>.tar (sorted, no owners or dates: the same wheels give
    the same tar). A profile whose set could not be resolved is refused, not half downloaded."""
    name, bundle = args.profile, args.bundle_dir
    profile = load_profile(name)
    where = f"profiles/{name}/profile.yml"
    blocked = " ".join(str(profile.get("wheelhouse_blocked") or "").split())
    if blocked:
        raise BadInput(f"no wheelhouse for the profile {name} ({where}, wheelhouse_blocked): {blocked}. Fix: resolve its "
                       f"profiles/{name}/constraints.txt where an index has the whole set, then remove wheelhouse_blocked; "
                       "or pick another profile")
    constraints = PROFILES / name / "constraints.txt"
    pins = [line for line in (constraints.read_text().splitlines() if constraints.is_file() else [])
            if line.strip() and not line.lstrip().startswith("#")]
    if not pins:
        raise BadInput(f"profiles/{name}/constraints.txt {'has no pins' if constraints.is_file() else 'does not exist'}: the "
                       f"profile {name} has no resolved dependency set yet. Fix: resolve it for Python {profile['python']} "
                       "(pip install --dry-run --report, see docs/profiles.md) and commit it; or pick another profile")
    index = torch_index(name, profile)
    torch_pins, other_pins = split_torch_pins(pins) if index else ([], pins)
    if index:
        torch_index_answers(index, str(profile["torch_index"]))
    folder = bundle / "wheelhouse" / name
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    python = args.python or str(profile["python"])
    wheels = [*pip, "--only-binary=:all:", "--dest", str(folder), "--python-version", python, "--implementation", "cp", *platforms]
    if torch_pins:
        subprocess.run([*wheels, "--index-url", index, *torch_pins], check=True, env=torch_pip_env())
    with tempfile.NamedTemporaryFile("w", prefix="sdkit-constraints-", suffix=".txt") as others:
        others.write("".join(line + "\n" for line in other_pins))
        others.flush()
        subprocess.run([*wheels, "-r", others.name], check=True)
    specs = [f"{library['name']}=={library['version']}" for library in profile["libraries"]]
    if specs:
        subprocess.run([*pip, "--no-binary=:all:", "--dest", str(bundle / "sources"), *specs], check=True)
    wheels = sorted(path for path in folder.iterdir() if path.is_file())
    partial = bundle / f".{wheelhouse_tar(name)}.partial"
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
        for path in wheels:
            info = tar.gettarinfo(path, arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    partial.replace(bundle / wheelhouse_tar(name))
    print(f"wheelhouse for {name} (Python {python}): {len(wheels)} files in {shown(folder)}, "
          f"pushed to its hosts as {shown(bundle)}/{wheelhouse_tar(name)}")
    return 0


def sources(args: argparse.Namespace) -> int:
    """The profile's sdist file names, for the Makefile (the ML venv installs the test profile's)."""
    print(" ".join(sdist_names(load_profile(args.profile))))
    return 0


# --------------------------------------------------------------------------- verify


def check_signature(bundle: Path, fingerprint: str) -> bytes:
    """The manifest, read once, and its signature made by the key FINGERPRINT names, before anything in it
    is believed. Returns the bytes checked: what is parsed and reported is what was signed, whatever
    happens to the file afterwards."""
    where = shown(bundle)
    if not (bundle / MANIFEST).is_file():
        raise BadInput(f"{where}/{MANIFEST} does not exist, so nothing in the bundle can be verified: build the bundle "
                       "with make bundle (or copy the whole bundle/ again)")
    text = (bundle / MANIFEST).read_bytes()
    if not fingerprint:
        raise BadInput("no signing key fingerprint to check the bundle against: set sophon_sd_bundle_signing_fingerprint in "
                       "the inventory's group_vars/all (make bundle-key prints it), or pass --fingerprint")
    if not FINGERPRINT.fullmatch(fingerprint):
        raise BadInput(f"signing key fingerprint {fingerprint!r} is not 40 or 64 hex digits: copy the one make bundle-key prints")
    for rel in (SIGNATURE, PUBLIC_KEY):
        if not (bundle / rel).is_file():
            raise BadInput(f"{where}/{rel} does not exist, so the manifest is not signed: rerun make bundle on the control "
                           "node that holds the signing key (make bundle-key), or copy the whole bundle/ again")
    with tempfile.TemporaryDirectory(prefix="sdkit-manifest-") as scratch:
        checked = Path(scratch) / MANIFEST
        checked.write_bytes(text)
        found = signer(bundle / PUBLIC_KEY, bundle / SIGNATURE, checked)
    if not found:
        raise BadInput(f"{where}/{SIGNATURE} is not a good signature of {where}/{MANIFEST} by the key in {PUBLIC_KEY} "
                       "(changed after it was signed?): rerun make bundle on the control node that holds the signing key, "
                       "or copy the whole bundle/ again")
    if found != fingerprint:
        raise BadInput(f"{where}/{MANIFEST} is signed by key {found}, not by {fingerprint} "
                       "(sophon_sd_bundle_signing_fingerprint): use a bundle built with that key, or set the fingerprint "
                       "make bundle-key printed for the key you trust")
    return text


def verify(args: argparse.Namespace) -> int:
    bundle: Path = args.bundle_dir
    text = check_signature(bundle, normalize(args.fingerprint))
    header, entries = load_manifest(bundle, text)
    serial = serial_of(header)
    if not serial:
        # Hosts refuse a bundle older than the last they got by this number: without it, any old signed
        # bundle (with the packages a newer one replaced) would pass.
        raise BadInput(f"{shown(bundle)}/{MANIFEST} has no serial (a bundle made before serials): rebuild it with make bundle "
                       "on the control node that holds the signing key, which numbers and signs it")
    problems = []
    size = 0
    where = shown(bundle)
    for rel, entry in sorted(entries.items()):
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{where}/{rel}: missing; fix: {fix_for(rel, entry.kind)}")
        elif sha256_of(path) != entry.sha256:
            problems.append(f"{where}/{rel}: sha256 differs from the manifest (corrupt or replaced); fix: {fix_for(rel, entry.kind)}")
            if entry.members is not None:
                members, refused = tar_members(bundle, rel)
                problems += refused
                problems += [f"{where}/{rel}: member {name} differs from the manifest; fix: {fix_for(rel, entry.kind)}"
                             for name in sorted(set(members) | set(entry.members)) if members.get(name) != entry.members.get(name)]
        else:
            size += path.stat().st_size
    files, refused = scan(bundle)
    problems += refused
    for rel in files:
        if rel not in entries:
            recorded = rel.split("/")[0] in ("wheelhouse", "vendor", "assets", "apt", "apt.tar", PUBLIC_KEY) \
                or WHEELHOUSE_TAR.fullmatch(rel) is not None
            fix = "rerun make bundle to record it, or remove it" if recorded else "remove it (make bundle does not record it)"
            problems.append(f"{where}/{rel}: not in the manifest; fix: {fix}")
    for line in problems:
        print(line)
    if problems:
        return 1
    missing = header.get("missing") or []
    note = f"; not in it: {', '.join(item['name'] for item in missing)}" if missing else ""
    print(f"bundle OK: {len(entries)} files, {size / 2**20:.0f} MiB match {bundle}/{MANIFEST}, signed by "
          f"{normalize(args.fingerprint)}, serial {serial} (profiles {' '.join(header.get('profiles') or {}) or 'none'}){note}")
    if args.facts:
        print(json.dumps({"sha256": hashlib.sha256(text).hexdigest(), "serial": serial}))
    return 0


# --------------------------------------------------------------------------- command line


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    default_bundle = REPO / "bundle"

    build_parser = commands.add_parser("build", help="fetch what is missing, re-verify the rest, write the manifest",
                                       description="Fetch what the bundle lacks, re-verify the rest, write bundle/manifest.yml.")
    build_parser.add_argument("--bundle-dir", type=Path, default=default_bundle, help="the bundle (default: the repo's bundle/)")
    build_parser.add_argument("--profile", required=True, nargs="+",
                              help="every profile the fleet's hosts use (profiles/<name>/; PROFILES of make bundle): "
                                   "their wheelhouses and sources are bundled and recorded in the manifest")
    build_parser.add_argument("--libraries", type=Path,
                              help="YAML with sophon_upstream_libraries overriding the profiles' (tests: build/upstream-git/libraries.yml)")
    build_parser.add_argument("--git-base-url", default=role_defaults("sophon_upstream")["sophon_upstream_git_base_url"],
                              help="where <name>.git lives (default: the sophon_upstream role's default)")
    build_parser.add_argument("--git-timeout", type=float, default=15,
                              help="seconds to wait for git ls-remote before keeping the sdist (default 15)")
    build_parser.add_argument("--assets-from", type=Path,
                              help="a local copy of Sophgo's download share (its folders are copied in); otherwise the hub, if reachable")
    build_parser.add_argument("--hub-timeout", type=float, default=10, help="seconds to wait for the hub (default 10)")
    build_parser.add_argument("--require-assets", action="store_true", help="exit 1 when a share folder could not be bundled")
    build_parser.add_argument("--no-wheelhouse", action="store_true",
                              help="a bundle without wheels (hosts use an index): do not require bundle/wheelhouse/<profile>")
    build_parser.add_argument("--no-apt", action="store_true",
                              help="do not build the apt repository (files already in bundle/apt/ stay listed and verified)")
    build_parser.add_argument("--with-driver", action="store_true",
                              help="also bundle the driver's apt packages (dkms); linux-headers must still match each host's kernel")
    build_parser.add_argument("--accept-changes", action="store_true",
                              help="record files as they are now, after replacing or removing one on purpose")
    build_parser.add_argument("--gnupghome", type=Path, required=True,
                              help="the GnuPG home holding the bundle's signing key (make bundle-key creates it; BUNDLE_GNUPGHOME)")

    wheel_parser = commands.add_parser("wheelhouse", help="download a profile's wheels and sources (make wheelhouse)",
                                       description=download_wheelhouse.__doc__)
    wheel_parser.add_argument("--bundle-dir", type=Path, default=default_bundle, help="the bundle (default: the repo's bundle/)")
    wheel_parser.add_argument("--profile", required=True, help="a folder of profiles/ (PROFILE of make wheelhouse)")
    wheel_parser.add_argument("--python", default="",
                              help="download for this Python instead of the profile's (make test-profile: Debian 12's 3.11)")
    wheel_parser.add_argument("--profiles-dir", type=Path, default=PROFILES,
                              help="the folder of profiles and torch-indexes.yml (default: the repo's profiles/)")

    sources_parser = commands.add_parser("sources", help="print a profile's sdist file names")
    sources_parser.add_argument("--profile", required=True, help="a folder of profiles/")

    key_parser = commands.add_parser("key", help="create the bundle's signing key (once) and print its fingerprint",
                                     description="Create an ed25519 signing key in --gnupghome unless it holds one; print "
                                                 "its fingerprint (also written to <gnupghome>/fingerprint).")
    key_parser.add_argument("--gnupghome", type=Path, required=True,
                            help="a folder kept on this control node, never committed or carried (BUNDLE_GNUPGHOME)")

    verify_parser = commands.add_parser("verify", help="check every file against the manifest; exit 1 on any problem",
                                        description="Check every manifest entry (exists, sha256) and look for unlisted files.")
    verify_parser.add_argument("--bundle-dir", type=Path, default=default_bundle, help="the bundle (default: the repo's bundle/)")
    verify_parser.add_argument("--fingerprint", default="",
                               help="the fingerprint of the key that must have signed the manifest "
                                    "(sophon_sd_bundle_signing_fingerprint; make bundle-key prints it)")
    verify_parser.add_argument("--facts", action="store_true",
                               help="on success, end with one JSON line: the sha256 of the manifest bytes that were "
                                    "verified and its serial (playbooks/preflight.yml records them; the roles that push "
                                    "from the bundle compare the manifest they find with that sha256)")
    return parser.parse_args(argv)


def key(args: argparse.Namespace) -> int:
    fingerprint = create_key(args.gnupghome)
    (args.gnupghome / "fingerprint").write_text(fingerprint + "\n")
    print(f"bundle signing key {fingerprint} in {args.gnupghome} (keep that folder on this control node, offline; "
          "it never goes into the bundle or the repository)")
    print("Put this line in your inventory's group_vars/all (e.g. group_vars/all/main.yml), where site.yml's preflight reads it:")
    print(f"sophon_sd_bundle_signing_fingerprint: {fingerprint}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Absolute paths: git runs in other folders, and the manifest records where copies came from.
    if getattr(args, "bundle_dir", None) is not None:
        args.bundle_dir = args.bundle_dir.resolve()
    if getattr(args, "gnupghome", None) is not None:
        args.gnupghome = args.gnupghome.resolve()
    if getattr(args, "assets_from", None) is not None:
        args.assets_from = args.assets_from.resolve()
    if getattr(args, "profiles_dir", None) is not None:
        global PROFILES, TORCH_INDEXES  # noqa: PLW0603 - one run reads one folder of profiles
        PROFILES, TORCH_INDEXES = args.profiles_dir.resolve(), args.profiles_dir.resolve() / TORCH_INDEXES.name
    try:
        return {"build": build, "verify": verify, "key": key, "wheelhouse": download_wheelhouse,
                "sources": sources}[args.command](args)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[2:5])} ... failed (exit {exc.returncode}, its output above); fix what it names and rerun",
              file=sys.stderr)
        return 1
    except (BadInput, SigningError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
