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


def lora_copy(tiny, folder, edit=None, pickle=False):
    """A copy of the tiny LoRA in ``folder``, its tensors changed by ``edit``, saved as .bin with ``pickle``."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny["lora"] / "pytorch_lora_weights.safetensors"))
    if edit:
        tensors = edit(tensors)
    folder.mkdir(parents=True)
    if pickle:
        torch.save(tensors, folder / "pytorch_lora_weights.bin")
    else:
        save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def test_pickled_lora_needs_allow_pickle(tiny, tmp_path, run_runner, capsys):
    """Issue 9 item 4 (untrusted pickles): no silent fall back to pytorch_lora_weights.bin."""
    folder = lora_copy(tiny, tmp_path / "bin-lora", pickle=True)
    common = ["--model", tiny["model"], "--steps", "2", "--seed", "1", "--output_dir", tmp_path / "out"]
    for lora in (folder, folder / "pytorch_lora_weights.bin"):
        assert run_runner("infer", common + ["--lora", lora]) == 2
        err = capsys.readouterr().err
        assert "pickle" in err and "--allow_pickle" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out" / "pokemon_lora.png").exists()
    assert run_runner("infer", common + ["--lora", folder, "--allow_pickle"]) == 0
    # Same weights as the safetensors original.
    assert run_runner("infer", common[:-1] + [tmp_path / "safe", "--lora", tiny["lora"]]) == 0
    assert np.array_equal(pixels(tmp_path / "out" / "pokemon_lora.png"), pixels(tmp_path / "safe" / "pokemon_lora.png"))


def test_lora_for_another_model_is_refused_before_generating(tiny, tmp_path, run_runner, capsys):
    """Issue 9 (a LoRA for another model fails late): keys or shapes that do not fit the UNet, one line."""
    import torch

    def wider(tensors):
        key = next(k for k in tensors if k.endswith("to_k_lora.down.weight"))
        return {**tensors, key: torch.zeros(tensors[key].shape[0], tensors[key].shape[1] * 2)}

    def elsewhere(tensors):
        return {k.replace("down_blocks.0.", "down_blocks.7."): v for k, v in tensors.items()}

    for name, edit, says in (("wider", wider, "has shape"), ("elsewhere", elsewhere, "does not have")):
        lora = lora_copy(tiny, tmp_path / name, edit)
        rc = run_runner("infer", ["--model", tiny["model"], "--lora", lora, "--steps", "2",
                                  "--output_dir", tmp_path / "out"])
        err = capsys.readouterr().err
        assert rc == 2 and "do not fit the model" in err and says in err, err
        assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err  # before: the pipeline's bar
    assert not (tmp_path / "out" / "pokemon_lora.png").exists()


def test_image_size_not_a_multiple_of_8_is_one_line(tiny, tmp_path, run_runner, capsys):
    """Issue 9 (early validation): diffusers would raise deep inside the pipeline."""
    assert run_runner("infer", ["--model", tiny["model"], "--height", "20", "--output_dir", tmp_path]) == 2
    err = capsys.readouterr().err
    assert "--height 20 is not a positive multiple of 8" in err and len(err.strip().splitlines()) == 1


def test_both_lora_formats_give_the_same_image(tiny, tmp_path, run_runner):
    """diffusers 0.20's attention processors and diffusers 0.29's peft format, holding the same LoRA, load on
    either flow (diffusers 0.20 through sdkit_lora's renaming) and generate the same pixels."""
    common = ["--model", tiny["model"], "--steps", "2", "--seed", "1"]
    for name in ("lora", "peft_lora"):
        assert run_runner("infer", common + ["--output_dir", tmp_path / name, "--lora", tiny[name]]) == 0
    a, b = (pixels(tmp_path / name / "pokemon_lora.png") for name in ("lora", "peft_lora"))
    assert np.abs(a.astype(int) - b).max() <= 1  # rounding to 8 bits; both differ from the base model


def test_peft_lora_diffusers_020_cannot_express_is_one_line(tiny, tmp_path, run_runner, capsys):
    import pytest
    import sdkit_lora

    if sdkit_lora.uses_peft():
        pytest.skip("diffusers 0.29 loads any peft-format LoRA itself; the refusal is diffusers 0.20's")
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny["peft_lora"] / "pytorch_lora_weights.safetensors"))
    # A LoRA of the transformer's input projection as well: peft can, diffusers 0.20's processors cannot.
    hidden = next(t for k, t in tensors.items() if k.startswith("unet.down_blocks.0.") and "to_q.lora.down" in k).shape[1]
    prefix = "unet.down_blocks.0.attentions.0.proj_in.lora"
    tensors.update({f"{prefix}.down.weight": torch.zeros(4, hidden), f"{prefix}.up.weight": torch.zeros(hidden, 4)})
    (tmp_path / "conv").mkdir()
    save_file(tensors, str(tmp_path / "conv" / "pytorch_lora_weights.safetensors"))
    rc = run_runner("infer", ["--model", tiny["model"], "--lora", tmp_path / "conv", "--steps", "2",
                              "--output_dir", tmp_path / "out"])
    err = capsys.readouterr().err
    assert rc == 2 and "peft format" in err and "sophgo-peft" in err and len(err.strip().splitlines()) == 1, err


def test_a_pickled_base_model_needs_allow_pickle(tiny_pickled, tmp_path, run_runner, capsys):
    """Issue 21 item 5: --allow_pickle covered LoRA files only; the base model's .bin weights were unpickled."""
    common = ["--model", tiny_pickled, "--output_dir", tmp_path, "--steps", "2", "--dtype", "fp32"]
    assert run_runner("infer", common) == 2
    err = capsys.readouterr().err
    assert "weights only as a pickle" in err and "--allow_pickle" in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.png"))
    assert run_runner("infer", common + ["--allow_pickle"]) == 0
