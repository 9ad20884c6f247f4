"""profiles/<name>/: each profile is one complete pin set, and the facts it states agree with each other.

The roles, the Makefile and tools/sdkit_bundle.py read these files; a profile that lacks a key, pins
another torch in its constraints.txt than in profile.yml, or names a CPU twin with other libraries
would only show up on a host. A profile without constraints.txt is unresolved (its wheelhouse is
refused, with why): its pins are checked, its patch files only once it is resolved.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PROFILES = sorted(path.parent.name for path in (REPO / "profiles").glob("*/profile.yml"))
KEYS = {"description", "python", "torch", "torchvision", "torch_tpu", "training_flow", "libraries", "patches",
        "example_packages", "test_twin"}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "profile.yml").read_text())


def pins(name: str) -> dict[str, str]:
    """name -> version of each `name==version` line of the profile's constraints.txt."""
    text = (REPO / "profiles" / name / "constraints.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.MULTILINE))


def test_the_default_and_the_test_profile_exist():
    assert {"tutorial-2023", "tutorial-2023-cpu"} <= set(PROFILES)
    makefile = (REPO / "Makefile").read_text()
    assert "PROFILE ?= tutorial-2023\n" in makefile and "TEST_PROFILE := tutorial-2023-cpu\n" in makefile
    assert "sophon_sd_profile: tutorial-2023\n" in (REPO / "roles/sophon_sd/defaults/main.yml").read_text()


@pytest.mark.parametrize("name", PROFILES)
def test_profile_has_every_key_as_a_string_where_the_roles_need_one(name):
    profile = load(name)
    assert KEYS <= set(profile), f"profiles/{name}/profile.yml lacks {sorted(KEYS - set(profile))}"
    for key in ("python", "torch", "torchvision", "torch_tpu", "test_twin"):
        assert isinstance(profile[key], str), f"profiles/{name}/profile.yml: quote {key} (YAML reads 3.10 as 3.1)"
    assert profile["training_flow"] in ("attn_processors", "peft")
    for library in profile["libraries"]:
        assert {"name", "version", "tag", "commit", "sha256"} <= set(library), library
        assert re.fullmatch(r"[0-9a-f]{64}", library["sha256"]), f"{name}: {library['name']}'s sdist sha256"
    names = {library["name"] for library in profile["libraries"]}
    for patch in profile["patches"]:
        assert patch["library"] in names, f"{name}: a patch for {patch['library']}, which the profile does not install"
        tag = next(library["tag"] for library in profile["libraries"] if library["name"] == patch["library"])
        assert patch["patch"].startswith(f"{patch['library']}/{tag}/"), f"{name}: {patch['patch']} is not for {tag}"


@pytest.mark.parametrize("name", PROFILES)
def test_constraints_pin_the_profiles_torch_and_the_patches_exist(name):
    profile = load(name)
    if not (REPO / "profiles" / name / "constraints.txt").is_file():
        pytest.skip(f"{name} is unresolved (no constraints.txt)")
    assert "wheelhouse_blocked" not in profile, f"{name} has a constraints.txt: drop wheelhouse_blocked"
    pinned = pins(name)
    # The local label (+cpu) names the build; the roles and the preflight compare the public version.
    assert pinned.get("torch", "").split("+")[0] == profile["torch"]
    assert pinned.get("torchvision", "").split("+")[0] == profile["torchvision"]
    for patch in profile["patches"]:
        assert (REPO / "patches" / patch["patch"]).is_file(), f"{name}: patches/{patch['patch']} missing"


@pytest.mark.parametrize("name", [name for name in PROFILES if load(name)["test_twin"]])
def test_the_test_twin_installs_the_same_libraries_and_edits(name):
    profile, twin = load(name), load(load(name)["test_twin"])
    assert twin["test_twin"] == "", "a twin is tested itself"
    for key in ("libraries", "patches", "training_flow", "example_packages"):
        assert twin[key] == profile[key], f"{name} and its twin {profile['test_twin']} differ in {key}"


# transformers' tags are not pinned yet: its repository was out of reach where the others were checked
# (roles/sophon_upstream/README.md, "Pinned commits"). Its sdist sha256 is pinned, and no patch touches it.
UNPINNED_COMMITS = {"transformers"}


@pytest.mark.parametrize("name", PROFILES)
def test_every_patched_library_is_pinned_to_its_tags_commit(name):
    """The upstream role and make bundle refuse a tag that moved only when the profile names the commit."""
    profile = load(name)
    for library in profile["libraries"]:
        if library["name"] in UNPINNED_COMMITS:
            assert not any(p["library"] == library["name"] for p in profile["patches"]), library
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", str(library["commit"])), f"{name}: pin {library['name']} {library['tag']}"


TORCH_INDEXES = yaml.safe_load((REPO / "profiles" / "torch-indexes.yml").read_text())
REAL_PROFILES = [name for name in PROFILES if load(name)["python"] == "3.10"]


@pytest.mark.parametrize("name", REAL_PROFILES)
def test_the_real_profiles_take_the_cpu_build_of_torch_from_the_named_index(name):
    """A BM1684X host runs torch on the CPU beside torch_tpu: the CUDA build's nvidia-* wheels are 2.5 GB it
    cannot use. Sophgo installs torch==X+cpu from PyTorch's CPU index; so do the real profiles."""
    profile = load(name)
    assert profile.get("torch_index") in TORCH_INDEXES, f"{name}: name an index of profiles/torch-indexes.yml"
    # The operator sets the URL (the kit names no index host); what is set must be https.
    url = TORCH_INDEXES[profile["torch_index"]]
    assert url == "" or url.startswith("https://"), url
    constraints = REPO / "profiles" / name / "constraints.txt"
    if constraints.is_file():
        pinned = pins(name)
        assert pinned["torch"] == f"{profile['torch']}+cpu"
        assert pinned["torchvision"] == f"{profile['torchvision']}+cpu"
        assert not [pin for pin in pinned if pin.startswith("nvidia-") or pin == "triton"], f"{name} pins CUDA packages"
