"""sdkit_lora: which flow, the two weight formats and the renaming between them (no models needed)."""

from __future__ import annotations

import pytest
import torch

import sdkit_lora
from sdkit_env import RunnerError

ATTENTION = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def peft_keys(*projections: str) -> dict:
    return {f"unet.{ATTENTION}.{p}.lora.{d}.weight": torch.zeros(1) for p in projections for d in ("down", "up")}


def test_formats_are_told_apart():
    assert sdkit_lora.weights_format({f"{ATTENTION}.processor.to_q_lora.down.weight": torch.zeros(1)}) == \
        "attention processors"
    assert sdkit_lora.weights_format(peft_keys("to_q")) == "peft"


def test_peft_attention_projections_become_processors():
    converted = sdkit_lora.peft_to_processors(peft_keys("to_q", "to_k", "to_v", "to_out.0"))
    assert sorted(converted) == sorted(f"{ATTENTION}.processor.{p}_lora.{d}.weight"
                                       for p in ("to_q", "to_k", "to_v", "to_out") for d in ("down", "up"))


@pytest.mark.parametrize("other", ["ff.net.2", "proj_in"])
def test_peft_lora_of_other_layers_has_no_processor_form(other):
    assert sdkit_lora.peft_to_processors(peft_keys("to_q", other)) is None


def test_new_diffusers_without_peft_is_one_line(monkeypatch):
    import diffusers.utils

    if not hasattr(diffusers.utils, "USE_PEFT_BACKEND"):
        pytest.skip("diffusers 0.20 has its own LoRA classes and needs no peft")
    monkeypatch.setattr(diffusers.utils, "USE_PEFT_BACKEND", False)
    sdkit_lora.uses_peft.cache_clear()
    try:
        with pytest.raises(RunnerError, match="install peft==0.7.0"):
            sdkit_lora.uses_peft()
    finally:
        sdkit_lora.uses_peft.cache_clear()
