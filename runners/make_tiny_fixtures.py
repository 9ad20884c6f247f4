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

``--size sd14`` builds instead a pipeline with Stable Diffusion v1.4's real shapes and random
weights (about 4 GB, for ``make bench SIZE=sd14``; never built in CI) and a parquet dataset.

Usage: ``python runners/make_tiny_fixtures.py OUT_DIR [--bundle] [--num_images 8] [--size tiny|sd14]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

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


@dataclass(frozen=True)
class PipelineShapes:
    """The sizes that tell one SD-1.x pipeline from another; everything else is shared."""

    name: str
    resolution: int  # the pixel size the UNet's sample_size is derived from (VAE downsamples by 2**(blocks-1))
    unet_channels: Tuple[int, ...]
    unet_down_blocks: Tuple[str, ...]
    unet_up_blocks: Tuple[str, ...]
    unet_layers_per_block: int
    cross_attention_dim: int
    attention_head_dim: int  # diffusers' legacy name: for SD-1.x it is the number of heads
    vae_channels: Tuple[int, ...]
    vae_layers_per_block: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_positions: int
    text_act: str


TINY = PipelineShapes(
    name="tiny", resolution=TINY_RESOLUTION, unet_channels=(32, 64),
    unet_down_blocks=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    unet_up_blocks=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), unet_layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, vae_channels=(32, 64), vae_layers_per_block=1,
    text_hidden=32, text_intermediate=37, text_layers=2, text_heads=4, text_positions=TOKENIZER_MAX_LENGTH,
    text_act="quick_gelu",
)

# CompVis/stable-diffusion-v1-4's configs (unet/, vae/, text_encoder/config.json), with random weights.
SD14 = PipelineShapes(
    name="sd14", resolution=512, unet_channels=(320, 640, 1280, 1280),
    unet_down_blocks=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    unet_up_blocks=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    unet_layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
    vae_channels=(128, 256, 512, 512), vae_layers_per_block=2,
    text_hidden=768, text_intermediate=3072, text_layers=12, text_heads=12, text_positions=77,
    text_act="quick_gelu",
)

SHAPES = {shapes.name: shapes for shapes in (TINY, SD14)}


def build_models(shapes: PipelineShapes, vocab_size: int, special_ids: Tuple[int, int, int] = (0, 1, 1)):
    """The UNet, VAE and CLIP text encoder of ``shapes`` with random weights.

    Inside ``with torch.device("meta"):`` nothing is allocated, which is how the tests check the
    real-size shapes and how the benchmark counts FLOPs at 512 px. ``special_ids``: bos, eos, pad.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae_scale = 2 ** (len(shapes.vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=shapes.resolution // vae_scale,
        block_out_channels=shapes.unet_channels,
        layers_per_block=shapes.unet_layers_per_block,
        down_block_types=shapes.unet_down_blocks,
        up_block_types=shapes.unet_up_blocks,
        cross_attention_dim=shapes.cross_attention_dim,
        attention_head_dim=shapes.attention_head_dim,
        in_channels=4,
        out_channels=4,
    )
    vae = AutoencoderKL(
        block_out_channels=shapes.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(shapes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(shapes.vae_channels),
        latent_channels=4,
        layers_per_block=shapes.vae_layers_per_block,
        sample_size=shapes.resolution,
    )
    bos, eos, pad = special_ids
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=shapes.text_hidden,
            intermediate_size=shapes.text_intermediate,
            num_hidden_layers=shapes.text_layers,
            num_attention_heads=shapes.text_heads,
            max_position_embeddings=shapes.text_positions,
            hidden_act=shapes.text_act,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    )
    return unet, vae, text_encoder


def build_pipeline(out_dir: os.PathLike, shapes: PipelineShapes = TINY, seed: int = 0) -> Path:
    """Save a random StableDiffusionPipeline of ``shapes`` (safety checker None) to ``out_dir``."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer_dir = out_dir / "_tokenizer_src"
    write_tiny_tokenizer_files(tokenizer_dir)
    # A small vocabulary is enough: the cost of the text encoder is its layers and positions, not its vocabulary.
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=shapes.text_positions
    )
    unet, vae, text_encoder = build_models(
        shapes, len(tokenizer), (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))
    # The real v1.4 folder ships a PNDM scheduler; training converts it to DDPM. Use DDPM with the
    # SD betas so the random pipeline behaves like the real one in both training and inference.
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    # safetensors whatever the library's default: the runners load no pickled base model without --allow_pickle.
    pipe.save_pretrained(out_dir, safe_serialization=True)
    shutil.rmtree(tokenizer_dir)
    return out_dir


def build_tiny_pipeline(out_dir: os.PathLike, seed: int = 0) -> Path:
    """Save a tiny random StableDiffusionPipeline (safety checker None) to ``out_dir``."""
    return build_pipeline(out_dir, TINY, seed)


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


