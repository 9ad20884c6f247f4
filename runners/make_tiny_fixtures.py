"""Build a tiny, random, offline stand-in for the tutorial's model and dataset.

The real Stable Diffusion v1.4 weights are 4 GB and the pokemon dataset is gone from
the hub, yet the runners, the Ansible roles and CI must exercise the whole path:
load pipeline -> train LoRA -> save -> reload -> generate. This builds, in seconds and
without any download:

* a tiny SD-1.x pipeline folder (``model_index.json``, unet/, vae/, text_encoder/,
  tokenizer/, scheduler/) with the same component classes as the real one;
* a tiny captioned dataset as a parquet file (columns ``image`` and ``text``, like
  lambdalabs/pokemon-blip-captions) and as an imagefolder with ``metadata.jsonl``;
* optionally the download-share layout (``CompVis_SD14_pretrained_weights/``,
  ``dataset/`` ...) under one root, for testing ``SOPHON_SD_ASSETS``.

Usage: ``python runners/make_tiny_fixtures.py OUT_DIR [--bundle] [--num_images 8]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import sdkit_env  # noqa: E402

# Lower-case letters and a few words; enough for captions such as "a drawing of a green pokemon".
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORDS = ["a", "of", "the", "with", "and", "cute", "dragon", "creature", "pokemon", "drawing", "cartoon",
          "green", "red", "blue", "yellow", "bird", "fish", "cat"]
CAPTION_COLORS = ["green", "red", "blue", "yellow"]
CAPTION_THINGS = ["dragon", "bird", "fish", "cat"]

TINY_RESOLUTION = 16  # pixels; the tiny VAE halves it to 8x8 latents
TOKENIZER_MAX_LENGTH = 16


def write_tiny_tokenizer_files(folder: Path) -> None:
    """Write a small CLIP BPE vocabulary so CLIPTokenizer works without downloading one."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: Dict[str, int] = {}
    for token in list(_LETTERS) + [c + "</w>" for c in _LETTERS]:
        vocab[token] = len(vocab)
    merges = []
    # Build every word of _WORDS from letters by left-to-right merges so common words become one token.
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merged = current + piece
            if merged not in vocab:
                merges.append(f"{current} {piece}")
                vocab[merged] = len(vocab)
            current = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tiny_pipeline(out_dir: os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random StableDiffusionPipeline (safety checker None) to ``out_dir``."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        sample_size=TINY_RESOLUTION,
    )
    tokenizer_dir = out_dir / "_tokenizer_src"
    write_tiny_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=TOKENIZER_MAX_LENGTH
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # The real v1.4 folder ships a PNDM scheduler; training converts it to DDPM. Use DDPM with the
    # SD betas so the tiny pipeline behaves like the real one in both training and inference.
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    shutil.rmtree(tokenizer_dir)
    return out_dir


def tiny_images(num_images: int, size: int = 24, seed: int = 0):
    """Yield (PIL image, caption) pairs: coloured blobs whose caption names the colour."""
    rng = np.random.default_rng(seed)
    palette = {"green": (40, 200, 60), "red": (220, 40, 40), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
    for i in range(num_images):
        color = CAPTION_COLORS[i % len(CAPTION_COLORS)]
        thing = CAPTION_THINGS[(i // len(CAPTION_COLORS)) % len(CAPTION_THINGS)]
        pixels = rng.integers(200, 256, size=(size, size, 3), dtype=np.uint8)
        lo, hi = size // 4, 3 * size // 4
        pixels[lo:hi, lo:hi] = palette[color]
        yield Image.fromarray(pixels), f"a drawing of a {color} {thing}"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def build_tiny_parquet(path: os.PathLike, num_images: int = 8, seed: int = 0) -> Path:
    """Write a parquet file shaped like pokemon-blip-captions: ``image`` {"bytes", "path"} and ``text``.

    Written through ``datasets`` so the file carries the same Image feature metadata as
    the original parquet on the hub.
    """
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(tiny_images(num_images, seed=seed))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(img), "path": None} for img, _ in rows], "text": [t for _, t in rows]},
        features=features,
    )
    dataset.to_parquet(str(path))
    return path


def build_tiny_imagefolder(folder: os.PathLike, num_images: int = 8, seed: int = 0) -> Path:
    """Write PNG files plus ``metadata.jsonl`` (``file_name``, ``text``), the layout of --train_data_dir."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caption) in enumerate(tiny_images(num_images, seed=seed)):
        name = f"{i:04d}.png"
        image.save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def build_tiny_lora(model_dir: os.PathLike, out_dir: os.PathLike, rank: int = 4, seed: int = 1) -> Path:
    """Save random, non-zero LoRA attention processors for ``model_dir`` (stands in for sayakpaul's LoRA)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import LoRAAttnProcessor

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    procs = {}
    for name, (hidden, cross) in sdkit_env.attention_dims(unet).items():
        proc = LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=rank)
        for p in proc.parameters():  # LoRA "up" starts at zero; make it visible in the output
            torch.nn.init.normal_(p, std=0.5)
        procs[name] = proc
    unet.set_attn_processor(procs)
    unet.save_attn_procs(out_dir)
    return Path(out_dir)


def build_all(root: os.PathLike, num_images: int = 8, bundle: bool = False) -> Dict[str, Path]:
    """Build every fixture under ``root``; with ``bundle`` use the download-share folder names.

    Returns the paths: ``model``, ``parquet``, ``imagefolder``, ``lora`` (and ``bundle`` = root).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if bundle:
        model = build_tiny_pipeline(root / "CompVis_SD14_pretrained_weights")
        parquet = build_tiny_parquet(root / "dataset" / "data" / "train-00000-of-00001.parquet", num_images)
        imagefolder = build_tiny_imagefolder(root / "imagefolder", num_images)
        lora = build_tiny_lora(model, root / "sayakpau_sd_lora-t4")
        shutil.copytree(lora, root / "SophgoTrained_lroa_weight", dirs_exist_ok=True)
    else:
        model = build_tiny_pipeline(root / "tiny-sd")
        parquet = build_tiny_parquet(root / "tiny-pokemon.parquet", num_images)
        imagefolder = build_tiny_imagefolder(root / "tiny-imagefolder", num_images)
        lora = build_tiny_lora(model, root / "tiny-lora")
    return {"model": model, "parquet": parquet, "imagefolder": imagefolder, "lora": lora, "bundle": root}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to create the fixtures in")
    parser.add_argument("--num_images", type=int, default=8, help="rows in the tiny dataset (default 8)")
    parser.add_argument("--bundle", action="store_true",
                        help="lay the fixtures out like Sophgo's download share (use the folder as SOPHON_SD_ASSETS)")
    args = parser.parse_args(argv)
    paths = build_all(args.out_dir, num_images=args.num_images, bundle=args.bundle)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
