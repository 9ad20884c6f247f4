"""The fixture generator's command line."""

from __future__ import annotations

import json
from pathlib import Path


def test_cli_builds_the_download_share_layout(tmp_path, capsys):
    import make_tiny_fixtures

    assert make_tiny_fixtures.main([str(tmp_path), "--bundle", "--num_images", "3"]) == 0
    for folder in ("CompVis_SD14_pretrained_weights", "dataset", "sayakpau_sd_lora-t4", "SophgoTrained_lroa_weight"):
        assert (tmp_path / folder).is_dir()
    index = json.loads((tmp_path / "CompVis_SD14_pretrained_weights" / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["unet"][1] == "UNet2DConditionModel"
    assert len((tmp_path / "imagefolder" / "metadata.jsonl").read_text().splitlines()) == 3
    assert "model:" in capsys.readouterr().out


def test_sd14_shapes_on_meta_tensors_are_stable_diffusion_v1_4s():
    """The real-size configs, built on the meta device: the shapes without the 4 GB."""
    import torch

    import make_tiny_fixtures

    with torch.device("meta"):
        unet, vae, text_encoder = make_tiny_fixtures.build_models(make_tiny_fixtures.SD14, vocab_size=64)

    assert all(p.device.type == "meta" for m in (unet, vae, text_encoder) for p in m.parameters())
    assert [block.resnets[-1].out_channels for block in unet.down_blocks] == [320, 640, 1280, 1280]
    assert all(len(block.resnets) == 2 for block in unet.down_blocks)
    assert [hasattr(block, "attentions") for block in unet.down_blocks] == [True, True, True, False]
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert attn.attn1.heads == 8 and attn.attn2.to_k.in_features == 768
    assert unet.config.sample_size == 64  # 512 px through the VAE's factor of 8
    # 859.5 M parameters in the real UNet, 83.7 M in its VAE.
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 859.5
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6, 1) == 83.7
    assert [block.resnets[-1].out_channels for block in vae.encoder.down_blocks] == [128, 256, 512, 512]
    config = text_encoder.config
    assert (config.num_hidden_layers, config.hidden_size, config.max_position_embeddings) == (12, 768, 77)
    assert len(text_encoder.text_model.encoder.layers) == 12


def test_cached_build_is_reused_while_complete_and_rebuilt_when_interrupted(tmp_path, monkeypatch):
    import make_tiny_fixtures

    built = []
    monkeypatch.setattr(make_tiny_fixtures, "build_pipeline",
                        lambda out, shapes, seed=0: built.append(out) or Path(out).mkdir(parents=True))
    first = make_tiny_fixtures.build_cached(tmp_path / "cache", make_tiny_fixtures.TINY, num_images=2)
    again = make_tiny_fixtures.build_cached(tmp_path / "cache", make_tiny_fixtures.TINY, num_images=2)
    assert first == again and len(built) == 1 and first["parquet"].is_file()

    (tmp_path / "cache" / "complete.json").unlink()  # as an interrupted build leaves it
    make_tiny_fixtures.build_cached(tmp_path / "cache", make_tiny_fixtures.TINY, num_images=2)
    make_tiny_fixtures.build_cached(tmp_path / "cache", make_tiny_fixtures.TINY, num_images=3)  # other settings
    assert len(built) == 3


def test_the_tiny_model_is_saved_as_safetensors(tiny):
    """The runners load no pickled base model without --allow_pickle, make smoke and the tests included."""
    model = Path(tiny["model"])
    assert {p.parent.name for p in model.rglob("*.safetensors")} == {"unet", "vae", "text_encoder"}
    assert not [p for p in model.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
