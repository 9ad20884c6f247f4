"""infer.py: base model and LoRA, determinism, file naming, errors."""

from __future__ import annotations

import numpy as np
from PIL import Image


def pixels(path):
    return np.asarray(Image.open(path))


def test_base_model_default_name(tiny, tmp_path, run_runner):
    assert run_runner("infer", ["--model", tiny["model"], "--output_dir", tmp_path, "--steps", "3"]) == 0
    assert (tmp_path / "pokemon.png").is_file()


def test_same_seed_same_pixels_other_seed_differs(tiny, tmp_path, run_runner):
    for name, seed in (("a", 42), ("b", 42), ("c", 7)):
        argv = ["--model", tiny["model"], "--output_dir", tmp_path / name, "--steps", "3", "--seed", seed]
        assert run_runner("infer", argv) == 0
    a, b, c = (pixels(tmp_path / n / "pokemon.png") for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_lora_changes_the_image_and_uses_lora_name(tiny, tmp_path, run_runner):
    common = ["--model", tiny["model"], "--steps", "3", "--seed", "1"]
    assert run_runner("infer", common + ["--output_dir", tmp_path]) == 0
    assert run_runner("infer", common + ["--output_dir", tmp_path, "--lora", tiny["lora"]]) == 0
    lora_file = tiny["lora"] / "pytorch_lora_weights.safetensors"
    assert run_runner("infer", common + ["--output_dir", tmp_path / "file", "--lora", lora_file]) == 0
    assert not np.array_equal(pixels(tmp_path / "pokemon.png"), pixels(tmp_path / "pokemon_lora.png"))
    assert np.array_equal(pixels(tmp_path / "pokemon_lora.png"), pixels(tmp_path / "file" / "pokemon_lora.png"))


def test_several_prompts_and_images_are_numbered(tiny, tmp_path, run_runner):
    argv = ["--model", tiny["model"], "--output_dir", tmp_path, "--steps", "2", "--prompt", "a red bird",
            "--prompt", "a blue fish", "--num_images", "2"]
    assert run_runner("infer", argv) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "pokemon_0_0.png", "pokemon_0_1.png", "pokemon_1_0.png", "pokemon_1_1.png"]


def test_tutorial_hub_ids_through_the_bundle(tiny_bundle, tmp_path, run_runner, monkeypatch):
    monkeypatch.setenv("SOPHON_SD_ASSETS", str(tiny_bundle["bundle"]))
    argv = ["--lora", "sayakpaul/sd-model-finetuned-lora-t4", "--output_dir", tmp_path, "--steps", "2"]
    assert run_runner("infer", argv) == 0
    assert (tmp_path / "pokemon_lora.png").is_file()


def test_missing_lora_and_model_are_one_line_errors(tiny, tmp_path, run_runner, capsys):
    assert run_runner("infer", ["--model", tiny["model"], "--lora", tmp_path / "none", "--output_dir", tmp_path]) == 2
    assert "not found" in capsys.readouterr().err
    assert run_runner("infer", ["--model", tmp_path / "none", "--output_dir", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "model_index.json" in err and len(err.strip().splitlines()) == 1


def test_tpu_without_torch_tpu_refuses(tiny, tmp_path, run_runner, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_tpu", None)
    assert run_runner("infer", ["--model", tiny["model"], "--device", "tpu:0", "--output_dir", tmp_path]) == 2
    assert "torch_tpu" in capsys.readouterr().err
    assert not (tmp_path / "pokemon.png").exists()
