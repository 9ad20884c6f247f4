"""Bundle mode with the `git archive` of a tag (issue 24): the upstream role's check on a real archive made by git
from a tiny repository, unpacked as fetch_bundle.yml unpacks it, and looked at again as on a rerun.

The fleet scenario's bundle-mode host runs profile sophgo-peft-cpu, whose tags have no stand-in repositories
(build/upstream-git holds tutorial-2023-cpu's), so the container suites still unpack sdists there; this proves the
git archive branch with git's own output instead.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import make_git_archive
import pytest
import sophon_upstream_checks as checks

BUNDLE = "/srv/bundle/sources"
SDIST_SHA = "ab" * 32
GIT_ARCHIVE = "diffusers-0.29.2.git.tar.gz"
SDIST = "diffusers-0.29.2.tar.gz"


@pytest.fixture()
def made(tmp_path: Path) -> Dict[str, Any]:
    """A host's sources folder holding the pushed git archive; the pin set to the archive's commit."""
    src = tmp_path / "src"
    commit, sha = make_git_archive.make(tmp_path, src / ".archives" / GIT_ARCHIVE, "diffusers", "0.29.2")
    library = {"name": "diffusers", "version": "0.29.2", "tag": "v0.29.2", "commit": commit, "sha256": SDIST_SHA}
    return {"src": src, "commit": commit, "sha": sha, "library": library,
            "manifest": {f"sources/{GIT_ARCHIVE}": sha, f"sources/{SDIST}": SDIST_SHA}}


def check(made: Dict[str, Any], library: Optional[dict] = None,
          manifest: Optional[Dict[str, str]] = None) -> Tuple[dict, List[str]]:
    library = library or made["library"]
    manifest = made["manifest"] if manifest is None else manifest
    found = checks.look(str(made["src"]), "bundle", [library], manifest)
    return found, checks.problems(found, [library], "bundle", str(made["src"]), BUNDLE, [GIT_ARCHIVE, SDIST], manifest)


def unpack_as_the_role_does(made: Dict[str, Any], found: dict) -> None:
    """fetch_bundle.yml: unpack into staging, write the module's marker there, move into place."""
    staging = made["src"] / ".staging-diffusers"
    staging.mkdir()
    subprocess.run(["tar", "-C", str(staging), "--strip-components=1", "--no-same-owner", "--no-same-permissions",
                    "-xzf", str(made["src"] / ".archives" / found["archive"])], check=True)
    (staging / checks.MARKER).write_text(json.dumps(found["marker"], indent=2) + "\n")
    staging.rename(made["src"] / "diffusers")


def test_the_git_archive_the_manifest_lists_is_chosen_and_its_commit_read_from_git_s_header(made):
    found, problems = check(made)
    here = found["diffusers"]
    assert (here["archive"], here["archive_sha256"], here["archive_commit"]) == (GIT_ARCHIVE, made["sha"], made["commit"])
    assert here["present"] is False and problems == []
    assert here["marker"] == {"archive": GIT_ARCHIVE, "sha256": made["sha"], "commit": made["commit"],
                              "version": "0.29.2", "written_by": "sophon-sd-kit, role sophon_upstream"}


def test_without_a_git_archive_in_the_manifest_the_sdist_stays_the_archive(made):
    found, _ = check(made, manifest={f"sources/{SDIST}": SDIST_SHA})
    assert found["diffusers"]["archive"] == SDIST and found["diffusers"]["marker"] is None
    assert "archive_commit" not in found["diffusers"]


def test_the_unpacked_tree_has_examples_and_is_known_on_the_rerun(made):
    found, _ = check(made)
    unpack_as_the_role_does(made, found["diffusers"])
    tree = made["src"] / "diffusers"
    # The file the diffusers patch changes: the sdist has no examples/, the tag's archive does.
    assert (tree / "examples/text_to_image/train_text_to_image_lora.py").is_file()
    assert not (tree / "PKG-INFO").exists()
    rerun, problems = check(made)
    assert rerun["diffusers"]["present"] is True and problems == []
    assert (rerun["diffusers"]["tree"], rerun["diffusers"]["version"], rerun["diffusers"]["commit"]) == (
        "git archive", "0.29.2", made["commit"])
    assert rerun["diffusers"]["from_archive"] == GIT_ARCHIVE


