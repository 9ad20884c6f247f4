"""roles/sophon_torch_tpu's checks (module_utils/sophon_torch_tpu_checks.py): the wheel read as a zip, and every
message that stops the role, in full. These were container tests (tests/roles/test_runtime_bad_input.py); the
container suite keeps one wiring test for the host-side check and one for the control-node preflight."""

from __future__ import annotations

import zipfile
from pathlib import Path

import make_wheel
import pytest
import sophon_torch_tpu_checks as checks

HOST = "sdkit-rt-bad-1"
VENV = "/opt/sophon-sd/venv"
VENDOR = "/srv/bundle/vendor"
WHEEL_311 = "torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl"
WHEEL_310 = "torch_tpu-2.1.0.post1-cp310-cp310-linux_x86_64.whl"
GOOGLE_WHEEL = "torch_tpu-0.2.0-py3-none-any.whl"
PY311 = {"version": "3.11", "tag": "cp311", "machine": "x86_64", "prefix": VENV}


def state(wheel: Path | None = None, torch: str | None = "2.13.0+cpu", python: dict = PY311) -> dict:
    """What the module reports for a venv with this torch, the wheel read as on an x86_64 CPython 3.11."""
    info, error = None, None
    if wheel is not None:
        try:
            info = checks.wheel_info(str(wheel), python["tag"], "sophgo", machine=python["machine"],
                                     python_major_minor=(3, 11))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            error = f"{wheel}: {exc}"
    return {"python": python, "torch": torch, "installed": None, "wheel": info, "wheel_error": error}


def host_problems(report: dict, wheel_name: str = WHEEL_311, torch_version: str = "") -> list[str]:
    return checks.host_problems(report, HOST, VENV, wheel_name, VENDOR, torch_version)


@pytest.fixture
def sophgo_311(tmp_path) -> Path:
    return make_wheel.sophgo(tmp_path, "cp311", "2.13.0", "2.1.0.post1")


# --------------------------------------------------------------------------- the wheel as read


def test_sophgo_wheel_is_read_as_sophgos(sophgo_311):
    wheel = checks.wheel_info(str(sophgo_311), "cp311", "sophgo", machine="x86_64", python_major_minor=(3, 11))
    assert (wheel["name"], wheel["version"], wheel["author"]) == ("torch-tpu", "2.1.0.post1", "sophgo")
    assert wheel["vendor"] and wheel["has_tpu"] and wheel["fits_python"] and wheel["torch_pin"] == "2.13.0"
    assert wheel["libs"] == ["torch_tpu/lib/libtorch_tpu.bm1684x.so", "torch_tpu/lib/libtpudnn.bm1684x.so"]


def test_a_good_venv_and_wheel_have_no_problems(sophgo_311):
    assert host_problems(state(sophgo_311)) == []


def test_wheel_on_another_machine_does_not_fit(sophgo_311):
    wheel = checks.wheel_info(str(sophgo_311), "cp311", "sophgo", machine="aarch64", python_major_minor=(3, 11))
    assert not wheel["fits_python"]


# --------------------------------------------------------------------------- host-side messages


def test_google_wheel_in_the_bundle_is_refused(tmp_path):
    """Was tests/roles/test_runtime_bad_input.py::test_google_wheel_in_the_bundle_is_refused."""
    wheel = make_wheel.google(tmp_path)
    assert host_problems(state(wheel), GOOGLE_WHEEL) == [
        f"{GOOGLE_WHEEL} is not Sophgo's torch_tpu: it is torch-tpu 0.2.0 by 'Google LLC' (no torch_tpu/tpu/ package). "
        "PyPI's torch-tpu is Google's Cloud TPU backend, which cannot drive a BM1684X. Put Sophgo's wheel "
        f"(torch_tpu-2.x.0.postN-cp3X-cp3X-linux_x86_64.whl from Sophgo's SDK download) in {VENDOR} and rerun. "
        "Nothing was installed."]


def test_wheel_for_another_python_is_refused(tmp_path):
    """The container test of the same name stays, as the host-side check's wiring test."""
    wheel = make_wheel.sophgo(tmp_path, "cp310", "2.13.0", "2.1.0.post1")
    assert host_problems(state(wheel), WHEEL_310) == [
        f"{WHEEL_310} is built for cp310-cp310-linux_x86_64, but the venv {VENV} on {HOST} runs Python 3.11 (cp311) "
        "on x86_64. Use Sophgo's torch_tpu wheel for cp311 (sophon_torch_tpu_python_tag), or the Python this wheel "
        "is for (sophon_venv_python_version and its profile). Nothing was installed."]


def test_venv_without_torch_and_an_unreadable_wheel_are_both_named(tmp_path):
    bad = tmp_path / WHEEL_311
    bad.write_bytes(b"not a zip")
    assert host_problems(state(bad, torch=None)) == [
        f"torch is not installed in {VENV} on {HOST}. torch_tpu is installed after torch, which the sophon_venv role "
        "installs: run it first (playbooks/runtime.yml does).",
        f"{WHEEL_311} is not a readable wheel ({bad}: File is not a zip file). Replace it in {VENDOR} with Sophgo's "
        "file and rerun."]


