"""Device resolution, open-files limit, offline switch and download-share paths."""

from __future__ import annotations

import logging
import resource
import sys
import types

import pytest
import torch

import sdkit_env
from sdkit_env import RunnerError


def fake_torch_tpu(available: bool, count: int) -> types.ModuleType:
    """A stand-in for Sophgo's torch_tpu exposing only the calls the runners make."""
    module = types.ModuleType("torch_tpu")
    module.tpu = types.SimpleNamespace(is_available=lambda: available, device_count=lambda: count)
    return module


def test_cpu_is_default(monkeypatch):
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    assert sdkit_env.resolve_device(None) == torch.device("cpu")


def test_env_device_used_when_no_flag(monkeypatch):
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cpu")
    assert sdkit_env.resolve_device(None).type == "cpu"


def test_tpu_without_torch_tpu_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tpu", None)  # makes `import torch_tpu` raise ImportError
    with pytest.raises(RunnerError, match="torch_tpu wheel"):
        sdkit_env.resolve_device("tpu:0")


def test_tpu_from_env_without_torch_tpu_never_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tpu", None)
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "tpu:0")
    with pytest.raises(RunnerError):
        sdkit_env.resolve_device(None)


def test_tpu_reporting_no_device_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tpu", fake_torch_tpu(False, 0))
    with pytest.raises(RunnerError) as info:
        sdkit_env.resolve_device("tpu")
    message = str(info.value)
    assert "bm-smi --noloop --text_format" in message and "lsmod | grep bmsophon" in message
    assert "/dev/bm-sophon" in message and "Not falling back" in message


