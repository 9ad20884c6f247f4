"""Bad input to playbooks/stack.yml: each stops the play with one clear message, leaves the host
as it was or resumable, and a rerun after the fix completes.

The checks' messages are unit tests of the roles' modules (tests/unit/roles: the Python the pins cannot run,
an unreachable git source, a missing tag, ...). Here are the cases that need a real host, and one case per
check that its module is wired into the role: too little disk (sophon_venv), a moved tag (sophon_upstream).

The tests share one host and run in file order. The disk-full case really runs pip out of space;
the source cases run the whole play over a kit's venv that borrows torch from the control node's ML
venv (building it for real is the Molecule scenarios' part), and the last one completes the stack.
"""

import subprocess
import tarfile

import pytest
from conftest import ML_SITE_MOUNT, REPO, TEST_PROFILE, borrow_ml_venv

UPSTREAM_GIT = REPO / "build/upstream-git"
# A 64 MB filesystem to fill: torch alone is several hundred MB.
PODMAN_OPTIONS = ["--tmpfs", "/opt/tiny:size=64m", "-v", f"{UPSTREAM_GIT}:/srv/upstream:ro", *ML_SITE_MOUNT]
SRC = "/opt/sophon-sd/src"
ACCELERATOR_PY = f"{SRC}/accelerate/src/accelerate/accelerator.py"


@pytest.fixture(scope="module")
def git_vars() -> dict:
    """Git mode against the local stand-ins of the upstream repositories."""
    import yaml

    libraries = yaml.safe_load((UPSTREAM_GIT / "libraries.yml").read_text())["sophon_upstream_libraries"]
    return {"sophon_upstream_source": "git", "sophon_upstream_git_base_url": "file:///srv/upstream",
            "sophon_upstream_libraries": libraries}


@pytest.fixture(scope="module")
def kit_venv(throwaway_host) -> None:
    borrow_ml_venv(throwaway_host, with_pip=True)


def with_library(git_vars: dict, name: str, **changes) -> dict:
    libraries = [dict(lib, **changes) if lib["name"] == name else lib for lib in git_vars["sophon_upstream_libraries"]]
    return {**git_vars, "sophon_upstream_libraries": libraries}


def single_line(output: str, fragment: str) -> str:
    """The failure message: the play prints it once per failed host."""
    hits = [line for line in output.splitlines() if fragment in line]
    assert hits, f"no message containing {fragment!r} in:\n{output[-3000:]}"
    return hits[0]


def test_too_little_disk_is_caught_before_installing(throwaway_host):
    result = throwaway_host.play("stack.yml", {"sophon_venv_root": "/opt/tiny", "sophon_sd_venv": "/opt/tiny/venv"}, tags="venv")
    assert result.failed
    single_line(result.output, "MB free under /opt/tiny")
    assert "need about 4000 MB" in result.output and "rerun" in result.output
    assert "wheelhouse.tar" not in throwaway_host.check_output("ls -A /opt/tiny")
    assert not throwaway_host.exists("/opt/tiny/venv")


def test_disk_filling_up_during_the_build_leaves_no_venv(throwaway_host):
    # With the free-space check disabled, pip itself runs out of space half-way through torch. The wheelhouse
    # goes where the kit's own run puts it, so the provisioning below reuses it instead of a second 300 MB push.
    throwaway_host.check_output("mkdir -p /opt/sophon-sd")
    result = throwaway_host.play("stack.yml", {"sophon_venv_root": "/opt/tiny", "sophon_sd_venv": "/opt/tiny/venv",
                                               "sophon_venv_min_free_mb": 0, "sophon_venv_wheelhouse_dir": "/opt/sophon-sd/wheelhouse"},
                                 tags="venv")
    assert result.failed
    single_line(result.output, "Disk full while installing into the venv /opt/tiny/venv")
    assert "rerun" in result.output
    assert not throwaway_host.exists("/opt/tiny/venv")


