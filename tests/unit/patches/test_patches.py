"""The tutorial's accelerate and diffusers edits, as patches: they apply, are idempotent and do what they claim."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from patch_support import (
    ACCELERATE_PATCH,
    ACCELERATE_TARGET,
    DIFFUSERS_PATCH,
    DIFFUSERS_TARGET,
    FIXTURES_DIR,
    PatchCase,
    PatchRunner,
    check_applies_cleanly,
    copy_diffusers_fixture,
    extract_accelerate,
)

PROBE = FIXTURES_DIR / "accelerate_probe.py"
GPU_ERROR = "ValueError: fp16 mixed precision requires a GPU"
LORA_LINE_UPSTREAM = "    lora_layers = AttnProcsLayers(unet.attn_processors)"
LORA_LINE_PATCHED = "    lora_layers = AttnProcsLayers(unet.attn_processors).to(accelerator.device)"


# --- applying ------------------------------------------------------------------------------------------------


PATCH_CASES = {
    "accelerate": PatchCase(ACCELERATE_PATCH, ACCELERATE_TARGET, lambda d: extract_accelerate(d, ACCELERATE_TARGET)),
    "diffusers": PatchCase(DIFFUSERS_PATCH, DIFFUSERS_TARGET, copy_diffusers_fixture),
}


@pytest.mark.parametrize("case", PATCH_CASES.values(), ids=PATCH_CASES.keys())
def test_patch_applies_cleanly_then_reads_as_applied(case: PatchCase, tmp_path: Path, run_patch: PatchRunner) -> None:
    check_applies_cleanly(case, tmp_path, run_patch)


# --- diffusers: where the lines land, and the import guard ---------------------------------------------------


def added_lines(patch: Path, hunk: int) -> list[str]:
    """The `+` lines of the patch's `hunk`-th hunk (0-based), without the `+`."""
    hunks = patch.read_text().split("\n@@ ")[1:]
    return [line[1:] for line in hunks[hunk].splitlines()[1:] if line.startswith("+")]


def test_diffusers_patch_puts_lines_where_the_tutorial_does(diffusers_patched_lines: list[str]) -> None:
    lines = diffusers_patched_lines
    inserted = added_lines(DIFFUSERS_PATCH, 0)
    start = 49 - 1  # the tutorial inserts at line 49, upstream's empty line after the imports
    assert lines[start : start + len(inserted)] == inserted
    import_line = next(n for n, line in enumerate(lines, 1) if line.strip().startswith("import torch_tpu"))
    assert 49 <= import_line <= 53
    assert lines[43 - 1] == "from diffusers.loaders import AttnProcsLayers"  # the imports above stay put

    shift = len(inserted)
    assert lines[518 - 1 + shift] == LORA_LINE_PATCHED
    assert LORA_LINE_UPSTREAM not in lines
    assert lines[51 - 1 + shift] == 'check_min_version("0.20.0")'


def test_diffusers_patched_module_top_compiles(diffusers_patched_lines: list[str]) -> None:
    # Everything up to `logger = ...` is real top-level code; the fixture's later fragments are not compilable.
    end = next(n for n, line in enumerate(diffusers_patched_lines, 1) if line.startswith("logger = "))
    compile("\n".join(diffusers_patched_lines[:end]) + "\n", DIFFUSERS_TARGET, "exec")


def exec_import_guard() -> dict[str, Any]:
    namespace: dict[str, Any] = {"os": os}  # upstream imports os at line 20
    exec(compile("\n".join(added_lines(DIFFUSERS_PATCH, 0)), DIFFUSERS_TARGET, "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    ("device", "imports_torch_tpu"),
    [(None, False), ("cpu", False), ("cuda:0", False), ("tpu", True), ("tpu:0", True), ("tpu:3", True)],
)
def test_diffusers_import_guard(device: str | None, imports_torch_tpu: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = types.ModuleType("torch_tpu")
    monkeypatch.setitem(sys.modules, "torch_tpu", stand_in)
    if device is None:
        monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", device)

    namespace = exec_import_guard()

    assert ("torch_tpu" in namespace) is imports_torch_tpu
    if imports_torch_tpu:
        assert namespace["torch_tpu"] is stand_in


def test_diffusers_import_guard_fails_loudly_on_tpu_without_torch_tpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tpu", None)  # makes the import fail as if not installed
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "tpu:0")
    with pytest.raises(ImportError, match="torch_tpu"):
        exec_import_guard()


# --- accelerate: the GradScaler choice, run in fresh interpreters ---------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One `Accelerator(...)` construction for fixtures/accelerate_probe.py, and what it must produce."""

    name: str
    device: str | None  # ACCELERATE_TORCH_DEVICE; None leaves accelerate's default
    mixed_precision: str
    torch_tpu: str  # "available", "unavailable" or "missing"
    expected: dict[str, Any]
    scaler_kwargs: dict[str, Any] | None = None

    def spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "expected"}


