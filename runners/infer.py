#!/usr/bin/env python
"""Text-to-image with Stable Diffusion on a BM1684X TPU (or CPU/GPU): the tutorial's two programs in one.

Without ``--lora`` this is the tutorial's first program (base model, 20 steps, writes
``pokemon.png``); with ``--lora`` it is the second (LoRA attention processors loaded with
``pipe.unet.load_attn_procs``, 30 steps, guidance 7.5, writes ``pokemon_lora.png``).

Examples::

    python runners/infer.py --device tpu:0
    python runners/infer.py --device tpu:0 --lora sayakpaul/sd-model-finetuned-lora-t4
    SOPHON_SD_ASSETS=/data/share python runners/infer.py --lora sd-pokemon-model-lora_fp16 --num_images 4

Noise is drawn from a generator on the device seeded with ``--seed``, so the same seed on
the same device gives the same pixels.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sdkit_env  # noqa: E402
from sdkit_env import RunnerError  # noqa: E402

logger = logging.getLogger("sdkit.infer")

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_PROMPT = "cute dragon creature"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stable Diffusion text-to-image, optionally with LoRA weights (Sophgo tutorial's inference).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="Hub id or local pipeline folder (model_index.json); the tutorial's hub id maps to the "
                             "download share with --assets / SOPHON_SD_ASSETS.")
    parser.add_argument("--lora", default=None,
                        help="LoRA attention-processor weights: a folder, a .safetensors/.bin file or a hub id "
                             "(e.g. sayakpaul/sd-model-finetuned-lora-t4 or a train_lora.py --output_dir).")
    parser.add_argument("--prompt", action="append", default=None,
                        help=f"Prompt; repeat for several prompts (default {DEFAULT_PROMPT!r}).")
    parser.add_argument("--num_images", type=int, default=1, help="Images per prompt.")
    parser.add_argument("--steps", type=int, default=None, help="Denoising steps (default 20, or 30 with --lora).")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    parser.add_argument("--height", type=int, default=None, help="Image height (default: the model's, 512 for v1.4).")
    parser.add_argument("--width", type=int, default=None, help="Image width (default: the model's).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the device generator.")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"],
                        help="Weights' precision; fp16 is replaced by fp32 on the CPU.")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda[:N] or tpu[:N]; defaults to $ACCELERATE_TORCH_DEVICE, then cpu.")
    parser.add_argument("--output_dir", default=".", help="Where the PNG files are written.")
    parser.add_argument("--output_name", default=None,
                        help="File name stem (default pokemon, or pokemon_lora with --lora).")
    parser.add_argument("--assets", default=None, help="Root of Sophgo's download share; defaults to $SOPHON_SD_ASSETS.")
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")
    return parser.parse_args(argv)


def output_paths(output_dir: Path, stem: str, num_prompts: int, num_images: int) -> List[List[Path]]:
    """One name per image: the tutorial's single file name when there is one image, numbered otherwise."""
    if num_prompts == 1 and num_images == 1:
        return [[output_dir / f"{stem}.png"]]
    return [[output_dir / (f"{stem}_{p}_{i}.png" if num_prompts > 1 else f"{stem}_{i}.png") for i in range(num_images)]
            for p in range(num_prompts)]


def load_lora(pipe, lora: str, assets) -> None:
    """Load LoRA attention processors the way the tutorial does (``pipe.unet.load_attn_procs``)."""
    source = sdkit_env.resolve_source(lora, assets)
    path = Path(source)
    try:
        if path.is_file():
            pipe.unet.load_attn_procs(str(path.parent), weight_name=path.name)
        elif path.is_dir():
            names = [n for n in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin") if (path / n).is_file()]
            if not names:
                raise RunnerError(f"LoRA folder '{path}' holds neither pytorch_lora_weights.safetensors nor .bin")
            pipe.unet.load_attn_procs(str(path), weight_name=names[0])
        elif sdkit_env.looks_like_local_path(lora):
            raise RunnerError(f"LoRA weights '{lora}' not found")
        else:
            pipe.unet.load_attn_procs(source)
    except RunnerError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if path.exists():
            raise RunnerError(f"cannot load LoRA weights from '{path}' (made for another base model?): {exc}") from None
        raise sdkit_env.hub_error("LoRA weights", lora, exc) from None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sdkit_env.setup_logging(args.verbose)
    device = sdkit_env.resolve_device(args.device)
    dtype = sdkit_env.resolve_dtype(args.dtype, device)
    assets = sdkit_env.assets_root(args.assets)
    model_dir = sdkit_env.resolve_model_dir(args.model, assets)
    lora_source = sdkit_env.resolve_source(args.lora, assets) if args.lora else None
    sdkit_env.configure_offline(model_dir, lora_source)

    import torch
    from diffusers import StableDiffusionPipeline

    # Global seeding as the tutorial does, for anything not driven by the generator below.
    sdkit_env.seed_everything(args.seed)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, revision=None, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        if os.path.isdir(model_dir):
            raise RunnerError(f"cannot load the Stable Diffusion pipeline in '{model_dir}': {exc}") from None
        raise sdkit_env.hub_error("model", args.model, exc) from None
    if args.lora:
        load_lora(pipe, args.lora, assets)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=not args.verbose)

    steps = args.steps or (30 if args.lora else 20)
    prompts = args.prompt or [DEFAULT_PROMPT]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_name or ("pokemon_lora" if args.lora else "pokemon")
    paths = output_paths(output_dir, stem, len(prompts), args.num_images)

    generator = sdkit_env.make_generator(device, args.seed)
    for prompt, prompt_paths in zip(prompts, paths):
        with torch.no_grad():
            images = pipe(prompt, num_inference_steps=steps, guidance_scale=args.guidance_scale,
                          height=args.height, width=args.width, num_images_per_prompt=args.num_images,
                          generator=generator).images
        for image, path in zip(images, prompt_paths):
            image.save(path)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(sdkit_env.run_main(main))
