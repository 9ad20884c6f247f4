"""Seconds per phase of one training step at SD v1.4's shapes: where a step's time goes (CPU).

Loads the benchmark's fixtures (build/fixtures-sd14/, built by `make bench SIZE=sd14`) and times,
best of ``--repeats`` after one warm-up, batch 1:
- VAE encode and text encoder (what the runner's caches save);
- the UNet's forward and forward + backward with LoRA, per variant: ``classic`` (v0.20.0's
  LoRAAttnProcessor), ``sdpa`` (LoRAAttnProcessor2_0), ``sdpa_cl`` (SDPA and channels_last).

Usage: python tests/bench/profile_sd14_step.py [--resolution 256] [--variants classic,sdpa,sdpa_cl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "runners"))

import train_lora  # noqa: E402

VARIANTS = ("classic", "sdpa", "sdpa_cl")


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` timings after one warm-up: on a shared machine the best is the least disturbed."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    # Microseconds: a tiny model's phase can take under half a millisecond, which 3 digits would round to 0.
    return round(best, 6)


def profile(model_dir: Path, resolution: int, variants, repeats: int) -> Dict[str, float]:
    _, _, text_encoder, vae, unet = train_lora.load_models(str(model_dir), None)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    pixels = torch.randn(1, 3, resolution, resolution)
    input_ids = torch.zeros(1, text_encoder.config.max_position_embeddings, dtype=torch.long)
    times: Dict[str, float] = {}
    with torch.no_grad():
        times["vae_encode"] = best_seconds(lambda: vae.encode(pixels).latent_dist.parameters, repeats)
        times["text_encoder"] = best_seconds(lambda: text_encoder(input_ids)[0], repeats)
    latent_size = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, latent_size, latent_size)
    hidden = torch.randn(1, input_ids.shape[1], text_encoder.config.hidden_size)
    timestep = torch.tensor([500])
    for variant in variants:
        train_lora.add_lora(unet, 4, sdpa=variant.startswith("sdpa"))
        layout = torch.channels_last if variant.endswith("_cl") else torch.contiguous_format
        unet.to(memory_format=layout)
        sample = latents.to(memory_format=layout)

        def forward() -> torch.Tensor:
            return unet(sample, timestep, hidden).sample.float().pow(2).mean()

        with torch.no_grad():
            times[f"unet_forward_{variant}"] = best_seconds(forward, repeats)
        times[f"unet_forward_backward_{variant}"] = best_seconds(lambda: forward().backward(), repeats)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "build" / "fixtures-sd14" / "model",
                        help="pipeline folder (default: the benchmark's fixtures)")
    parser.add_argument("--resolution", type=int, default=256, help="pixels (default 256)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated UNet variants out of {', '.join(VARIANTS)} (default all)")
    parser.add_argument("--repeats", type=int, default=2, help="timings per phase after the warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default all)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    print(json.dumps(profile(args.model, args.resolution, variants, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
