"""tools/sdkit_patch_check.py (make patches-upstream): a patch is reported clean only if it lands exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
import sdkit_patch_check  # noqa: E402

FIXTURE = REPO / "tests/unit/patches/fixtures/train_text_to_image_lora.v0.29.2.py"
TARGET = "examples/text_to_image/train_text_to_image_lora.py"
PATCH = "diffusers/v0.29.2/train_text_to_image_lora.py.patch"
PIN = "c586aadef6bb66d355fa40a2b95a0bea8a6fe79c"

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="the `patch` program is not installed")


def diffusers_tree(upstream: Path, lines_before: int = 0) -> Path:
    tree = upstream / "diffusers-v0.29.2"
    (tree / TARGET).parent.mkdir(parents=True)
    (tree / TARGET).write_text("# an extra line\n" * lines_before + FIXTURE.read_text())
    return tree


def diffusers_result(upstream: Path) -> sdkit_patch_check.Result:
    results = sdkit_patch_check.check_profile(REPO / "profiles" / "sophgo-peft", upstream)
    (result,) = [r for r in results if r.patch == PATCH]
    return result


def test_exact_tree_is_clean_and_others_have_no_tree(tmp_path: Path) -> None:
    diffusers_tree(tmp_path)
    results = sdkit_patch_check.check_profile(REPO / "profiles" / "sophgo-peft", tmp_path)
    assert {r.patch: r.status for r in results if r.library == "diffusers"} == {PATCH: "clean"}
    assert {r.status for r in results if r.library == "accelerate"} == {"NO TREE"}


def test_offset_is_not_clean(tmp_path: Path) -> None:
    diffusers_tree(tmp_path, lines_before=2)
    result = diffusers_result(tmp_path)
    assert result.status == "OFFSET" and "offset 2 lines" in result.detail, result


def test_drifted_context_fails(tmp_path: Path) -> None:
    tree = diffusers_tree(tmp_path)
    text = (tree / TARGET).read_text()
    (tree / TARGET).write_text(text.replace("    import wandb\n", "    import wandb  # drifted\n"))
    assert diffusers_result(tmp_path).status == "FAILED"


def test_checkout_at_another_commit_than_the_pin(tmp_path: Path) -> None:
    tree = diffusers_tree(tmp_path)
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "stand-in"], check=True)
    result = diffusers_result(tmp_path)
    assert result.status == "WRONG COMMIT" and PIN in result.detail, result


def test_main_exits_1_and_says_how_many_were_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    diffusers_tree(tmp_path)
    assert sdkit_patch_check.main(["--upstream-dir", str(tmp_path), "--profile", "sophgo-peft"]) == 1
    assert "1 of 5 patch applications clean" in capsys.readouterr().out


def test_main_refuses_an_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sdkit_patch_check.main(["--upstream-dir", str(tmp_path), "--profile", "nope"])
    assert exit_info.value.code == 2