@pytest.mark.parametrize("torch_version, source, expected", [
    ("", "its Requires-Dist", "2.8.0"),
    ("2.9.0", "sophon_torch_tpu_torch_version", "2.9.0"),
])
def test_venv_torch_that_does_not_pair_with_the_wheel(tmp_path, torch_version, source, expected):
    wheel = make_wheel.sophgo(tmp_path, "cp311", "2.8.0", "2.1.0.post1")
    assert host_problems(state(wheel, torch="2.13.0+cpu"), torch_version=torch_version) == [
        f"{WHEEL_311} is built for torch {expected} ({source}), but the venv\n{VENV} on {HOST} has torch 2.13.0+cpu. "
        f"Set sophon_venv_torch_version to {expected} (with its profile), or use the torch_tpu wheel Sophgo built "
        "for torch 2.13.0. Nothing was installed."]


def test_wheel_without_a_torch_pin_pairs_by_its_version(tmp_path):
    """No Requires-Dist: torch==X: the wheel's version without .postN is the torch it is for."""
    wheel = make_wheel.sophgo(tmp_path, "cp311", "2.13.0", "2.13.0.post2")
    report = state(wheel)
    report["wheel"]["torch_pin"] = None
    assert checks.wheel_torch(report["wheel"]) == ("2.13.0", "its version")
    assert host_problems(report) == []


# --------------------------------------------------------------------------- control-node preflight


def preflight(exists: bool = True, checksum: str = "ab" * 32, sha256: str = "ab" * 32, meta: dict | None = None,
              profile_torch: str = "2.13.0", other_wheels: tuple[str, ...] = ()) -> list[str]:
    return checks.preflight_problems(
        host=HOST, wheel_name=WHEEL_311, vendor_dir=VENDOR, exists=exists, checksum=checksum, sha256=sha256,
        meta=meta, version="2.1.0.post1", python_tag="cp311", torch_version="", profile_torch=profile_torch,
        profile="tutorial-2023-cpu", profile_dir="/kit/profiles/tutorial-2023-cpu", other_wheels=list(other_wheels))


MISSING = (f"Missing on the control node: {VENDOR}/{WHEEL_311}. Put Sophgo's torch_tpu 2.1.0.post1 wheel for "
           "Python 3.11 there under exactly that name (from Sophgo's SDK download page or the tutorial's download "
           "share; it is not on PyPI, whose torch-tpu is Google's), set sophon_torch_tpu_sha256 and rerun. ")
UNSET = (f"sophon_torch_tpu_sha256 must be set to the sha256 that Sophgo publishes for {WHEEL_311} (64 hex digits, "
         "in group_vars). `sha256sum` shows what the file you have hashes to; only a published value proves it is "
         "Sophgo's.")


def test_missing_wheel_names_the_file_and_the_folder_and_what_is_there():
    """Was tests/roles/test_runtime_bad_input.py::test_missing_vendor_file_names_the_file_and_the_folder[wheel]."""
    assert preflight(exists=False) == [MISSING]
    assert preflight(exists=False, other_wheels=(WHEEL_310,)) == [
        MISSING + f"Found instead: {WHEEL_310} (set sophon_torch_tpu_version / sophon_torch_tpu_wheel if one of them "
        "is the right one)."]


@pytest.mark.parametrize("sha256", ["", "abc", "g" * 64])
def test_unset_checksum_is_required(sha256):
    """Was tests/roles/test_runtime_bad_input.py::test_unset_checksum_is_required."""
    assert preflight(sha256=sha256) == [UNSET]
    assert preflight(exists=False, sha256=sha256) == [MISSING, UNSET]


def test_checksum_mismatch_names_both_values():
    assert preflight(checksum="cd" * 32, sha256="AB" * 32) == [
        f"Checksum mismatch: {VENDOR}/{WHEEL_311} has sha256 {'cd' * 32}, sophon_torch_tpu_sha256 says {'AB' * 32}. "
        "Nothing was installed. The file is corrupt, truncated or another build: download it again from Sophgo (or "
        "fix the variable) and rerun."]
    assert preflight(checksum="ab" * 32, sha256="AB" * 32) == [], "hex case does not matter"


def test_wheel_paired_with_another_torch_is_refused_on_the_control_node(tmp_path):
    """The container test of the same name stays, as the preflight's wiring test."""
    meta = checks.wheel_info(str(make_wheel.sophgo(tmp_path, "cp311", "2.8.0", "2.1.0.post1")), "cp311", "sophgo")
    assert preflight(meta=meta) == [
        f"{HOST}: {VENDOR}/{WHEEL_311} is built for torch 2.8.0 (its Requires-Dist), but the host's\nprofile "
        "tutorial-2023-cpu pins torch 2.13.0 (sophon_venv_torch_version, from /kit/profiles/tutorial-2023-cpu/"
        "profile.yml). Put Sophgo's torch_tpu wheel for torch 2.13.0 there (and set sophon_torch_tpu_version, "
        "sophon_torch_tpu_sha256), or set sophon_sd_profile to a profile with torch 2.8.0. Nothing was changed."]
    assert preflight(meta=meta, profile_torch="2.8.0") == []


def test_preflight_leaves_a_foreign_or_unreadable_wheel_to_the_host_side_check(tmp_path):
    """Its torch pairing means nothing for Google's wheel; the host-side check names what is wrong with it."""
    google = checks.wheel_info(str(make_wheel.google(tmp_path)), "cp311", "sophgo")
    assert preflight(meta=google) == [] and preflight(meta=None) == []