def test_moved_tag_is_an_error(throwaway_host, kit_venv, git_vars, tmp_path_factory):
    # A mirror whose v4.29.1 tag was moved onto a different commit.
    mirror = tmp_path_factory.mktemp("moved")
    work = mirror / "work"
    subprocess.run(["git", "clone", "-q", str(UPSTREAM_GIT / "transformers.git"), str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q",
                    "--allow-empty", "-m", "not upstream"], check=True)
    subprocess.run(["git", "-C", str(work), "tag", "-f", "v4.29.1"], check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror / "transformers.git")], check=True)
    throwaway_host.check_output("mkdir -p /srv/moved")
    throwaway_host.put(mirror / "transformers.git", "/srv/moved/transformers.git")

    result = throwaway_host.play("stack.yml", {**git_vars, "sophon_upstream_git_base_url": "file:///srv/moved"})
    assert result.failed
    single_line(result.output, "not the pinned commit")
    pinned = git_vars["sophon_upstream_libraries"][0]["commit"]
    assert pinned in result.output and "tag was moved" in result.output
    assert throwaway_host.check_output(f"ls -A {SRC}").strip() == ""


def test_package_missing_from_the_wheelhouse_is_named(throwaway_host, git_vars, tmp_path):
    # torch needs networkx: pip stops while resolving, before it installs anything into the new venv.
    partial = tmp_path / "wheelhouse.tar"
    with tarfile.open(REPO / f"bundle/wheelhouse-{TEST_PROFILE}.tar") as full, tarfile.open(partial, "w") as out:
        for member in full.getmembers():
            if not member.name.split("/")[-1].startswith("networkx-"):
                out.addfile(member, full.extractfile(member) if member.isfile() else None)
    result = throwaway_host.play("stack.yml", {**git_vars, "sophon_venv_wheelhouse_src": str(partial),
                                               "sophon_venv_root": "/opt/partial", "sophon_sd_venv": "/opt/partial/venv",
                                               "sophon_venv_wheelhouse_dir": "/opt/partial/wheelhouse"}, tags="venv")
    assert result.failed
    message = single_line(result.output, "is missing from the wheelhouse")
    assert "networkx" in message and "make wheelhouse" in result.output
    assert not throwaway_host.exists("/opt/partial/venv"), "the venv this run started must be removed again"


def test_patch_drift_names_file_and_patch_and_changes_nothing(throwaway_host, kit_venv, git_vars):
    # A provisioned host, where the kit's patch is then undone and a line it replaces changed, as a
    # local edit would.
    provisioned = throwaway_host.play("stack.yml", git_vars)
    assert not provisioned.failed, provisioned.output[-3000:]
    throwaway_host.check_output(f"git -C {SRC}/accelerate checkout -- src/accelerate/accelerator.py")
    throwaway_host.check_output(f"sed -i 's/\"ACCELERATE_USE_MPS_DEVICE\"):/\"ACCELERATE_USE_MPS\"):/' {ACCELERATOR_PY}")
    assert "ACCELERATE_USE_MPS\"):" in throwaway_host.check_output(f"cat {ACCELERATOR_PY}")
    before = throwaway_host.check_output(f"sha256sum {ACCELERATOR_PY}")
    result = throwaway_host.play("stack.yml", git_vars)
    assert result.failed
    single_line(result.output, "does not match patches/accelerate/v0.16.0/accelerator.py.patch")
    assert ACCELERATOR_PY in result.output and "left unchanged" in result.output
    assert throwaway_host.check_output(f"sha256sum {ACCELERATOR_PY}") == before
    assert throwaway_host.run(f"ls {ACCELERATOR_PY}.rej {ACCELERATOR_PY}.orig").returncode != 0


def test_rerun_after_the_fixes_completes(throwaway_host, kit_venv, git_vars):
    throwaway_host.check_output(f"git -C {SRC}/accelerate checkout -- src/accelerate/accelerator.py")
    result = throwaway_host.play("stack.yml", git_vars)
    assert not result.failed, result.output[-3000:]
    assert "failed=0" in result.output
    versions = throwaway_host.check_output(
        "/opt/sophon-sd/venv/bin/python -c 'import diffusers, transformers, accelerate as a;"
        " print(diffusers.__version__, transformers.__version__, a.__version__)'")
    assert versions.split() == ["0.20.0", "4.29.1", "0.16.0"]
