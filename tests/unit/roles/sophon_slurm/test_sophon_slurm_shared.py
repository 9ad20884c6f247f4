"""The shared run folder's check (roles/sophon_slurm/library/sophon_slurm_shared.py): markers written from
one host are seen from another only when both have the same folder."""

from __future__ import annotations

import getpass
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "runners"))
import sdkit_job  # noqa: E402
import sdkit_slurm  # noqa: E402

SPEC = importlib.util.spec_from_file_location("sophon_slurm_shared", REPO / "roles/sophon_slurm/library/sophon_slurm_shared.py")
shared = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(shared)


def step(folder: Path, host: str, state=None, expect=()) -> dict:
    params = {"host": host, "path": str(folder), "user": getpass.getuser(), "marker": f".sdkit-shared-T-{host}",
              "state": state, "expect": list(expect)}
    return shared.as_user(params["user"], lambda: shared.probe(params, sdkit_slurm), sdkit_job)


def test_hosts_that_share_the_folder_see_each_others_markers_which_are_gone_after(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir(mode=0o755)
    markers = [".sdkit-shared-T-a", ".sdkit-shared-T-b"]
    assert step(folder, "a", "present") == step(folder, "b", "present") == {"problems": [], "missing": []}
    assert step(folder, "a", expect=markers) == {"problems": [], "missing": []}
    step(folder, "a", "absent")
    step(folder, "b", "absent")
    assert not list(folder.iterdir())


def test_a_host_with_a_folder_of_its_own_misses_the_others_marker(tmp_path):
    (tmp_path / "a").mkdir(mode=0o755)
    (tmp_path / "b").mkdir(mode=0o755)
    step(tmp_path / "a", "a", "present")
    step(tmp_path / "b", "b", "present")
    assert step(tmp_path / "b", "b", expect=[".sdkit-shared-T-a", ".sdkit-shared-T-b"])["missing"] == [".sdkit-shared-T-a"]


def test_a_marker_planted_as_a_link_is_not_followed(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir(mode=0o755)
    target = tmp_path / "precious"
    target.write_text("keep")
    (folder / ".sdkit-shared-T-a").symlink_to(target)
    step(folder, "a", "present")  # the link exists: the marker is not written through it
    assert target.read_text() == "keep"


def test_an_unfit_folder_is_one_problem_naming_the_host(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    folder.chmod(0o777)
    [problem] = step(folder, "a", "present")["problems"]
    assert problem.startswith("a: ") and "no one else may write" in problem
