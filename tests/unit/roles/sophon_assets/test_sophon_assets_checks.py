"""roles/sophon_assets' check of the control node's assets folder (module_utils/sophon_assets_checks.py), each
message in full. tests/roles/test_assets.py keeps, on a host, that a corrupt asset stops the play before the host
changes (the check's wiring) and that the folders are staged intact."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import sophon_assets_checks as checks

REPO = Path(__file__).resolve().parents[4]
ITEMS = ["CompVis_SD14_pretrained_weights", "dataset"]
FILES = {"CompVis_SD14_pretrained_weights/model_index.json": b"{}",
         "dataset/data/train-00000-of-00001.parquet": b"PAR1 stand-in rows",
         "dataset/README.md": b"pokemon"}


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    """An assets folder in the share's layout, with SHA256SUMS written by `make assets-sums`."""
    for relative, content in FILES.items():
        path = tmp_path / "assets" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    subprocess.run(["make", "-s", "-C", str(REPO), "assets-sums", f"BUNDLE={tmp_path}"], check=True, capture_output=True)
    return tmp_path / "assets"


def test_an_intact_folder_has_no_problems(assets):
    assert checks.folder_problems(str(assets), ITEMS) == []


def test_a_missing_checksum_list_names_the_folders_and_make_assets_sums(assets):
    (assets / "SHA256SUMS").unlink()
    assert checks.folder_problems(str(assets), ITEMS) == [
        f"{assets}/SHA256SUMS is missing. Put the download share's folders (CompVis_SD14_pretrained_weights, dataset) "
        f"in {assets}, run `make assets-sums`, and rerun."]


def test_a_changed_and_a_missing_file_are_each_named_as_sha256sum_names_them(assets):
    (assets / "dataset/data/train-00000-of-00001.parquet").write_bytes(b"truncated")
    (assets / "dataset/README.md").unlink()
    assert checks.folder_problems(str(assets), ITEMS) == [
        f"Assets in {assets} do not match SHA256SUMS: dataset/README.md: FAILED open or read; "
        "dataset/data/train-00000-of-00001.parquet: FAILED. Copy those files again from the download share and rerun."]


def test_the_lines_agree_with_sha256sum(assets):
    (assets / "dataset/data/train-00000-of-00001.parquet").write_bytes(b"truncated")
    tool = subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=assets, capture_output=True, text=True)
    assert checks.mismatches(str(assets)) == tool.stdout.splitlines()


def test_binary_mode_entries_are_read(assets):
    digest = hashlib.sha256(FILES["dataset/README.md"]).hexdigest()
    (assets / "SHA256SUMS").write_text(f"{digest} *dataset/README.md\n")
    assert checks.folder_problems(str(assets), ITEMS) == []


def test_a_checksum_list_that_is_not_one_is_named(assets):
    (assets / "SHA256SUMS").write_text("not a checksum list\n")
    assert checks.folder_problems(str(assets), ITEMS) == [
        f"{assets}/SHA256SUMS cannot be read as a checksum list (line 1 is not <sha256>  <path>). Run "
        "`make assets-sums` and rerun."]
