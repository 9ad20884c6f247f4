"""Paths and checkout builders shared by conftest.py and test_patches.py.

A plain module rather than conftest.py: `from conftest import ...` can pick up another folder's conftest.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PATCHES_DIR = REPO_ROOT / "patches"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"

# Where the source archives are: the bundle (make wheelhouse PROFILES=...).
SOURCES_DIR = REPO_ROOT / "bundle" / "sources"
ACCELERATE_SDIST = SOURCES_DIR / "accelerate-0.16.0.tar.gz"
ACCELERATE_PATCH = PATCHES_DIR / "accelerate" / "v0.16.0" / "accelerator.py.patch"
ACCELERATE_TARGET = "src/accelerate/accelerator.py"

DIFFUSERS_PATCH = PATCHES_DIR / "diffusers" / "v0.20.0" / "train_text_to_image_lora.py.patch"
DIFFUSERS_TARGET = "examples/text_to_image/train_text_to_image_lora.py"
# Upstream's file is not in the diffusers sdist and GitHub is unreachable here, hence the reconstruction.
DIFFUSERS_FIXTURE = FIXTURES_DIR / "train_text_to_image_lora.v0.20.0.py"

# The peft flow's pins (profile sophgo-peft): accelerate 0.30.1 and diffusers 0.29.2.
ACCELERATE_PEFT_VERSION = "0.30.1"
# One patch per file, as the upstream role records them (library, file, patch) and the doctor checks them.
ACCELERATE_PEFT_PATCHES = sorted((PATCHES_DIR / "accelerate" / "v0.30.1").glob("*.patch"))
DIFFUSERS_PEFT_PATCH = PATCHES_DIR / "diffusers" / "v0.29.2" / "train_text_to_image_lora.py.patch"
DIFFUSERS_PEFT_FIXTURE = FIXTURES_DIR / "train_text_to_image_lora.v0.29.2.py"

PatchRunner = Callable[..., subprocess.CompletedProcess]


@dataclass(frozen=True)
class PatchCase:
    patch: Path
    target: str
    make_checkout: Callable[[Path], Path]


def check_applies_cleanly(case: PatchCase, tmp_path: Path, run_patch: PatchRunner) -> None:
    """The patch applies exactly (no offset, no fuzz), changes its file, and then reads as applied."""
    checkout = case.make_checkout(tmp_path)
    original = (checkout / case.target).read_text()

    for flags in (("--dry-run",), ()):
        result = run_patch(case.patch, checkout, *flags)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "offset" not in result.stdout and "fuzz" not in result.stdout, result.stdout
    assert (checkout / case.target).read_text() != original

    # The role's idempotence check: a reverse dry run succeeding means "already applied, leave it".
    assert run_patch(case.patch, checkout, "-R", "--dry-run").returncode == 0
    assert run_patch(case.patch, checkout, "--forward", "--dry-run").returncode != 0


def patch_target(patch: Path) -> str:
    """The one file a patch changes (its ``+++ b/`` line)."""
    (target,) = [line[len("+++ b/"):].split("\t")[0] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]
    return target


def extract_accelerate(dest: Path, members: str = "src/", version: str = "0.16.0") -> Path:
    """Unpacks the pinned sdist's `members` prefix into `dest` (laid out like the git checkout) or skips."""
    name = f"accelerate-{version}.tar.gz"
    sdist = SOURCES_DIR / name
    if not sdist.is_file():
        pytest.skip(f"{name} missing from {SOURCES_DIR} (make unit downloads it)")
    top = f"accelerate-{version}/"
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            relative = member.name.removeprefix(top)
            if member.isfile() and relative.startswith(members):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    return dest


def copy_diffusers_fixture(dest: Path, fixture: Path = DIFFUSERS_FIXTURE) -> Path:
    target = dest / DIFFUSERS_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fixture, target)
    return dest
