#!/usr/bin/env python
"""Text-to-image with Stable Diffusion on a BM1684X TPU (or CPU/GPU): the tutorial's two programs in one.

Without ``--lora`` this is the tutorial's first program (base model, 20 steps, writes
``pokemon.png``); with ``--lora`` it is the second (LoRA attention processors loaded with
``pipe.unet.load_attn_procs``, 30 steps, guidance 7.5, writes ``pokemon_lora.png``).

LoRA weights of both kinds load: diffusers 0.20's attention processors (the tutorial's, and what
train_lora.py writes there) and diffusers 0.29's peft format (what train_lora.py writes under the
sophgo-peft profile); see sdkit_lora.load_lora for what each diffusers version can take.

Examples::

    python runners/infer.py --device tpu:0
    python runners/infer.py --device tpu:0 --lora sayakpaul/sd-model-finetuned-lora-t4
    SOPHON_SD_ASSETS=/data/share python runners/infer.py --lora sd-pokemon-model-lora_fp16 --num_images 4

Noise is drawn from a generator on the device seeded with ``--seed``, so the same seed on
the same device gives the same pixels.

Base-model and LoRA weights are read from ``.safetensors`` only: a ``.bin`` is a pickle, and loading
one runs whatever code it holds (torch 2.1's ``torch.load``). ``--allow_pickle`` lets the operator
load a ``.bin`` they trust, such as the tutorial's sayakpaul/sd-model-finetuned-lora-t4. Weights made for
another base model are refused before generation starts, with the first layer that does not fit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sdkit_env  # noqa: E402
import sdkit_lora  # noqa: E402
from sdkit_env import RunnerError  # noqa: E402

logger = logging.getLogger("sdkit.infer")

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
DEFAULT_PROMPT = "cute dragon creature"
SAFE_WEIGHTS = sdkit_lora.WEIGHTS_NAME
PICKLE_WEIGHTS = "pytorch_lora_weights.bin"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Stable Diffusion text-to-image, optionally with LoRA weights (Sophgo tutorial's inference).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="Hub id or local pipeline folder (model_index.json); the tutorial's hub id maps to the "
                             "download share with --assets / SOPHON_SD_ASSETS.")
    parser.add_argument("--lora", default=None,
                        help="LoRA weights (attention-processor or peft format): a folder, a .safetensors/.bin file "
                             "or a hub id "
                             "(e.g. sayakpaul/sd-model-finetuned-lora-t4 or a train_lora.py --output_dir).")
    parser.add_argument("--prompt", action="append", default=None,
                        help=f"Prompt; repeat for several prompts (default {DEFAULT_PROMPT!r}).")
    parser.add_argument("--allow_pickle", action="store_true",
                        help="Also load LoRA and base-model weights saved as a pickle (.bin, e.g. the tutorial's "
                             "sayakpaul/sd-model-finetuned-lora-t4). Loading a pickle can run code hidden in it: "
                             "pass this only for files whose origin you trust.")
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
    args = parser.parse_args(argv)
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and (value <= 0 or value % 8):
            raise RunnerError(f"{flag} {value} is not a positive multiple of 8 (the VAE turns each 8x8 block of pixels "
                              "into one latent)")
    return args


def output_paths(output_dir: Path, stem: str, num_prompts: int, num_images: int) -> List[List[Path]]:
    """One name per image: the tutorial's single file name when there is one image, numbered otherwise."""
    if num_prompts == 1 and num_images == 1:
        return [[output_dir / f"{stem}.png"]]
    return [[output_dir / (f"{stem}_{p}_{i}.png" if num_prompts > 1 else f"{stem}_{i}.png") for i in range(num_images)]
            for p in range(num_prompts)]


def lora_weights_file(lora: str, assets, allow_pickle: bool) -> Path:
    """The local file holding ``--lora``'s weights: the file given, the weights in a folder, or a hub download."""
    source = sdkit_env.resolve_source(lora, assets)
    path = Path(source)
    names = [SAFE_WEIGHTS, PICKLE_WEIGHTS] if allow_pickle else [SAFE_WEIGHTS]
    if path.is_dir():
        found = [path / n for n in names if (path / n).is_file()]
        if found:
            return found[0]
        if (path / PICKLE_WEIGHTS).is_file():
            return path / PICKLE_WEIGHTS  # refused by the caller, with the reason
        raise RunnerError(f"LoRA folder '{path}' holds neither {SAFE_WEIGHTS} nor {PICKLE_WEIGHTS}")
    if path.is_file():
        return path
    if sdkit_env.looks_like_local_path(lora):
        raise RunnerError(f"LoRA weights '{lora}' not found")
    from huggingface_hub import hf_hub_download

    failure: Optional[Exception] = None
    for name in names:
        try:
            return Path(hf_hub_download(source, name))
        except Exception as exc:  # not in the repository, hub unreachable, no such repository
            failure = failure or exc
    raise sdkit_env.hub_error("LoRA weights", lora, failure) from None