def test_tpu_index_beyond_device_count(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tpu", fake_torch_tpu(True, 1))
    with pytest.raises(RunnerError, match="only 1 chip"):
        sdkit_env.resolve_device("tpu:1")


def test_tpu_available_resolves_to_tpu_device(subprocess_env):
    """In a child process: renaming torch's privateuse1 backend to "tpu" cannot be undone in this one."""
    import subprocess
    from pathlib import Path

    runners = Path(__file__).resolve().parents[3] / "runners"
    code = f"""
import sys, types, torch
sys.path.insert(0, {str(runners)!r})
module = types.ModuleType("torch_tpu")
module.tpu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
sys.modules["torch_tpu"] = module
torch.utils.rename_privateuse1_backend("tpu")  # what torch_tpu does; makes "tpu:N" a valid device
import os, sdkit_env
os.environ["LOCAL_RANK"] = "1"
print(sdkit_env.resolve_device("tpu:0"), sdkit_env.resolve_device("tpu"))
"""
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tpu:0", "tpu:1"]  # bare "tpu": one chip per accelerate process


def test_google_torch_tpu_is_recognised(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tpu", types.ModuleType("torch_tpu"))
    with pytest.raises(RunnerError, match="Google"):
        sdkit_env.resolve_device("tpu:0")


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RunnerError, match="cuda"):
        sdkit_env.resolve_device("cuda")


def test_unknown_device():
    with pytest.raises(RunnerError, match="not supported"):
        sdkit_env.resolve_device("npu")


def test_fp16_on_cpu_becomes_fp32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sdkit"):
        assert sdkit_env.resolve_dtype("fp16", torch.device("cpu")) == torch.float32
    assert "fp32 instead" in caplog.text


def test_open_files_soft_limit_raised_to_hard_limit(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        with caplog.at_level(logging.WARNING, logger="sdkit"):
            result = sdkit_env.raise_open_files_limit()
        expected = 65535 if hard == resource.RLIM_INFINITY else min(65535, hard)
        assert result == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == expected
        assert ("below the 65535" in caplog.text) == (expected < 65535)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_open_files_no_warning_when_hard_limit_allows(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(sdkit_env.resource, "getrlimit", lambda _: (1024, 1_048_576))
    monkeypatch.setattr(sdkit_env.resource, "setrlimit", lambda _, limits: calls.append(limits))
    with caplog.at_level(logging.WARNING, logger="sdkit"):
        assert sdkit_env.raise_open_files_limit() == 65535
    assert calls == [(65535, 1_048_576)]
    assert "below" not in caplog.text


def test_configure_offline_only_for_local_paths(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not sdkit_env.configure_offline(str(tmp_path), "CompVis/stable-diffusion-v1-4")
    assert "HF_HUB_OFFLINE" not in __import__("os").environ
    assert sdkit_env.configure_offline(str(tmp_path), None)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_bundle_maps_tutorial_hub_ids(tiny_bundle, monkeypatch):
    monkeypatch.setenv("SOPHON_SD_ASSETS", str(tiny_bundle["bundle"]))
    assets = sdkit_env.assets_root()
    assert sdkit_env.resolve_model_dir("CompVis/stable-diffusion-v1-4", assets) == str(tiny_bundle["model"])
    assert sdkit_env.resolve_source("lambdalabs/pokemon-blip-captions", assets).endswith("/dataset")
    assert sdkit_env.resolve_source("sayakpaul/sd-model-finetuned-lora-t4", assets).endswith("sayakpau_sd_lora-t4")
    for folder in ("CompVis_SD14_pretrained_weights", "dataset", "sayakpau_sd_lora-t4", "SophgoTrained_lroa_weight"):
        assert (tiny_bundle["bundle"] / folder).is_dir()


def test_hub_id_without_bundle_stays_a_hub_id():
    assert sdkit_env.resolve_model_dir("CompVis/stable-diffusion-v1-4", None) == "CompVis/stable-diffusion-v1-4"


def test_missing_model_folder_names_path_and_contents(tmp_path):
    with pytest.raises(RunnerError) as info:
        sdkit_env.resolve_model_dir(str(tmp_path / "nope"), None)
    assert str(tmp_path / "nope") in str(info.value) and "model_index.json" in str(info.value)
    with pytest.raises(RunnerError, match="no model_index.json"):
        sdkit_env.resolve_model_dir(str(tmp_path), None)


def test_nested_pipeline_folder_accepted(tiny, tmp_path):
    import shutil

    shutil.copytree(tiny["model"], tmp_path / "share" / "stable-diffusion-v1-4")
    assert sdkit_env.resolve_model_dir(str(tmp_path / "share"), None) == str(tmp_path / "share" / "stable-diffusion-v1-4")


def test_missing_assets_folder(tmp_path):
    with pytest.raises(RunnerError, match="assets folder"):
        sdkit_env.assets_root(str(tmp_path / "nope"))


def test_hub_token_file_wins_over_the_flag(tmp_path, monkeypatch):
    """Issue 9 item 6 (tokens): the runners take the token from SOPHON_SD_HUB_TOKEN_FILE, then --hub_token."""
    import os

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SOPHON_SD_HUB_TOKEN_FILE"):
        monkeypatch.setenv(name, "")  # so that monkeypatch removes what apply_hub_token sets
        monkeypatch.delenv(name)
    assert sdkit_env.apply_hub_token() is False and "HF_TOKEN" not in os.environ
    assert sdkit_env.apply_hub_token("from-flag") is True
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("SOPHON_SD_HUB_TOKEN_FILE", str(token_file))
    assert sdkit_env.apply_hub_token("from-flag") is True
    assert os.environ["HF_TOKEN"] == os.environ["HUGGING_FACE_HUB_TOKEN"] == "from-file"
    monkeypatch.setenv("SOPHON_SD_HUB_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(RunnerError, match="cannot be read"):
        sdkit_env.apply_hub_token()


def test_timesteps_are_int32_on_tpu_only():
    """torch_tpu has no int64 (Sophgo's script: timesteps.to(torch.int32)); elsewhere upstream's int64."""
    assert sdkit_env.index_dtype(torch.device("cpu")) == torch.int64
    # A look-alike: torch.device("tpu:0") needs the backend renamed, which cannot be undone in this process.
    assert sdkit_env.index_dtype(types.SimpleNamespace(type="tpu", index=0)) == torch.int32
