"""Shared fixtures for the installed-state checks.

These run against any host testinfra can reach (podman://, ansible://, ssh://). What a host should
hold comes from two places: the pins and patches in this repository, and the manifest the
sophon_upstream role leaves on the host (which source mode it used, where things live).
"""

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIT_ROOT = "/opt/sophon-sd"


@pytest.fixture(scope="module")
def sources_manifest(host) -> dict:
    manifest = host.file(f"{KIT_ROOT}/src/sources.json")
    assert manifest.exists, f"{manifest.path} missing: the sophon_upstream role has not run on this host"
    return json.loads(manifest.content_string)


@pytest.fixture(scope="module")
def venv_python(sources_manifest: dict) -> str:
    return f"{sources_manifest['venv']}/bin/python"


@pytest.fixture(scope="session")
def pinned_libraries() -> dict[str, dict]:
    """The role's default pins: what the kit promises, whatever a host's manifest says."""
    defaults = yaml.safe_load((REPO / "roles/sophon_upstream/defaults/main.yml").read_text())
    return {lib["name"]: lib for lib in defaults["sophon_upstream_libraries"]}


def patch_changed_lines(patch_text: str) -> list[str]:
    """The added and removed lines of a unified diff, without file headers or context."""
    return [
        line
        for line in patch_text.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++ ", "--- "))
    ]
