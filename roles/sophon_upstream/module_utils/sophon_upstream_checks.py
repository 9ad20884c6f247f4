"""What sophon_upstream finds on the host, and what stops it before fetching (its module's logic).

For each library: whether its tree is there (a git checkout, SOURCE git; in bundle mode an unpacked sdist with
PKG-INFO, or an unpacked `git archive` of the tag with the kit's MARKER), the checkout's commit or the tree's
version (and a git archive tree's commit), and, in bundle mode, which source archive the library comes from, with
the sha256 (and a git archive's commit) of the copy kept under SRC_DIR/.archives. Standard library only: the module
(library/sophon_upstream_check.py) runs it with the host's python3, before the venv is needed, and the unit
tests (tests/unit/roles/sophon_upstream) import it.
"""

import hashlib
import json
import os
import re
import subprocess
import tarfile

# Written into a tree unpacked from a `git archive` before it moves into place: it has no PKG-INFO, and the archive's
# commit, which the checks compare with the pin on every run, is only in the archive's tar header.
MARKER = ".sophon-sd-archive.json"


def sha256(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def pkg_version(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return ""


def git_head(path):
    try:
        result = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, check=False)
    except OSError as exc:
        return "(git failed: %s)" % exc
    return result.stdout.strip() if result.returncode == 0 else "(git failed: %s)" % result.stderr.strip()


def archive_commit(path):
    """The commit a `git archive` tarball was made from: git writes it as the `comment` of the tar's pax global
    header, its first block. None for an archive without one (an sdist) or one that cannot be read."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            archive.next()
            commit = archive.pax_headers.get("comment", "")
    except (OSError, tarfile.TarError, EOFError):
        return None
    return commit if re.match(r"^[0-9a-f]{40}$", commit) else None


def archive_for(name, version, manifest_sources):
    """The source archive bundle mode unpacks for a library: the `git archive` of its tag when the verified
    manifest lists one (git mode's tree, examples/ included), else the PyPI sdist. MANIFEST_SOURCES maps the
    manifest's paths under sources/ to their sha256."""
    git_archive = "%s-%s.git.tar.gz" % (name, version)
    if "sources/" + git_archive in manifest_sources:
        return git_archive
    return "%s-%s.tar.gz" % (name, version)


def is_git_archive(archive):
    return archive.endswith(".git.tar.gz")


def read_marker(path):
    try:
        with open(path, encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def probe(src_dir, source, name, version, manifest_sources=None):
    tree = os.path.join(src_dir, name)
    if source == "git":
        present = os.path.isdir(os.path.join(tree, ".git"))
        return {"present": present, "commit": git_head(tree) if present else None}
    archive = archive_for(name, version, manifest_sources or {})
    path = os.path.join(src_dir, ".archives", archive)
    found = {"present": False, "version": None, "archive": archive, "archive_sha256": sha256(path), "marker": None,
             "from_archive": archive}
    if is_git_archive(archive):
        found["archive_commit"] = archive_commit(path) if found["archive_sha256"] is not None else None
        # What fetch_bundle.yml writes into the fresh tree as MARKER.
        found["marker"] = {"archive": archive, "sha256": found["archive_sha256"], "commit": found["archive_commit"],
                           "version": version, "written_by": "sophon-sd-kit, role sophon_upstream"}
    if os.path.isfile(os.path.join(tree, "PKG-INFO")):
        found.update(present=True, tree="sdist", version=pkg_version(os.path.join(tree, "PKG-INFO")),
                     from_archive="%s-%s.tar.gz" % (name, version))
    elif os.path.isfile(os.path.join(tree, MARKER)):
        marker = read_marker(os.path.join(tree, MARKER)) or {}
        found.update(present=True, tree="git archive", version=str(marker.get("version", "")),
                     commit=str(marker.get("commit") or ""), from_archive=str(marker.get("archive", "")))
    return found


def problems(found, libraries, source, src_dir, bundle_dir, archives_on_control_node, manifest_sources=None):
    """Everything wrong before fetching, one message each: an archive missing on the control node, not matching
    its pin or the verified manifest, or a `git archive` made from another commit than the pin; a tree or checkout
    on the host at another version or commit than the pin. The kit never overwrites a tree it did not make."""
    manifest_sources = manifest_sources or {}
    out = []
    for lib in libraries:
        name, version = lib["name"], str(lib["version"])
        here = found[name]
        dest = "%s/%s" % (src_dir, name)
        commit = lib.get("commit") or ""
        archive = here.get("archive") or archive_for(name, version, manifest_sources)
        if source == "bundle":
            out.extend(archive_problems(lib, here, archive, bundle_dir, archives_on_control_node, manifest_sources))
        if here["present"] and source == "git" and commit and here["commit"] != commit:
            out.append("%s is at %s, not %s %s (%s). The kit does not overwrite a checkout it did not make: move it "
                       "away and rerun." % (dest, here["commit"], name, lib.get("tag"), commit))
        elif here["present"] and source == "bundle" and here["version"] != version:
            out.append("%s holds %s %s, not the pinned %s. The kit does not overwrite a tree it did not make: move it "
                       "away and rerun." % (dest, name, here["version"], version))
        elif here["present"] and here.get("tree") == "git archive" and commit and here.get("commit") != commit:
            out.append("%s was unpacked from a git archive of commit %s, not %s %s (%s). The kit does not overwrite a "
                       "tree it did not make: move it away and rerun." % (dest, here.get("commit") or "(none recorded)",
                                                                         name, lib.get("tag"), commit))
    return out


def archive_problems(lib, here, archive, bundle_dir, archives_on_control_node, manifest_sources):
    """What is wrong with one library's source archive in bundle mode (the copy on the host, once pushed)."""
    name, commit = lib["name"], lib.get("commit") or ""
    if archive not in archives_on_control_node:
        return ["%s/%s is missing on the control node. Run `make wheelhouse` (it also downloads the source archives) "
                "and rerun." % (bundle_dir, archive)]
    if here.get("archive_sha256") is None:
        return []  # not on the host yet (--check before the first push): nothing to compare
    if not is_git_archive(archive):
        if here["archive_sha256"] != lib["sha256"]:
            return ["%s has sha256 %s, expected %s. Replace the file in %s with the published sdist and rerun."
                    % (archive, here["archive_sha256"], lib["sha256"], bundle_dir)]
        return []
    signed = manifest_sources.get("sources/" + archive)
    if here["archive_sha256"] != signed:
        return ["%s on the host has sha256 %s, not the verified manifest's %s. Rerun: the kit copies it from the "
                "verified bundle again." % (archive, here["archive_sha256"], signed)]
    if here.get("archive_commit") is None:
        return ["%s has no commit in its tar header: it is not a `git archive` of %s %s. Rebuild the bundle (make "
                "bundle) where the repository is reachable, or drop sources/%s from it to use the sdist, and rerun."
                % (archive, name, lib.get("tag"), archive)]
    if commit and here["archive_commit"] != commit:
        return ["%s was made from commit %s, not %s %s's pinned commit %s (the tag moved, or the bundle was built "
                "from another repository). Rebuild the bundle (make bundle) from a repository whose tag is at the pin, "
                "or correct the pin in the profile, and rerun." % (archive, here["archive_commit"], name,
                                                                  lib.get("tag"), commit)]
    return []


def look(src_dir, source, libraries, manifest_sources=None):
    """What the host has of each library, keyed by name."""
    return {lib["name"]: probe(src_dir, source, lib["name"], str(lib["version"]), manifest_sources)
            for lib in libraries}


def remote_tag(url, tag, commit, host, run=subprocess.run):
    """What stops a fresh clone of URL at TAG, asked with `git ls-remote` before cloning: the source cannot be
    reached, has no such tag, or its tag is not the pinned COMMIT (empty: unpinned). Returns (problem, the
    commit the tag names); the problem is empty when the clone may go ahead. HOST names the host in the message."""
    try:
        answer = run(["git", "ls-remote", "--tags", url, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}"],
                     capture_output=True, text=True, check=False, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except OSError as error:
        return f"Cannot run git on {host} ({error}): install git (role sophon_apt does) and rerun.", ""
    if answer.returncode != 0:
        reason = " ".join(answer.stderr.split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        return (f"Cannot reach {url} from {host} ({reason}). Set sophon_upstream_git_base_url to a mirror this host "
                "can reach, or use sophon_upstream_source=bundle, and rerun."), ""
    refs = {ref: sha for sha, ref in (line.split("\t", 1) for line in answer.stdout.splitlines() if "\t" in line)}
    # An annotated tag is an object of its own: the commit it names is the peeled (^{}) line.
    tag_commit = refs.get(f"refs/tags/{tag}^{{}}", refs.get(f"refs/tags/{tag}", ""))
    if not tag_commit:
        return f"{url} has no tag {tag}. Push the upstream tag to the mirror (or fix the pin) and rerun.", ""
    if commit and tag_commit != commit:
        return (f"Tag {tag} of {url} points to {tag_commit}, not the pinned commit {commit}: the tag was moved or the "
                "mirror is wrong. Fix the mirror's tag (or the pin in sophon_upstream_libraries) and rerun."), tag_commit
    return "", tag_commit