def read_lora_weights(path: Path, allow_pickle: bool) -> Dict[str, "torch.Tensor"]:
    """The tensors of a LoRA file; a pickle only with --allow_pickle."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if not allow_pickle:
            raise RunnerError(f"LoRA weights '{path}' are a pickle ({path.suffix or 'no .safetensors suffix'}): "
                              "loading one can run code hidden in it, so only .safetensors files are loaded; "
                              "convert it, or pass --allow_pickle if you trust where it came from")
        # weights_only narrows what the unpickler accepts to tensors and plain containers. It is a
        # second fence, not the first: torch before 2.6 has known escapes from it, hence --allow_pickle.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except RunnerError:
        raise
    except Exception as exc:  # a truncated file, not tensors, a pickle that weights_only rejects
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunnerError(f"cannot read LoRA weights '{path}': {reason}") from None


def lora_mismatch(unet, state_dict: Dict[str, "torch.Tensor"]) -> Optional[str]:
    """Why these LoRA tensors do not fit ``unet`` (None when they do), checked before loading.

    diffusers 0.20 sizes each LoRA layer from the tensors themselves, so weights made for
    another model load without complaint and fail in the first forward pass, or reach for a
    layer this UNet does not have with an AttributeError. Covers both key formats
    load_attn_procs reads: ``<processor>.to_q_lora.down.weight`` and ``<layer>.lora.down.weight``,
    with or without the ``unet.`` prefix.
    """
    import torch

    keys = [k[len("unet."):] if k.startswith("unet.") else k for k in state_dict
            if not k.startswith("text_encoder.") and not k.endswith(".alpha")]
    if not keys or not all("lora" in k for k in keys):
        return "it holds no UNet LoRA layers (is it a LoRA file at all?)"
    modules = dict(unet.named_modules())
    for key in keys:
        tensor = state_dict.get(key, state_dict.get(f"unet.{key}"))
        parts = key.split(".")
        owner, projection, direction = ".".join(parts[:-3]), parts[-3], parts[-2]
        if projection == "lora":  # a LoRA of the layer at `owner` itself
            layer = modules.get(owner)
        else:  # an attention processor's: `owner` is <attention>.processor, `projection` is to_q_lora ...
            attention = modules.get(owner[: -len(".processor")] if owner.endswith(".processor") else owner)
            layer = getattr(attention, projection[: -len("_lora")], None) if attention is not None else None
            if isinstance(layer, torch.nn.ModuleList):  # to_out is (Linear, Dropout)
                layer = layer[0]
        if layer is None:
            return f"'{key}' names a layer this UNet does not have"
        size_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        size_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        expected, actual = (size_in, tensor.shape[1]) if direction == "down" else (size_out, tensor.shape[0])
        if tensor.dim() < 2 or expected != actual:
            return f"'{key}' has shape {tuple(tensor.shape)}, but this UNet's layer has {expected} features there"
    return None


def load_lora(pipe, path: Path, state_dict: Dict[str, "torch.Tensor"]) -> None:
    """Check that the LoRA fits the model, then load it with the flow's loader (sdkit_lora.load_lora)."""
    problem = lora_mismatch(pipe.unet, state_dict)
    if problem:
        raise RunnerError(f"LoRA weights '{path}' do not fit the model: {problem}; they were probably made for "
                          "another base model (give the --model they were trained on)")
    try:
        sdkit_lora.load_lora(pipe, state_dict)
    except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        raise RunnerError(f"cannot load LoRA weights from '{path}' (made for another base model?): {exc}") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sdkit_env.setup_logging(args.verbose)
    device = sdkit_env.resolve_device(args.device)
    dtype = sdkit_env.resolve_dtype(args.dtype, device)
    assets = sdkit_env.assets_root(args.assets)
    model_dir = sdkit_env.resolve_model_dir(args.model, assets)
    sdkit_env.check_model_weights(model_dir, args.allow_pickle)
    lora_source = sdkit_env.resolve_source(args.lora, assets) if args.lora else None
    sdkit_env.configure_offline(model_dir, lora_source)
    sdkit_env.apply_hub_token()

    import torch
    from diffusers import StableDiffusionPipeline

    if args.lora:  # read (and refused, if need be) before the pipeline takes its time to load
        lora_path = lora_weights_file(args.lora, assets, args.allow_pickle)
        lora_weights = sdkit_lora.loadable(read_lora_weights(lora_path, args.allow_pickle), lora_path)

    # Global seeding as the tutorial does, for anything not driven by the generator below.
    sdkit_env.seed_everything(args.seed)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model_dir, revision=None, torch_dtype=dtype,
                                                       **sdkit_env.safe_weights(args.allow_pickle))
    except (OSError, ValueError) as exc:
        if os.path.isdir(model_dir):
            raise RunnerError(f"cannot load the Stable Diffusion pipeline in '{model_dir}': {exc}") from None
        raise sdkit_env.hub_error("model", args.model, exc) from None
    if args.lora:
        load_lora(pipe, lora_path, lora_weights)
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
