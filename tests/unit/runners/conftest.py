"""Shared fixtures for the runner tests: a tiny offline SD pipeline and datasets, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
RUNNERS = REPO / "runners"
sys.path.insert(0, str(RUNNERS))

# Nothing in these tests may reach the hub; one thread avoids oversubscription on small CI machines.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the tiny model, parquet dataset, imagefolder and LoRA (see make_tiny_fixtures.build_all)."""
    import make_tiny_fixtures

    return make_tiny_fixtures.build_all(tmp_path_factory.mktemp("tiny"), num_images=8)


@pytest.fixture(scope="session")
def tiny_pickled(tiny, tmp_path_factory):
    """The tiny model saved the old way: every component's weights as a pickle (.bin) only."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("pickled") / "tiny-sd"
    StableDiffusionPipeline.from_pretrained(str(tiny["model"])).save_pretrained(folder, safe_serialization=False)
    assert not list(folder.rglob("*.safetensors")) and list(folder.rglob("*.bin"))
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The same fixtures laid out like Sophgo's download share (for SOPHON_SD_ASSETS)."""
    import make_tiny_fixtures

    return make_tiny_fixtures.build_all(tmp_path_factory.mktemp("bundle"), num_images=4, bundle=True)


def _reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; each in-process run must start from scratch.

    0.16 has two; 0.30 adds PartialState, which AcceleratorState builds on.
    """
    import accelerate.state

    for name in ("PartialState", "AcceleratorState", "GradientState"):
        if hasattr(accelerate.state, name):
            getattr(accelerate.state, name)._shared_state.clear()


@pytest.fixture(scope="session")
def reset_accelerate():
    """The reset function, for fixtures that run a runner outside run_runner."""
    return _reset_accelerate


@pytest.fixture
def run_runner(monkeypatch):
    """Run a runner's main in this process, as its __main__ would; returns the exit code."""
    import sdkit_env

    def run(module_name: str, argv):
        module = __import__(module_name)
        monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", os.environ.get("ACCELERATE_TORCH_DEVICE", "cpu"))
        _reset_accelerate()
        try:
            return sdkit_env.run_main(module.main, [str(a) for a in argv])
        finally:
            _reset_accelerate()

    return run


@pytest.fixture
def subprocess_env():
    """Environment for runners started as real processes (offline, CPU, one thread)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               ACCELERATE_TORCH_DEVICE="cpu", PYTHONWARNINGS="ignore")
    env.pop("SOPHON_SD_ASSETS", None)
    return env
