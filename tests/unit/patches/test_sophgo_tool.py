"""A host the kit patched is one that Sophgo's own tpu_apply_all_patch treats as patched.

Sophgo's README has operators run tpu_apply_all_patch after installing torch_tpu. Its stand-in
(tests/standins/sophgo_apply_all_patch.py) follows the real tool's check; the markers come from the
upstream role's own script (roles/sophon_upstream/files/sophgo_markers.py), run as the role runs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from patch_support import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "standins"))
import sophgo_apply_all_patch as sophgo  # noqa: E402

MARKERS = REPO_ROOT / "roles" / "sophon_upstream" / "files" / "sophgo_markers.py"
PEFT_PINS = ["transformers=4.41.2", "accelerate=0.30.1"]


def fake_site(tmp_path: Path, editable: bool) -> Path:
    """A venv's site-packages as the kit leaves it: the pinned versions' metadata, editable or copied."""
    site = tmp_path / "site-packages"
    for name, version in (("transformers", "4.41.2"), ("accelerate", "0.30.1")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if not editable:
            (site / name).mkdir()
            (site / name / "__init__.py").write_text("# the kit's patched copy\n")
    return site


@pytest.fixture
def sophgo_patches(tmp_path: Path) -> Path:
    """Sophgo's patches stand-ins: they change a file the kit's trees have, so a second patch fails."""
    folder = tmp_path / "patch"
    folder.mkdir()
    for name in ("transformers", "accelerate"):
        (folder / f"{name}-Sophgo.patch").write_text(
            f"--- a/src/{name}/__init__.py\n+++ b/src/{name}/__init__.py\n@@ -1 +1 @@\n"
            f"-# upstream's {name}\n+# Sophgo's {name}\n")
    return folder


def write_markers(site: Path, *flags: str) -> list[str]:
    result = subprocess.run([sys.executable, str(MARKERS), "--site", str(site), *flags, *PEFT_PINS],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["changed"]


def snapshot(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="the `patch` program is not installed")


@pytest.mark.parametrize("editable", [True, False], ids=["editable", "copied"])
def test_without_the_markers_sophgos_tool_fails_on_a_kit_host(tmp_path: Path, sophgo_patches: Path,
                                                             editable: bool) -> None:
    site = fake_site(tmp_path, editable)
    with pytest.raises(FileNotFoundError if editable else RuntimeError):
        sophgo.apply_all_patches(site, sophgo_patches)


@pytest.mark.parametrize("editable", [True, False], ids=["editable", "copied"])
def test_after_the_kit_sophgos_tool_changes_nothing_and_fails_nothing(tmp_path: Path, sophgo_patches: Path,
                                                                      editable: bool) -> None:
    site = fake_site(tmp_path, editable)
    assert len(write_markers(site)) == 2
    before = snapshot(site)

    log = sophgo.apply_all_patches(site, sophgo_patches)

    assert log == ["transformers-Sophgo has been applied", "accelerate-Sophgo has been applied",
                   "llamafactory is not in version 0.8.3: stop"]
    assert snapshot(site) == before


def test_markers_are_idempotent_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    site = fake_site(tmp_path, editable=True)
    assert write_markers(site, "--check") == [str(site / "transformers" / "sophgo.py"),
                                              str(site / "accelerate" / "sophgo.py")]
    assert not (site / "accelerate").exists()
    write_markers(site)
    assert write_markers(site) == []
    assert (site / "accelerate" / "sophgo.py").read_text().startswith("# sophon-sd-kit: ")


def test_other_versions_get_no_marker(tmp_path: Path) -> None:
    """The tutorial's transformers 4.29.1: Sophgo's tool stops there without patching anything."""
    site = fake_site(tmp_path, editable=True)
    changed = subprocess.run([sys.executable, str(MARKERS), "--site", str(site), "transformers=4.29.1"],
                             capture_output=True, text=True, check=True).stdout
    assert json.loads(changed) == {"changed": []}
