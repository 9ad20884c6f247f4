"""LoRA on the Stable Diffusion UNet for both of the kit's flows: the one home of "which LoRA mechanism".

* Tutorial flow (diffusers 0.20, profile tutorial-2023): one ``LoRAAttnProcessor`` per attention
  processor, trained through ``AttnProcsLayers`` and saved with ``unet.save_attn_procs``; keys like
  ``<block>.attn1.processor.to_q_lora.down.weight``.
* peft flow (diffusers 0.29 with peft, profile sophgo-peft): peft adapters on the attention projections
  (``unet.add_adapter(LoraConfig(...))``), saved as diffusers 0.29's example does
  (``StableDiffusionPipeline.save_lora_weights`` of ``convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))``);
  keys like ``unet.<block>.attn1.to_q.lora.down.weight``.

Both adapt the same four projections (to_q, to_k, to_v, to_out.0) with scale 1 (peft's lora_alpha = rank), so
a LoRA of one kind is the same function as its counterpart of the other kind. Which flow runs is decided
once, by :func:`uses_peft`, from the installed diffusers.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, Optional

import torch

from sdkit_env import RunnerError

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
# The attention projections both flows adapt; peft names to_out[0] "to_out.0", the processors "to_out_lora".
PEFT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@functools.lru_cache(maxsize=None)
def uses_peft() -> bool:
    """True when the installed diffusers does LoRA through peft (the peft flow), False on diffusers 0.20.

    diffusers from 0.26 on dropped the LoRA attention processors for peft; without peft installed it
    has no LoRA training at all, which is said here in one line instead of deep in a forward pass.
    """
    import diffusers.utils

    if not hasattr(diffusers.utils, "USE_PEFT_BACKEND"):
        return False  # diffusers 0.20: LoRAAttnProcessor
    if not diffusers.utils.USE_PEFT_BACKEND:
        raise RunnerError(f"diffusers {diffusers.__version__} does LoRA only through peft, which is not installed: "
                          "install peft==0.7.0 (the sophgo-peft profile's pin), or use the tutorial's diffusers 0.20.0")
    return True


def flow_name() -> str:
    return "peft" if uses_peft() else "attention processors"


def add_lora(unet, rank: int, sdpa: bool = False) -> None:
    """Give the UNet trainable LoRA weights on its attention projections (fp32, whatever the UNet's dtype).

    ``sdpa`` (tutorial flow only) picks ``LoRAAttnProcessor2_0`` (torch's scaled_dot_product_attention)
    instead of v0.20.0's ``LoRAAttnProcessor``: same parameters under the same names, only the kernel
    differs. diffusers 0.29's default processor already uses it.
    """
    if uses_peft():
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=list(PEFT_TARGETS)))
        lora_layers(unet).float()  # peft creates them in the frozen weights' dtype; trained weights stay fp32
        return
    from diffusers.models.attention_processor import LoRAAttnProcessor, LoRAAttnProcessor2_0

    import sdkit_env

    processor = LoRAAttnProcessor2_0 if sdpa else LoRAAttnProcessor
    unet.set_attn_processor({
        name: processor(hidden_size=hidden_size, cross_attention_dim=cross_attention_dim, rank=rank)
        for name, (hidden_size, cross_attention_dim) in sdkit_env.attention_dims(unet).items()})


def lora_layers(unet) -> torch.nn.Module:
    """One module holding exactly the UNet's LoRA parameters: what the optimizer, accelerate's
    prepare/save_state and the gradient averaging see. Build it after anything that replaces the
    attention processors (xformers)."""
    if uses_peft():
        return torch.nn.ModuleList(module for name, module in unet.named_modules()
                                   if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    from diffusers.loaders import AttnProcsLayers

    return AttnProcsLayers(unet.attn_processors)


def save_lora(unet, output_dir: os.PathLike) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` in the flow's own format; returns its path."""
    if uses_peft():
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(output_dir), safe_serialization=True,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)))
    else:
        unet.save_attn_procs(str(output_dir))
    return Path(output_dir, WEIGHTS_NAME)


def weights_format(state_dict: Dict[str, torch.Tensor]) -> str:
    """"attention processors" (diffusers 0.20's save_attn_procs) or "peft" (diffusers 0.29's save_lora_weights)."""
    return "attention processors" if any(".processor." in key for key in state_dict) else "peft"


def peft_to_processors(state_dict: Dict[str, torch.Tensor]) -> Optional[Dict[str, torch.Tensor]]:
    """The attention-processor keys of a peft-format LoRA, or None when it adapts anything else.

    ``unet.X.to_q.lora.down.weight`` is ``X.processor.to_q_lora.down.weight``; both add
    ``up(down(x))`` to the projection. Other layers (feed-forward, convolutions, the text encoder) or
    network alphas have no attention-processor counterpart in diffusers 0.20.
    """
    converted = {}
    for key, tensor in state_dict.items():
        name = key[len("unet."):] if key.startswith("unet.") else key
        for target in PEFT_TARGETS:
            stem, found, direction = name.partition(f".{target}.lora.")
            if found and direction in ("down.weight", "up.weight"):
                converted[f"{stem}.processor.{target.split('.')[0]}_lora.{direction}"] = tensor
                break
        else:
            return None
    return converted


def loadable(state_dict: Dict[str, torch.Tensor], where: os.PathLike) -> Dict[str, torch.Tensor]:
    """``state_dict`` in a form the installed diffusers loads, checked before any model is loaded.

    diffusers 0.29's ``load_lora_weights`` reads both formats. diffusers 0.20 reads only attention
    processors: a peft-format LoRA of the attention projections is renamed to them (the same function);
    any other peft-format LoRA gets one line saying what to do.
    """
    if uses_peft() or weights_format(state_dict) != "peft":
        return state_dict
    converted = peft_to_processors(state_dict)
    if converted is None:
        raise RunnerError(f"LoRA weights '{where}' are in the peft format (diffusers >= 0.26) and adapt layers other "
                          "than the attention projections, which diffusers 0.20 cannot load: use them with the "
                          "sophgo-peft profile's diffusers 0.29.2, or train them again with this profile")
    return converted


def load_lora(pipe, state_dict: Dict[str, torch.Tensor]) -> None:
    """Load what :func:`loadable` returned with the flow's loader."""
    if uses_peft():
        pipe.load_lora_weights(dict(state_dict))
    else:
        pipe.unet.load_attn_procs(state_dict)  # the tutorial's own call
