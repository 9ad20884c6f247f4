"""The peft flow's patches (profile sophgo-peft): accelerate 0.30.1 and diffusers v0.29.2's LoRA example.

They give the behaviour of Sophgo's accelerate-Sophgo.patch and training script: torch_tpu's GradScaler for
fp16 on tpu, tpu as the default device when torch_tpu sees a chip, int32 timesteps on tpu. A stand-in
replaces torch_tpu (fixtures/accelerate_probe.py); hosts without it must behave as upstream.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch
import yaml

from patch_support import (
    ACCELERATE_PEFT_PATCHES,
    ACCELERATE_PEFT_VERSION,
    DIFFUSERS_PEFT_FIXTURE,
    DIFFUSERS_PATCH,
    DIFFUSERS_PEFT_PATCH,
    DIFFUSERS_TARGET,
    FIXTURES_DIR,
    REPO_ROOT,
    PatchCase,
    PatchRunner,
    check_applies_cleanly,
    copy_diffusers_fixture,
    extract_accelerate,
    patch_target,
)
from test_patches import (
    SCALER_KWARGS,
    STAND_IN_SCALER,
    Scenario,
    added_lines,
    assert_subset,
    by_name,
    probe,
)

GPU_ERROR = re.compile(r"^ValueError: fp16 mixed precision requires a GPU")
PATCH_CASES = {
    **{f"accelerate-0.30.1-{patch.name}": PatchCase(patch, patch_target(patch),
                                                    lambda d: extract_accelerate(d, "src/", ACCELERATE_PEFT_VERSION))
       for patch in ACCELERATE_PEFT_PATCHES},
    "diffusers-0.29.2": PatchCase(DIFFUSERS_PEFT_PATCH, DIFFUSERS_TARGET,
                                  lambda d: copy_diffusers_fixture(d, DIFFUSERS_PEFT_FIXTURE)),
}


def test_accelerate_patches_are_the_four_files_sophgos_patch_changes() -> None:
    assert sorted(patch_target(p) for p in ACCELERATE_PEFT_PATCHES) == [
        "src/accelerate/accelerator.py", "src/accelerate/state.py", "src/accelerate/utils/__init__.py",
        "src/accelerate/utils/imports.py"]


@pytest.mark.parametrize("case", PATCH_CASES.values(), ids=PATCH_CASES.keys())
def test_patch_applies_cleanly_then_reads_as_applied(case: PatchCase, tmp_path: Path, run_patch: PatchRunner) -> None:
    check_applies_cleanly(case, tmp_path, run_patch)


# --- diffusers v0.29.2: the example compiles, imports torch_tpu only for tpu, int32 timesteps on tpu ----------


@pytest.fixture(scope="module")
def example_patched(tmp_path_factory: pytest.TempPathFactory, run_patch: PatchRunner) -> str:
    checkout = copy_diffusers_fixture(tmp_path_factory.mktemp("diffusers-0.29.2"), DIFFUSERS_PEFT_FIXTURE)
    result = run_patch(DIFFUSERS_PEFT_PATCH, checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    return (checkout / DIFFUSERS_TARGET).read_text()


def test_patched_example_top_compiles(example_patched: str) -> None:
    # Up to `logger = ...` the fixture is upstream's real module top; the training loop's lines are a fragment.
    lines = example_patched.splitlines()
    end = next(n for n, line in enumerate(lines, 1) if line.startswith("logger = "))
    compile("\n".join(lines[:end]) + "\n", DIFFUSERS_TARGET, "exec")
    assert "import torch_tpu" in example_patched and "torch.int32" in example_patched


def test_import_guard_is_the_tutorial_patchs() -> None:
    """Same lines as the v0.20.0 patch's, so test_patches.py's guard tests cover both."""
    assert added_lines(DIFFUSERS_PEFT_PATCH, 0) == added_lines(DIFFUSERS_PATCH, 0)


@pytest.mark.parametrize(("device_type", "dtype"), [("cpu", torch.int64), ("cuda", torch.int64), ("tpu", torch.int32)])
def test_timesteps_int32_on_tpu_only(device_type: str, dtype: torch.dtype) -> None:
    (line,) = [line for line in added_lines(DIFFUSERS_PEFT_PATCH, 1) if line.strip().startswith("timesteps =")]
    namespace = {"torch": torch, "timesteps": torch.tensor([3, 999]),
                 "latents": types.SimpleNamespace(device=types.SimpleNamespace(type=device_type))}
    exec(compile(line.strip(), DIFFUSERS_TARGET, "exec"), namespace)
    assert namespace["timesteps"].dtype == dtype and namespace["timesteps"].tolist() == [3, 999]


# --- accelerate 0.30.1: device and GradScaler, in fresh interpreters -----------------------------------------


PARITY = by_name(
    Scenario("fp16-default-cpu", None, "fp16", "missing", {"device": "cpu", "scaler": None, "error": None}),
    Scenario("fp16-meta", "meta", "fp16", "missing", {"error": GPU_ERROR}),
    Scenario("no-meta", "meta", "no", "missing", {"scaler": None, "error": None}),
    Scenario("no-default-tpu-unavailable", None, "no", "unavailable", {"device": "cpu", "error": None}),
)
TPU = by_name(
    Scenario("default-device-tpu", None, "no", "available", {"device": "tpu", "error": None, "tpu_set_device": []}),
    Scenario("fp16-tpu", "tpu:0", "fp16", "available",
             {"device": "tpu:0", "native_amp": True, "scaler": STAND_IN_SCALER, "scaler_kwargs": SCALER_KWARGS,
              "tpu_set_device": [0]}, SCALER_KWARGS),
    Scenario("no-tpu-1-selects-chip-1", "tpu:1", "no", "available", {"device": "tpu:1", "tpu_set_device": [1]}),
    Scenario("fp16-tpu-unavailable", "tpu:0", "fp16", "unavailable", {"error": GPU_ERROR}),
    Scenario("fp16-tpu-no-torch_tpu", "tpu:0", "fp16", "missing", {"error": re.compile("ModuleNotFound.*torch_tpu")}),
)


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory: pytest.TempPathFactory, run_patch: PatchRunner) -> dict[str, Path]:
    upstream = extract_accelerate(tmp_path_factory.mktemp("accelerate-0.30.1"), "src/", ACCELERATE_PEFT_VERSION)
    patched = extract_accelerate(tmp_path_factory.mktemp("accelerate-0.30.1-patched"), "src/", ACCELERATE_PEFT_VERSION)
    for patch in ACCELERATE_PEFT_PATCHES:
        result = run_patch(patch, patched)
        assert result.returncode == 0, result.stdout + result.stderr
    return {"upstream": upstream, "patched": patched}


@pytest.fixture(scope="module")
def outcomes(checkouts: dict[str, Path]) -> dict[str, dict]:
    return {"upstream": probe(checkouts["upstream"], list(PARITY.values())),
            "patched": probe(checkouts["patched"], [*TPU.values(), *PARITY.values()])}


@pytest.mark.parametrize("name", TPU.keys())
def test_patched_accelerate_on_tpu(name: str, outcomes: dict[str, dict]) -> None:
    assert_subset(TPU[name].expected, outcomes["patched"][name])


@pytest.mark.parametrize("name", PARITY.keys())
def test_patched_accelerate_matches_upstream_off_tpu(name: str, outcomes: dict[str, dict]) -> None:
    assert_subset(PARITY[name].expected, outcomes["upstream"][name])  # pins upstream, so parity is not vacuous
    upstream, patched = ({k: v for k, v in outcomes[side][name].items() if k != "accelerate_file"}
                         for side in ("upstream", "patched"))
    assert patched == upstream


# --- the fixtures stand for the real files: same line numbers, and they name the commit they were cut from ----


@pytest.mark.parametrize("fixture", sorted(FIXTURES_DIR.glob("train_text_to_image_lora.v*.py")), ids=lambda p: p.name)
def test_fixture_keeps_upstreams_line_numbers_and_names_the_pinned_commit(fixture: Path) -> None:
    """A patch lands on its fixture exactly where it lands on the real file (checked by make patches-upstream)."""
    lines = fixture.read_text().splitlines()
    placeholders = [(n, line) for n, line in enumerate(lines, 1) if line.startswith("# upstream line ")]
    assert placeholders, f"{fixture.name} has no placeholders: its line numbers are not upstream's"
    assert all(line == f"# upstream line {n}" for n, line in placeholders)
    tag = fixture.name.split(".", 1)[1].removesuffix(".py")
    pins = {str(library["commit"]) for path in (REPO_ROOT / "profiles").glob("*/profile.yml")
            for library in yaml.safe_load(path.read_text())["libraries"]
            if library["name"] == "diffusers" and library["tag"] == tag}
    (pin,) = pins
    assert re.fullmatch(r"[0-9a-f]{40}", pin) and pin in lines[0], f"{fixture.name}'s header does not name {pin}"
    assert "placeholder" in "\n".join(lines[:3]), "the header must say what the fixture leaves out"