def build_tiny_parquet(path: os.PathLike, num_images: int = 8, seed: int = 0, image_size: int = 24) -> Path:
    """Write a parquet file shaped like pokemon-blip-captions: ``image`` {"bytes", "path"} and ``text``.

    Written through ``datasets`` so the file carries the same Image feature metadata as
    the original parquet on the hub.
    """
    import datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(tiny_images(num_images, size=image_size, seed=seed))
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


def tiny_lora_tensors(model_dir: os.PathLike, rank: int = 4, seed: int = 1) -> Dict[Tuple[str, str, str], torch.Tensor]:
    """Random, non-zero LoRA weights for every attention projection of ``model_dir``'s UNet.

    Keyed (attention module, projection, "down" or "up"); written by the two builders below in the two
    formats, which therefore hold the same LoRA. Made without diffusers' LoRA classes, so both flows
    (diffusers 0.20 and 0.29) build identical files.
    """
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", use_safetensors=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (hidden, cross) in sdkit_env.attention_dims(unet).items():
        attention = name[: -len(".processor")]
        for projection, size_in in (("to_q", hidden), ("to_k", cross or hidden), ("to_v", cross or hidden),
                                    ("to_out", hidden)):
            # std 0.5: LoRA "up" starts at zero in training; make it visible in the output
            tensors[attention, projection, "down"] = 0.5 * torch.randn(rank, size_in, generator=generator)
            tensors[attention, projection, "up"] = 0.5 * torch.randn(hidden, rank, generator=generator)
    return tensors


def build_tiny_lora(model_dir: os.PathLike, out_dir: os.PathLike, rank: int = 4, seed: int = 1, peft: bool = False) -> Path:
    """Save random LoRA weights for ``model_dir`` (stands in for sayakpaul's LoRA): diffusers 0.20's
    save_attn_procs format, or with ``peft`` the same LoRA in diffusers 0.29's (save_lora_weights' keys)."""
    from safetensors.torch import save_file

    def key(attention: str, projection: str, direction: str) -> str:
        if peft:
            return f"unet.{attention}.{'to_out.0' if projection == 'to_out' else projection}.lora.{direction}.weight"
        return f"{attention}.processor.{projection}_lora.{direction}.weight"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {key(*name): tensor for name, tensor in tiny_lora_tensors(model_dir, rank, seed).items()}
    save_file(tensors, str(out_dir / "pytorch_lora_weights.safetensors"))
    return out_dir


def build_all(root: os.PathLike, num_images: int = 8, bundle: bool = False) -> Dict[str, Path]:
    """Build every fixture under ``root``; with ``bundle`` use the download-share folder names.

    Returns the paths: ``model``, ``parquet``, ``imagefolder``, ``lora`` (attention processors), ``peft_lora``
    (the same LoRA in the peft format) and ``bundle`` (= root).
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
    peft_lora = build_tiny_lora(model, root / "tiny-peft-lora", peft=True)
    return {"model": model, "parquet": parquet, "imagefolder": imagefolder, "lora": lora, "peft_lora": peft_lora,
            "bundle": root}


def build_cached(cache_dir: os.PathLike, shapes: PipelineShapes, num_images: int = 8,
                 image_size: Optional[int] = None) -> Dict[str, Path]:
    """Build ``model`` and ``parquet`` for ``shapes`` into ``cache_dir`` once; reuse them while complete.

    SD v1.4's shapes are about 4 GB of random weights and minutes of CPU, so a finished build leaves
    ``complete.json`` (written last) and a later call with the same settings only returns the paths.
    An interrupted build has no such file and is rebuilt from scratch.
    """
    cache_dir = Path(cache_dir)
    image_size = image_size or shapes.resolution
    wanted = {"shapes": asdict(shapes), "num_images": num_images, "image_size": image_size}
    paths = {"model": cache_dir / "model", "parquet": cache_dir / "train.parquet"}
    marker = cache_dir / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(wanted)):
        return paths
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    build_pipeline(paths["model"], shapes)
    build_tiny_parquet(paths["parquet"], num_images, image_size=image_size)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder to create the fixtures in")
    parser.add_argument("--num_images", type=int, default=8, help="rows in the tiny dataset (default 8)")
    parser.add_argument("--bundle", action="store_true",
                        help="lay the fixtures out like Sophgo's download share (use the folder as SOPHON_SD_ASSETS)")
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny",
                        help="tiny (default: every fixture, seconds) or sd14 (SD v1.4's real shapes, random "
                             "weights, about 4 GB: only the model and a parquet dataset, reused while complete)")
    args = parser.parse_args(argv)
    if args.size == "tiny":
        paths = build_all(args.out_dir, num_images=args.num_images, bundle=args.bundle)
    else:
        paths = build_cached(args.out_dir, SHAPES[args.size], num_images=args.num_images)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
