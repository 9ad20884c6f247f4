"""Shared fixtures for the tests of the upstream patches under patches/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from patch_support import (
    ACCELERATE_PATCH,
    DIFFUSERS_PATCH,
    DIFFUSERS_TARGET,
    PatchRunner,
    copy_diffusers_fixture,
    extract_accelerate,
)


@pytest.fixture(scope="session")
def run_patch() -> PatchRunner:
    """`run_patch(patch_file, checkout, *flags)` runs `patch -p1` the way the role does and never raises."""
    if shutil.which("patch") is None:
        pytest.skip("the `patch` program is not installed")

    def run(patch_file: Path, checkout: Path, *flags: str) -> subprocess.CompletedProcess:
        with patch_file.open("rb") as stdin:
            return subprocess.run(
                ["patch", "-p1", "--batch", *flags], cwd=checkout, stdin=stdin, capture_output=True, text=True
            )

    return run


@pytest.fixture(scope="session")
def accelerate_upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpatched accelerate 0.16.0 checkout (only `src/`), the baseline the patched copy must match."""
    return extract_accelerate(tmp_path_factory.mktemp("accelerate-upstream"))


@pytest.fixture(scope="session")
def accelerate_patched(
    tmp_path_factory: pytest.TempPathFactory, accelerate_upstream: Path, run_patch: PatchRunner
) -> Path:
    checkout = tmp_path_factory.mktemp("accelerate-patched")
    shutil.copytree(accelerate_upstream, checkout, dirs_exist_ok=True)
    result = run_patch(ACCELERATE_PATCH, checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    return checkout


@pytest.fixture(scope="session")
def diffusers_patched_lines(tmp_path_factory: pytest.TempPathFactory, run_patch: PatchRunner) -> list[str]:
    """The patched LoRA script as lines; index 0 is line 1."""
    checkout = copy_diffusers_fixture(tmp_path_factory.mktemp("diffusers-patched"))
    result = run_patch(DIFFUSERS_PATCH, checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    return (checkout / DIFFUSERS_TARGET).read_text().splitlines()
