"""Paths and checkout builders shared by conftest.py and test_patches.py.

A plain module rather than conftest.py: `from conftest import ...` can pick up another folder's conftest.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PATCHES_DIR = REPO_ROOT / "patches"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"

ACCELERATE_SDIST = REPO_ROOT / "bundle" / "sources" / "accelerate-0.16.0.tar.gz"
ACCELERATE_PATCH = PATCHES_DIR / "accelerate" / "v0.16.0" / "accelerator.py.patch"
ACCELERATE_TARGET = "src/accelerate/accelerator.py"

DIFFUSERS_PATCH = PATCHES_DIR / "diffusers" / "v0.20.0" / "train_text_to_image_lora.py.patch"
DIFFUSERS_TARGET = "examples/text_to_image/train_text_to_image_lora.py"
# Upstream's file is not in the diffusers sdist and GitHub is unreachable here, hence the reconstruction.
DIFFUSERS_FIXTURE = FIXTURES_DIR / "train_text_to_image_lora.v0.20.0.py"

PatchRunner = Callable[..., subprocess.CompletedProcess]


def extract_accelerate(dest: Path, members: str = "src/") -> Path:
    """Unpacks the pinned sdist's `members` prefix into `dest` (laid out like the git checkout) or skips."""
    if not ACCELERATE_SDIST.is_file():
        pytest.skip(f"accelerate sdist missing: {ACCELERATE_SDIST} (the bundle step downloads it)")
    top = "accelerate-0.16.0/"
    with tarfile.open(ACCELERATE_SDIST) as sdist:
        for member in sdist.getmembers():
            relative = member.name.removeprefix(top)
            if member.isfile() and relative.startswith(members):
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(sdist.extractfile(member).read())
    return dest


def copy_diffusers_fixture(dest: Path) -> Path:
    target = dest / DIFFUSERS_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DIFFUSERS_FIXTURE, target)
    return dest
