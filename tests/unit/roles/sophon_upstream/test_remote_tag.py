"""roles/sophon_upstream's question to a git source before a fresh clone (sophon_upstream_checks.remote_tag),
against real repositories on this machine: each message that stops the clone, in full. The stack's container
test (tests/roles/test_stack_bad_input.py) keeps the moved tag, through the role."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sophon_upstream_checks as checks

HOST = "h1"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """A bare repository with an annotated tag v1.0 and a lightweight tag v2.0, on two commits."""
    work = tmp_path_factory.mktemp("work")
    git("init", "-q", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=work)
    first = git("rev-parse", "HEAD", cwd=work)
    git("tag", "-a", "-m", "release", "v1.0", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "two", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    git("tag", "v2.0", cwd=work)
    bare = work.parent / "lib.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=work.parent)
    return {"url": f"file://{bare}", "v1.0": first, "v2.0": second}


@pytest.mark.parametrize("tag", ["v1.0", "v2.0"])
def test_a_tag_at_its_pin_lets_the_clone_go_ahead(source, tag):
    # v1.0 is annotated: the commit it names is the peeled one, not the tag object's.
    assert checks.remote_tag(source["url"], tag, source[tag], HOST) == ("", source[tag])


def test_an_unpinned_tag_is_not_compared(source):
    assert checks.remote_tag(source["url"], "v2.0", "", HOST) == ("", source["v2.0"])


def test_a_moved_tag_names_both_commits(source):
    url = source["url"]
    assert checks.remote_tag(url, "v2.0", source["v1.0"], HOST) == (
        f"Tag v2.0 of {url} points to {source['v2.0']}, not the pinned commit {source['v1.0']}: the tag was moved or "
        "the mirror is wrong. Fix the mirror's tag (or the pin in sophon_upstream_libraries) and rerun.",
        source["v2.0"])


def test_a_missing_tag_is_named(source):
    url = source["url"]
    assert checks.remote_tag(url, "v9.9.9", source["v1.0"], HOST) == (
        f"{url} has no tag v9.9.9. Push the upstream tag to the mirror (or fix the pin) and rerun.", "")
    # Not a prefix match: v1 is no tag, though v1.0 is.
    assert checks.remote_tag(url, "v1", "", HOST)[0].endswith("has no tag v1. Push the upstream tag to the mirror "
                                                            "(or fix the pin) and rerun.")


def test_an_unreachable_source_names_the_url_the_host_and_gits_reason(tmp_path):
    url = f"file://{tmp_path}/nowhere/transformers.git"
    problem, commit = checks.remote_tag(url, "v4.29.1", "", HOST)
    assert commit == ""
    assert problem.startswith(f"Cannot reach {url} from {HOST} (fatal: ")
    assert problem.endswith("). Set sophon_upstream_git_base_url to a mirror this host can reach, or use "
                            "sophon_upstream_source=bundle, and rerun.")


def test_a_host_without_git_is_told_to_install_it():
    def no_git(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "git")

    problem, _ = checks.remote_tag("file:///srv/upstream/x.git", "v1", "", HOST, run=no_git)
    assert problem.startswith(f"Cannot run git on {HOST} (") and problem.endswith("install git (role sophon_apt does) "
                                                                                 "and rerun.")