def test_an_archive_made_from_another_commit_than_the_pin_is_one_clear_message(made):
    pin = "1" * 40
    _, problems = check(made, library=dict(made["library"], commit=pin))
    assert problems == [
        f"{GIT_ARCHIVE} was made from commit {made['commit']}, not diffusers v0.29.2's pinned commit {pin} (the tag "
        "moved, or the bundle was built from another repository). Rebuild the bundle (make bundle) from a repository "
        "whose tag is at the pin, or correct the pin in the profile, and rerun."]


def test_an_unpinned_library_takes_the_archive_of_its_tag(made):
    _, problems = check(made, library=dict(made["library"], commit=""))
    assert problems == []


def test_a_tree_from_an_archive_of_another_commit_is_not_overwritten(made):
    found, _ = check(made)
    unpack_as_the_role_does(made, found["diffusers"])
    marker = made["src"] / "diffusers" / checks.MARKER
    marker.write_text(json.dumps(dict(found["diffusers"]["marker"], commit="2" * 40)))
    _, problems = check(made)
    assert problems == [
        f"{made['src']}/diffusers was unpacked from a git archive of commit {'2' * 40}, not diffusers v0.29.2 "
        f"({made['commit']}). The kit does not overwrite a tree it did not make: move it away and rerun."]


def test_a_host_copy_that_is_not_the_signed_archive_is_named(made):
    archive = made["src"] / ".archives" / GIT_ARCHIVE
    archive.write_bytes(archive.read_bytes() + b"\0")
    found, problems = check(made)
    assert problems == [
        f"{GIT_ARCHIVE} on the host has sha256 {found['diffusers']['archive_sha256']}, not the verified manifest's "
        f"{made['sha']}. Rerun: the kit copies it from the verified bundle again."]


def test_an_sdist_listed_as_the_git_archive_has_no_commit_and_is_refused(made, tmp_path):
    """A plain tar.gz (as setuptools writes an sdist) carries no pax comment."""
    archive = made["src"] / ".archives" / GIT_ARCHIVE
    (tmp_path / "PKG-INFO").write_text("Version: 0.29.2\n")
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.add(tmp_path / "PKG-INFO", arcname="diffusers-0.29.2/PKG-INFO")
    manifest = dict(made["manifest"], **{f"sources/{GIT_ARCHIVE}": checks.sha256(str(archive))})
    found, problems = check(made, manifest=manifest)
    assert found["diffusers"]["archive_commit"] is None
    assert problems == [
        f"{GIT_ARCHIVE} has no commit in its tar header: it is not a `git archive` of diffusers v0.29.2. Rebuild the "
        f"bundle (make bundle) where the repository is reachable, or drop sources/{GIT_ARCHIVE} from it to use the "
        "sdist, and rerun."]


def test_before_the_first_push_check_mode_finds_nothing_to_refuse(made):
    (made["src"] / ".archives" / GIT_ARCHIVE).unlink()
    found, problems = check(made)
    assert found["diffusers"]["archive_sha256"] is None and found["diffusers"]["archive_commit"] is None
    assert problems == []


def test_an_sdist_tree_already_there_stays_as_it_is(made):
    """A host unpacked from the sdist before its bundle carried git archives: at the pinned version it is kept
    (changed=0); move it away to get the tag's tree."""
    (made["src"] / "diffusers").mkdir()
    (made["src"] / "diffusers" / "PKG-INFO").write_text("Version: 0.29.2\n")
    found, problems = check(made)
    assert (found["diffusers"]["present"], found["diffusers"]["tree"], found["diffusers"]["from_archive"]) == (
        True, "sdist", SDIST)
    assert problems == []


def test_the_bundle_tool_and_the_role_read_the_same_commit(made):
    """tools/sdkit_bundle.py checks the archive it writes with `git get-tar-commit-id`; the host's check reads the
    header with Python alone (a host need not have git in bundle mode)."""
    archive = Path(made["src"] / ".archives" / GIT_ARCHIVE)
    head = gzip.decompress(archive.read_bytes())[:10240]
    by_git = subprocess.run(["git", "get-tar-commit-id"], input=head, capture_output=True, check=True).stdout
    assert by_git.decode().strip() == checks.archive_commit(str(archive)) == made["commit"]
