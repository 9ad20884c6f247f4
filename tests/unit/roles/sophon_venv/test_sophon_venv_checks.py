"""roles/sophon_venv's preflight (module_utils/sophon_venv_checks.py): what the host has, and each message, in full.
The container suite (tests/roles/test_stack_bad_input.py) keeps the wrong-Python and too-little-disk cases: they
need the host's real interpreter and a small filesystem."""

from __future__ import annotations

import pytest
import sophon_venv_checks as checks

HOST = "sdkit-stack-1"
DEBIAN = {"os_family": "Debian", "distribution": "Debian", "distribution_version": "12", "architecture": "x86_64"}
PINS = {"python_version": "3.11", "torch_version": "2.13.0", "constraints": "constraints.txt",
        "profile": "tutorial-2023-cpu", "profile_dir": "/kit/profiles/tutorial-2023-cpu"}
CONTROL = {"constraints_src": "/kit/profiles/tutorial-2023-cpu/constraints.txt", "constraints_found": True,
           "package_source": "wheelhouse", "wheelhouse_src": "/kit/bundle/wheelhouse-tutorial-2023-cpu.tar",
           "wheelhouse_found": True, "index_url": ""}


def problems(facts=DEBIAN, python="3.11", venv=False, free=50000, control=None) -> list[str]:
    return checks.problems(HOST, facts, "/usr/bin/python3", python, venv, free, PINS, {**CONTROL, **(control or {})},
                           "/opt/sophon-sd", 4000)


def test_a_host_that_fits_has_no_problems():
    assert problems() == []


def test_free_disk_and_venv_are_read_from_the_nearest_existing_folder(tmp_path):
    assert checks.free_mb(str(tmp_path / "not" / "yet")) == checks.free_mb(str(tmp_path)) > 0
    assert not checks.venv_exists(str(tmp_path))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text("")
    assert checks.venv_exists(str(tmp_path))


def test_unsupported_platform():
    rocky = {"os_family": "RedHat", "distribution": "Rocky", "distribution_version": "9.3", "architecture": "x86_64"}
    assert problems(facts=rocky) == [
        f"{HOST} runs Rocky 9.3 on x86_64; the kit supports Debian/Ubuntu on x86_64 only (Sophgo ships libsophon and "
        "torch_tpu for amd64). Remove this host from the inventory."]


@pytest.mark.parametrize("python, shown", [("3.10", "3.10"), (None, "missing")])
def test_python_the_pins_are_not_for(python, shown):
    assert problems(python=python) == [
        f"/usr/bin/python3 on {HOST} is {shown}, but the pins (torch 2.13.0, constraints constraints.txt) are for "
        "Python 3.11 (profile tutorial-2023-cpu, /kit/profiles/tutorial-2023-cpu/profile.yml). Point "
        "sophon_venv_python at a Python 3.11 interpreter, or set sophon_sd_profile (in this host's group_vars) to a "
        "profile for this Python (profiles/*/profile.yml)."]


def test_control_node_without_constraints_or_wheelhouse():
    assert problems(control={"constraints_found": False, "wheelhouse_found": False}) == [
        "No constraints file /kit/profiles/tutorial-2023-cpu/constraints.txt (sophon_venv_constraints) on the control "
        "node: the kit has no resolved dependency set for torch 2.13.0 on Python 3.11 (profile tutorial-2023-cpu). Set "
        "sophon_sd_profile to a profile with a constraints.txt, or add that file.",
        "The wheelhouse /kit/bundle/wheelhouse-tutorial-2023-cpu.tar does not exist on the control node. Build it on "
        "the control node with `make wheelhouse PROFILE=tutorial-2023-cpu` (or set sophon_venv_package_source=index "
        "and sophon_venv_index_url)."]


def test_index_source_needs_a_url():
    assert problems(control={"package_source": "index", "wheelhouse_found": False}) == [
        "sophon_venv_package_source is 'index' but sophon_venv_index_url is empty; set it to your package index."]
    assert problems(control={"package_source": "index", "index_url": "https://pkgs.example/simple"}) == []


def test_the_disk_with_less_free_is_the_one_checked(monkeypatch):
    # The venv (sophon_sd_venv) may be on another disk than the kit's root, where the wheelhouse goes.
    monkeypatch.setattr(checks, "free_mb", {"/opt/sophon-sd": 9000, "/data/venv": 300}.get)
    assert checks.tightest_disk(["/opt/sophon-sd", "/data/venv"]) == (300, "/data/venv")


def test_too_little_disk_before_a_first_build_only():
    message = ("Only 100 MB free under /opt/sophon-sd on sdkit-stack-1; the wheelhouse and the venv need about 4000 "
               "MB. Free some space (or move the venv, sophon_sd_venv, and its wheelhouse, sophon_venv_root, to a larger "
               "disk) and rerun.")
    assert problems(free=100) == [message]
    assert problems(free=100, venv=True) == [], "a venv that exists is not built again from nothing"
    assert problems(free=100, python=None)[1:] == [], "without a Python the disk was not looked at"