def by_name(*scenarios: Scenario) -> dict[str, Scenario]:
    return {s.name: s for s in scenarios}


STAND_IN_SCALER = "__main__.StandInGradScaler"  # the probe's recording class
SCALER_KWARGS = {"init_scale": 1024.0, "growth_interval": 7}  # non-defaults: GradScalerKwargs drops defaults
# torch_tpu is "missing" in these, as on every non-tpu host; what upstream does here is the contract.
PARITY = by_name(
    Scenario("fp16-default-cpu", None, "fp16", "missing", {"scaler": None, "error": None}),
    Scenario("fp16-meta", "meta", "fp16", "missing", {"error": GPU_ERROR}),
    Scenario("no-meta", "meta", "no", "missing", {"scaler": None, "error": None}),
    Scenario("no-tpu-without-torch_tpu", "tpu:0", "no", "missing", {"scaler": None, "error": None}),
)
TPU = by_name(
    Scenario(
        "fp16-tpu",
        "tpu:0",
        "fp16",
        "available",
        {"device": "tpu:0", "native_amp": True, "scaler": STAND_IN_SCALER, "scaler_kwargs": SCALER_KWARGS},
        SCALER_KWARGS,
    ),
    Scenario("fp16-tpu-unavailable", "tpu:0", "fp16", "unavailable", {"error": GPU_ERROR}),
    # Deliberately unlike upstream (a ValueError about GPUs): name the missing package instead.
    Scenario("fp16-tpu-no-torch_tpu", "tpu:0", "fp16", "missing", {"error": re.compile("ModuleNotFound.*torch_tpu")}),
)


def probe(checkout: Path, scenarios: list[Scenario]) -> dict[str, dict[str, Any]]:
    # A clean slate: the caller's ACCELERATE_* settings or a real GPU would change what accelerate picks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(PYTHONPATH=str(checkout / "src"), CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, str(PROBE)],
        input=json.dumps([s.spec() for s in scenarios]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("PROBE-RESULT "))
    outcomes = json.loads(line.removeprefix("PROBE-RESULT "))
    for outcome in outcomes.values():  # proves PYTHONPATH beat the installed accelerate
        assert Path(outcome["accelerate_file"]).is_relative_to(checkout), outcome["accelerate_file"]
    return outcomes


@pytest.fixture(scope="module")
def upstream_outcomes(accelerate_upstream: Path) -> dict[str, dict[str, Any]]:
    return probe(accelerate_upstream, list(PARITY.values()))


@pytest.fixture(scope="module")
def patched_outcomes(accelerate_patched: Path) -> dict[str, dict[str, Any]]:
    # The tpu scenario goes first so that it runs in a truly fresh interpreter.
    return probe(accelerate_patched, [*TPU.values(), *PARITY.values()])


def assert_subset(expected: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Each expected key matches: equal, or for a compiled pattern, found by `search`."""
    for key, want in expected.items():
        got = outcome.get(key)
        matches = bool(isinstance(got, str) and want.search(got)) if isinstance(want, re.Pattern) else got == want
        assert matches, f"{key}: expected {want!r}, got {got!r} in {outcome}"


@pytest.mark.parametrize("name", TPU.keys())
def test_patched_accelerate_on_tpu(name: str, patched_outcomes: dict[str, dict[str, Any]]) -> None:
    assert_subset(TPU[name].expected, patched_outcomes[name])


@pytest.mark.parametrize("name", PARITY.keys())
def test_patched_accelerate_matches_upstream_off_tpu(
    name: str, upstream_outcomes: dict[str, dict[str, Any]], patched_outcomes: dict[str, dict[str, Any]]
) -> None:
    assert_subset(PARITY[name].expected, upstream_outcomes[name])  # pins upstream, so parity is not vacuous
    upstream, patched = (
        {k: v for k, v in outcomes[name].items() if k != "accelerate_file"}
        for outcomes in (upstream_outcomes, patched_outcomes)
    )
    assert patched == upstream
