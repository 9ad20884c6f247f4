#!/usr/bin/env python
"""LoRA fine-tuning of Stable Diffusion on a BM1684X TPU (or CPU/GPU), as in Sophgo's tutorial.

Equivalent to diffusers v0.20.0 ``examples/text_to_image/train_text_to_image_lora.py`` with
the tutorial's two edits built in (``import torch_tpu`` first; LoRA layers moved to the
accelerator's device) and accepting the same flags, so the tutorial's command lines work
as written. Same LoRA mechanism (one ``LoRAAttnProcessor`` per attention processor,
trained through ``AttnProcsLayers``), same outputs (``pytorch_lora_weights.safetensors``
loadable with ``pipe.unet.load_attn_procs`` / ``pipe.load_lora_weights``, and
``checkpoint-N`` folders from ``accelerator.save_state``).

Under diffusers 0.29 with peft (Sophgo's newer flow, profile sophgo-peft) the LoRA is instead a
peft adapter on the same attention projections, saved as diffusers 0.29's example saves it
(``StableDiffusionPipeline.save_lora_weights``) and loaded with ``pipe.load_lora_weights``; the
flags, checkpoints and everything below are the same. sdkit_lora.py decides which, once. On tpu
timesteps are int32 (torch_tpu has no int64), as Sophgo's script does.

Differences from upstream, all deliberate:

* the device comes from ``--device`` or ``ACCELERATE_TORCH_DEVICE``; asking for ``tpu`` never
  falls back to the CPU;
* no crash at the end without ``--validation_prompt``; ``--gradient_checkpointing`` is really
  applied; validation reuses the models in memory and writes
  ``<output_dir>/validation/epoch-E_i.png``;
* data order, augmentation and noise are derived from ``--seed`` and the step number, so a
  run resumed from a checkpoint ends with the same LoRA weights as an uninterrupted one;
* VAE latents and text embeddings are computed once per distinct (image, size, crop, flip) and
  caption and then reused, the latents from a cache on disk that resumed and repeated runs share
  (sdkit_cache.py), and the LoRA attention runs through torch's scaled_dot_product_attention
  (``LoRAAttnProcessor2_0``, same parameters); ``--no_cache`` restores upstream's step: encode
  every step, ``LoRAAttnProcessor``;
* ``--buckets`` (opt-in) trains on aspect-ratio buckets instead of upstream's square crops;
* Ctrl-C and SIGTERM (a shutdown, ``systemctl stop``, ``scancel``) save a checkpoint at the
  current step and exit 130; checkpoints are written atomically and fsynced; problems the
  operator can fix (empty dataset, bad caption, missing column, unreadable image, missing model,
  full disk, an --output_dir or checkpoint of another run) stop the run with one line instead of
  a traceback;
* an --output_dir that holds a run is resumed (``--resume_from_checkpoint``) or explicitly
  started over (``--overwrite_output_dir``), never silently restarted at step 0, and checkpoints
  are loaded only from the run's own --output_dir (they are pickles);
* metrics are appended to ``<output_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sdkit_env  # noqa: E402
import sdkit_lora  # noqa: E402
from sdkit_env import RunnerError  # noqa: E402
from sdkit_files import PROFILE_KEY, fsync_dir, fsync_tree, read_json, write_json_atomic  # noqa: E402

logger = logging.getLogger("sdkit.train")

# Flags whose value changes the trained weights: a resume, or a rerun into the same --output_dir,
# must repeat them. run.json records them with the resolved model and dataset, the effective
# precision and the number of processes (which multiplies the batch).
IDENTITY_FLAGS = (
    "revision", "dataset_config_name", "image_column", "caption_column", "max_train_samples",
    "resolution", "center_crop", "random_flip", "seed", "train_batch_size", "num_train_epochs",
    "max_train_steps", "gradient_accumulation_steps", "learning_rate", "scale_lr", "lr_scheduler", "buckets",
    "lr_warmup_steps", "snr_gamma", "use_8bit_adam", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "prediction_type", "noise_offset", "rank",
)
# The other flags, each of which may differ between attempts of one run. A unit test checks that
# every flag is in one of the two lists, so that a new flag is classified when it is added.
NOT_IDENTITY_FLAGS = (
    "pretrained_model_name_or_path", "dataset_name", "train_data_dir", "mixed_precision",  # recorded resolved
    "assets", "cache_dir", "output_dir", "logging_dir", "report_to", "verbose", "local_rank", "device",
    "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "overwrite_output_dir",
    "validation_prompt", "num_validation_images", "validation_epochs",
    # Same weights, other speed or memory (no_cache and gradient checkpointing are tested to match).
    "dataloader_num_workers", "no_cache", "gradient_checkpointing", "enable_xformers_memory_efficient_attention",
    "latent_cache_dir", "latent_cache_ram_mib",
    "allow_tf32", "push_to_hub", "hub_token", "hub_model_id",
    # Whether a pickled model or a dataset's script may load: the same files give the same weights.
    "allow_pickle", "allow_dataset_script",
)
# What a run writes into --output_dir, and so what --overwrite_output_dir removes (nothing else).
RUN_OUTPUTS = ("run.json", "metrics.jsonl", "pytorch_lora_weights.safetensors", "validation")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="LoRA fine-tuning of Stable Diffusion (diffusers v0.20.0 example, TPU-ready).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("model and data")
    group.add_argument("--pretrained_model_name_or_path", type=str, required=True,
                       help="Hub id (e.g. CompVis/stable-diffusion-v1-4) or local pipeline folder with model_index.json. "
                            "With --assets / SOPHON_SD_ASSETS the tutorial's hub ids map to the download share.")
    group.add_argument("--revision", type=str, default=None, help="Hub revision of the pretrained model.")
    group.add_argument("--allow_pickle", action="store_true",
                       help="Also load base-model weights saved as a pickle (.bin) where a component has no "
                            ".safetensors. Loading a pickle can run code hidden in it: pass this only for a model "
                            "whose origin you trust.")
    group.add_argument("--dataset_name", type=str, default=None,
                       help="Hub dataset name, or a local parquet file/folder (pokemon-blip-captions layout: image, text).")
    group.add_argument("--dataset_config_name", type=str, default=None, help="Hub dataset config, if it has several.")
    group.add_argument("--train_data_dir", type=str, default=None,
                       help="Image folder with metadata.jsonl (file_name, text); used when --dataset_name is not given.")
    group.add_argument("--allow_dataset_script", action="store_true",
                       help="Also load a --dataset_name that ships a loading script (<name>.py), which runs as this "
                            "user: pass this only for a dataset whose origin you trust.")
    group.add_argument("--image_column", type=str, default="image", help="Dataset column holding the images.")
    group.add_argument("--caption_column", type=str, default="text", help="Dataset column holding the captions.")
    group.add_argument("--max_train_samples", type=int, default=None,
                       help="Train on this many rows only (a seeded random subset), for quick runs.")
    group.add_argument("--cache_dir", type=str, default=None, help="Where datasets and hub downloads are cached.")
    group.add_argument("--assets", type=str, default=None,
                       help="Root of Sophgo's download share (CompVis_SD14_pretrained_weights/, dataset/, ...); "
                            "defaults to $SOPHON_SD_ASSETS.")

    group = parser.add_argument_group("image preprocessing")
    group.add_argument("--resolution", type=int, default=512,
                       help="Training images are resized (shorter side) and cropped to this square size; a multiple "
                            "of 8, as the VAE turns each 8x8 block of pixels into one latent. With --buckets, the "
                            "area of the buckets instead.")
    group.add_argument("--center_crop", action="store_true",
                       help="Crop at the centre instead of at random (upstream's default: a new random crop of each "
                            "non-square image every epoch, which the latent cache can never reuse). Ignored with "
                            "--buckets.")
    group.add_argument("--buckets", action="store_true",
                       help="Aspect-ratio buckets instead of the square crop: each image is resized, uncropped but "
                            "for a sliver, into the bucket (sides multiples of 64, area about --resolution squared) "
                            "nearest its aspect ratio, and each batch holds one bucket. Keeps the whole picture and "
                            "lets the latent cache work on non-square images (upstream re-crops them at random each "
                            "epoch); the model also learns from other shapes than squares, so the loss curve differs "
                            "from upstream's. Square images all fall into the square bucket, as with the crop.")
    group.add_argument("--random_flip", action="store_true", help="Flip half of the images horizontally.")

    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, default="sd-model-finetuned-lora",
                       help="Where the LoRA weights, checkpoints, metrics and logs are written.")
    group.add_argument("--seed", type=int, default=None,
                       help="Seed for data order, augmentation and noise (a run resumed with it repeats the original).")
    group.add_argument("--train_batch_size", type=int, default=16, help="Batch size per device.")
    group.add_argument("--num_train_epochs", type=int, default=100)
    group.add_argument("--max_train_steps", type=int, default=None,
                       help="Total optimisation steps; overrides --num_train_epochs when given.")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1,
                       help="Batches accumulated before each optimisation step.")
    group.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute UNet activations in the backward pass: less memory, slower steps.")
    group.add_argument("--learning_rate", type=float, default=1e-4)
    group.add_argument("--scale_lr", action="store_true",
                       help="Multiply the learning rate by accumulation steps x batch size x processes.")
    group.add_argument("--lr_scheduler", type=str, default="constant",
                       help='One of "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", '
                            '"constant_with_warmup".')
    group.add_argument("--lr_warmup_steps", type=int, default=500, help="Warm-up steps of the learning rate scheduler.")
    group.add_argument("--snr_gamma", type=float, default=None,
                       help="Min-SNR loss weighting gamma (5.0 is the paper's value); off when not given.")
    group.add_argument("--use_8bit_adam", action="store_true", help="Use bitsandbytes' 8-bit AdamW (CUDA only).")
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere GPUs.")
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=1e-2)
    group.add_argument("--adam_epsilon", type=float, default=1e-08)
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    group.add_argument("--prediction_type", type=str, default=None, choices=["epsilon", "v_prediction"],
                       help="Training target; defaults to the scheduler's own prediction_type.")
    group.add_argument("--noise_offset", type=float, default=0, help="Scale of the offset noise (0 = off).")
    group.add_argument("--rank", type=int, default=4, help="Dimension of the LoRA update matrices.")
    group.add_argument("--dataloader_num_workers", type=int, default=0,
                       help="Processes that decode images; 0 decodes in the main process.")
    group.add_argument("--no_cache", action="store_true",
                       help="Encode images and captions on every step like upstream, instead of reusing them.")
    group.add_argument("--latent_cache_dir", type=str, default=None,
                       help="Folder of the VAE latents on disk, reused by resumed and repeated runs (keyed by the "
                            "VAE's files, the image's content, its size, crop and flip, so never stale); may be shared "
                            "by this account's runs. Default: <output_dir>/latent_cache, which "
                            "--overwrite_output_dir keeps.")
    group.add_argument("--latent_cache_ram_mib", type=int, default=512,
                       help="RAM for recently used latents (and as much again for caption embeddings), whatever the "
                            "dataset's size; 0 reads every latent from disk.")

    group = parser.add_argument_group("device and precision")
    group.add_argument("--device", type=str, default=None,
                       help="cpu, cuda[:N] or tpu[:N]; defaults to $ACCELERATE_TORCH_DEVICE, then cpu.")
    group.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                       help="fp16/bf16 store the frozen weights in half precision; the LoRA weights stay fp32.")
    group.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                       help="Use xformers attention (CUDA only).")
    group.add_argument("--local_rank", type=int, default=-1, help="Set by launchers; not needed by hand.")

    group = parser.add_argument_group("checkpoints, validation and logging")
    group.add_argument("--checkpointing_steps", type=int, default=500,
                       help="Save a resumable checkpoint-N folder every this many steps.")
    group.add_argument("--checkpoints_total_limit", type=int, default=None,
                       help="Keep at most this many checkpoint folders (oldest removed first).")
    group.add_argument("--resume_from_checkpoint", type=str, default=None,
                       help='A checkpoint-N folder of --output_dir (its name, or its path) or "latest". Checkpoints '
                            "are pickles, which can run code when loaded: those outside --output_dir are refused.")
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="Start over in an --output_dir that already holds a run (its run.json, checkpoints, "
                            "metrics, weights and validation images are removed). Without it such a folder is "
                            "only resumed, with the same settings.")
    group.add_argument("--validation_prompt", type=str, default=None,
                       help="Prompt for validation images; no validation without it.")
    group.add_argument("--num_validation_images", type=int, default=4, help="Validation images per validation run.")
    group.add_argument("--validation_epochs", type=int, default=1,
                       help="Validate every this many epochs (and after the last one).")
    group.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "none"],
                       help="Where metrics go besides metrics.jsonl.")
    group.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard folder, inside --output_dir.")
    group.add_argument("--push_to_hub", action="store_true", help="Not supported (hosts are offline); rejected.")
    group.add_argument("--hub_token", type=str, default=None,
                       help="Hugging Face token for private models and datasets. Prefer a file named by "
                            "SOPHON_SD_HUB_TOKEN_FILE (it wins over this flag): a flag is visible in the process "
                            "list.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Accepted for compatibility; unused.")
    group.add_argument("--verbose", action="store_true", help="Debug logging.")

    args = parser.parse_args(argv)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1:
        args.local_rank = env_local_rank
    if args.dataset_name is None and args.train_data_dir is None:
        parser.error("need either --dataset_name or --train_data_dir")
    if args.push_to_hub:
        parser.error("--push_to_hub is not supported by this runner: the hosts have no hub access")
    check_flag_values(args)
    return args


def check_flag_values(args: argparse.Namespace) -> None:
    """Flag values that would fail only after the models are loaded, or deep in a forward pass."""
    if args.resolution <= 0 or args.resolution % 8:
        lower = max(8, args.resolution // 8 * 8)
        raise RunnerError(f"--resolution {args.resolution} is not a positive multiple of 8 (the VAE turns each 8x8 "
                          f"block of pixels into one latent); use {lower} or {lower + 8}")
    if args.latent_cache_ram_mib < 0:
        raise RunnerError(f"--latent_cache_ram_mib {args.latent_cache_ram_mib} is negative; give 0 or more MiB")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise RunnerError("--overwrite_output_dir starts the run over and --resume_from_checkpoint continues it: "
                          "give one of them")


# --------------------------------------------------------------------------- models


def load_models(model_dir: str, revision: Optional[str], allow_pickle: bool = False):
    """Load the five pipeline components the trainer needs, turning hub/IO failures into one line.
    Weights come from safetensors only unless ``allow_pickle`` (sdkit_env.check_model_weights)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    safe = sdkit_env.safe_weights(allow_pickle)
    try:
        noise_scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler", revision=revision)
        tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer", revision=revision)
        text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", revision=revision, **safe)
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", revision=revision, **safe)
        unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", revision=revision, **safe)
    except (OSError, ValueError, EnvironmentError) as exc:
        if os.path.isdir(model_dir):
            raise RunnerError(f"cannot load the Stable Diffusion pipeline in '{model_dir}': {exc}") from None
        raise sdkit_env.hub_error("model", model_dir, exc) from None
    return noise_scheduler, tokenizer, text_encoder, vae, unet


add_lora = sdkit_lora.add_lora  # the benchmarks call train_lora.add_lora


def use_sdpa(no_cache: bool, device_type: str) -> bool:
    """Whether the runner's LoRA layers use scaled_dot_product_attention.

    Not with --no_cache, which repeats v0.20.0's step (its LoRAAttnProcessor included) so that it
    stays an honest baseline; not on tpu, where torch_tpu's kernel for it has not been measured.
    """
    import torch

    return (not no_cache and device_type != "tpu"
            and hasattr(torch.nn.functional, "scaled_dot_product_attention"))


def enable_gradient_checkpointing(unet) -> None:
    """Really switch it on (upstream parses the flag but never applies it).

    diffusers only checkpoints modules in training mode, hence ``unet.train()``; the
    frozen weights still receive no gradients, only the LoRA layers do.
    """
    unet.enable_gradient_checkpointing()
    unet.train()
    logger.info("gradient checkpointing enabled on the UNet")


def compute_snr(noise_scheduler, timesteps):
    """Signal-to-noise ratio per timestep, for Min-SNR loss weighting (arXiv:2303.09556)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device=timesteps.device)
    alpha = alphas_cumprod[timesteps].float() ** 0.5
    sigma = (1.0 - alphas_cumprod[timesteps].float()) ** 0.5
    return (alpha / sigma) ** 2


# --------------------------------------------------------------------------- run identity and checkpoints


def fingerprint(args, model_dir: str, mixed_precision: str, num_processes: int) -> Dict[str, Any]:
    """What makes checkpoints of one run interchangeable; resuming across runs would silently mix them."""
    return {
        "model": model_dir,
        "dataset": args.dataset_name or args.train_data_dir,
        "lora": sdkit_lora.flow_name(),  # checkpoints of the two flows hold different parameters
        "mixed_precision": mixed_precision,
        "num_processes": num_processes,
        **{name: getattr(args, name) for name in IDENTITY_FLAGS},
    }


def described(args) -> Dict[str, Any]:
    """What run.json records for the report (tools/sdkit_report.py) beside the fingerprint: settings that do
    not change the weights, so a resume never compares them."""
    return {"validation_prompt": args.validation_prompt, "profile": os.environ.get(PROFILE_KEY) or None}


def read_run_json(folder: Path) -> Optional[Dict[str, Any]]:
    return read_json(folder / "run.json")


def write_run_json(folder: Path, run: Dict[str, Any], **extra: Any) -> None:
    # Atomic: a kill mid-write must not cost a resumed run its fingerprint and seed.
    write_json_atomic(folder / "run.json", {**run, **extra})


def fingerprint_differences(ours: Dict[str, Any], theirs: Dict[str, Any]) -> List[str]:
    """The settings that differ, as "name: theirs there, ours now".

    Settings a run.json does not record (written by an older kit) are not compared; a seed not
    given now is taken from run.json later, so only a given one is compared.
    """
    return [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in ours
            if k in theirs and theirs[k] != ours[k] and not (k == "seed" and ours[k] is None)]


def compare_fingerprints(ours: Dict[str, Any], theirs: Dict[str, Any], where: Path) -> None:
    differing = fingerprint_differences(ours, theirs)
    if differing:
        raise RunnerError(
            f"'{where}' belongs to another training run ({'; '.join(differing)}); "
            "resume it with the same settings, or use another --output_dir"
        )


def claim_output_dir(output_dir: Path, run: Dict[str, Any], resuming: bool, overwrite: bool, remove: bool) -> None:
    """Refuse to train into a folder holding another run, or this run's checkpoints without resuming.

    Upstream restarts at step 0 and overwrites the checkpoints of whatever ran there before.
    With ``--overwrite_output_dir`` the run starts over: the main process (``remove``) deletes the
    previous run's files, the other processes only need the same verdict.
    """
    previous = read_run_json(output_dir)
    checkpoints = list_checkpoints(output_dir)
    if previous is None and not checkpoints:
        return
    if overwrite:
        if remove:
            remove_run_outputs(output_dir)
        return
    differing = fingerprint_differences(run, previous or {})
    if differing:
        raise RunnerError(f"'{output_dir}' holds a training run with other settings ({'; '.join(differing)}): resume "
                          "it with the same settings, or pass --overwrite_output_dir to start over")
    if not resuming and (checkpoints or (previous or {}).get("finished")):
        held = f"checkpoints up to {checkpoints[-1].name}" if checkpoints else "the finished LoRA weights"
        raise RunnerError(f"'{output_dir}' already holds {held} of this run: resume it with --resume_from_checkpoint "
                          "latest (same settings), or pass --overwrite_output_dir to start over")


def remove_run_outputs(output_dir: Path) -> None:
    """Delete what a run wrote into ``output_dir`` (and nothing else: it may be a shared folder)."""
    leftovers = [*list_checkpoints(output_dir), *output_dir.glob(".checkpoint-*.partial"),
                 *(output_dir / name for name in RUN_OUTPUTS)]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    logger.warning("--overwrite_output_dir: removed the previous run's files from %s", output_dir)


def list_checkpoints(output_dir: Path) -> List[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def find_resume_checkpoint(spec: str, output_dir: Path) -> Optional[Path]:
    """Resolve --resume_from_checkpoint; "latest" with no checkpoint starts afresh, as upstream."""
    if spec == "latest":
        checkpoints = list_checkpoints(output_dir)
        path = checkpoints[-1] if checkpoints else None
    else:
        path = output_dir / spec if os.sep not in spec else Path(spec)
        if not path.is_dir():
            raise RunnerError(f"checkpoint '{spec}' not found (looked at '{path}')")
    if path is not None:
        check_checkpoint_trusted(path, output_dir, spec)
    return path


def check_checkpoint_trusted(path: Path, output_dir: Path, spec: str) -> None:
    """Only load a checkpoint this account wrote into this run's own --output_dir.

    accelerate 0.16's load_state reads optimizer.bin, scheduler.bin, pytorch_model.bin, scaler.pt
    and random_states_*.pkl with a full torch.load, which under the fleet's torch 2.1 unpickles
    whatever the file holds, code included. So a checkpoint is trusted only as far as its folder:
    a checkpoint-N directly inside --output_dir, not a link, whose files are owned by this account
    (or root) and not writable by others. Files the runner account wrote are thereby still trusted:
    anyone able to replace them can already run code as that account. Model weights and datasets
    are trusted as the bundle's verified assets; LoRA weights are checked by infer.py.
    """
    where = f"--resume_from_checkpoint '{spec}'"
    if path.is_symlink() or path.resolve().parent != output_dir.resolve() or not path.name.startswith("checkpoint-"):
        raise RunnerError(f"{where} is not a checkpoint-N folder of --output_dir '{output_dir}': checkpoints are "
                          "pickles, which can run code when loaded, so only the run's own are loaded; copy a "
                          "checkpoint you trust (with the run.json beside it) into a new --output_dir to resume it")
    for entry in [path, *path.rglob("*")]:
        info = entry.lstat()
        if entry.is_symlink() or info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o002:
            raise RunnerError(f"{where}: '{entry}' is a link, belongs to another user or is writable by anyone; "
                              "checkpoints are pickles, so only files this account wrote are loaded")


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: Optional[int], run: Dict[str, Any]) -> Path:
    """Write checkpoint-<step> atomically, then prune to --checkpoints_total_limit.

    Saving into a temporary folder, fsyncing it and renaming means an interrupted save (a kill,
    a crash, a full disk) never leaves a half-written checkpoint that "latest" would pick;
    pruning after the save means the previous checkpoint survives until the new one is complete.
    """
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        accelerator.save_state(str(partial))
        write_run_json(partial, run, step=step)
        fsync_tree(partial)
    except (OSError, RuntimeError) as exc:
        reason = write_failure(exc, output_dir)
        if reason is None:
            raise
        shutil.rmtree(partial, ignore_errors=True)
        kept = list_checkpoints(output_dir)
        raise RunnerError(f"cannot write checkpoint-{step} in '{output_dir}' ({reason}); the partial checkpoint was "
                          f"removed and {kept[-1].name if kept else 'no earlier checkpoint'} is intact: free space, "
                          "then resume with --resume_from_checkpoint latest") from None
    if final.exists():  # a resumed run passing the same step again: swap, never a moment without it
        stale = output_dir / f".checkpoint-{step}.old"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        partial.rename(final)
        shutil.rmtree(stale)
    else:
        partial.rename(final)
    fsync_dir(output_dir)
    if limit is not None:
        checkpoints = list_checkpoints(output_dir)
        for old in checkpoints[: max(0, len(checkpoints) - limit)]:
            logger.info("removing old checkpoint %s (--checkpoints_total_limit %s)", old.name, limit)
            shutil.rmtree(old)
    logger.info("saved state to %s", final)
    return final


def write_failure(exc: BaseException, folder: Path) -> Optional[str]:
    """Why a write failed, in words, when it is the disk's fault; None for anything else (a bug).

    torch.save reports a full disk as a RuntimeError of its zip writer, not as an OSError.
    """
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{exc.strerror}, {shutil.disk_usage(folder).free // 2**20} MiB free"
        return exc.strerror or str(exc)
    if "PytorchStreamWriter failed" in str(exc) or "file write failed" in str(exc):
        return f"write failed, {shutil.disk_usage(folder).free // 2**20} MiB free"
    return None


def resume_point(args, run: Dict[str, Any], output_dir: Path, accelerator) -> Tuple[Optional[Path], Optional[Dict]]:
    """The checkpoint to resume from (None: start at step 0) and the run.json saved with it."""
    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = find_resume_checkpoint(args.resume_from_checkpoint, output_dir)
        if resume_path is None:
            accelerator.print(f"no checkpoint in '{output_dir}' to resume from; starting a new training run")
    claim_output_dir(output_dir, run, resume_path is not None, args.overwrite_output_dir, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if resume_path is None:
        return None, None
    saved = read_run_json(resume_path)
    if saved is None:
        logger.warning("%s has no run.json: cannot check that it belongs to this run", resume_path)
    else:
        compare_fingerprints(run, saved, resume_path)
    return resume_path, saved


# --------------------------------------------------------------------------- randomness


def step_generator(seed: int, step: int, micro: int, process: int):
    """A CPU generator fixed by (seed, optimisation step, micro-batch, process).

    Drawing noise and timesteps from it (then moving them to the device) makes every
    step's randomness independent of what ran before, so resuming repeats the original run,
    and it sidesteps device generators whose state accelerate cannot save.
    """
    import torch

    digest = hashlib.sha256(f"{seed}-{step}-{micro}-{process}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


# --------------------------------------------------------------------------- validation


class StopFlag:
    """Turns the first Ctrl-C or SIGTERM into a request to checkpoint at the next step boundary.

    SIGTERM is what a shutdown, ``systemctl stop`` and Slurm's ``scancel`` send; without it a
    stop would lose every step since the last --checkpointing_steps checkpoint. Stopping between
    steps (not in the middle of optimizer.step) keeps the saved state consistent; a second signal
    interrupts at once and the last checkpoint stays usable.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: Dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("%s received: saving a checkpoint after this step (send it again to abort at once)",
                       signal.Signals(signum).name)

    def __enter__(self) -> "StopFlag":
        self._previous = {signum: signal.signal(signum, self._handler) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def run_validation(args, accelerator, models: Dict[str, Any], model_dir: str, weight_dtype, seed: int,
                   label: str, epoch: int) -> List[Any]:
    """Generate validation images with the models already in memory (no second from_pretrained).

    The inference scheduler is the one named in the pipeline's model_index.json (PNDM for
    v1.4), read from its small config file. The safety checker is left out on purpose: it
    is a second large model, and these images are only for the operator.
    """
    import diffusers
    import numpy as np
    import torch

    scheduler_class = json.loads(Path(model_dir, "model_index.json").read_text())["scheduler"][1] \
        if os.path.isdir(model_dir) else "PNDMScheduler"
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(model_dir, subfolder="scheduler")
    unet = models["unet"]
    pipeline = diffusers.StableDiffusionPipeline(
        vae=models["vae"], text_encoder=models["text_encoder"], tokenizer=models["tokenizer"], unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    logger.info("validation (%s): %d image(s) of %r", label, args.num_validation_images, args.validation_prompt)
    unet.eval()
    generator = sdkit_env.make_generator(accelerator.device, seed)
    images = [pipeline(args.validation_prompt, num_inference_steps=30, generator=generator).images[0]
              for _ in range(args.num_validation_images)]
    unet.train()
    folder = Path(args.output_dir, "validation")
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{label}_{i}.png")
    for tracker in getattr(accelerator, "trackers", []):  # accelerate 0.16 has none without init_trackers
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack([np.asarray(img) for img in images]), epoch,
                                      dataformats="NHWC")
    del pipeline
    return images


def average_gradients(parameters, num_processes: int) -> None:
    """Average LoRA gradients over processes.

    accelerate wraps the AttnProcsLayers container in DistributedDataParallel, but its
    forward is never called (the UNet calls the processors directly), so DDP never
    synchronises anything: upstream's multi-process runs drift apart, one model per process.
    Averaging already-averaged gradients is harmless should DDP ever do it as well.
    """
    import torch.distributed as dist

    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= num_processes


def end_trackers(accelerator) -> None:
    """Close TensorBoard writers; accelerate 0.16 fails here when no tracker was ever started."""
    if getattr(accelerator, "trackers", None):
        accelerator.end_training()


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sdkit_env.setup_logging(args.verbose)

    # The device must be known (and torch_tpu imported) before accelerate builds its state:
    # accelerate 0.16 reads ACCELERATE_TORCH_DEVICE once, when the first Accelerator is created.
    device = sdkit_env.resolve_device(args.device)
    os.environ["ACCELERATE_TORCH_DEVICE"] = str(device)
    sdkit_env.raise_open_files_limit()
    sdkit_env.apply_hub_token(args.hub_token)

    assets = sdkit_env.assets_root(args.assets)
    model_dir = sdkit_env.resolve_model_dir(args.pretrained_model_name_or_path, assets)
    sdkit_env.check_model_weights(model_dir, args.allow_pickle)
    dataset_source = sdkit_env.resolve_source(args.dataset_name, assets) if args.dataset_name else None
    sdkit_env.configure_offline(model_dir, dataset_source or args.train_data_dir)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, broadcast, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    import sdkit_cache
    import sdkit_data

    mixed_precision = args.mixed_precision or "no"
    if mixed_precision == "fp16" and device.type == "cpu":
        # accelerate 0.16 makes neither a GradScaler nor autocast on the CPU, and fp16 frozen
        # weights with fp32 LoRA layers are not supported there: train in fp32 instead.
        logger.warning("--mixed_precision fp16 on the CPU is not supported (fp32 LoRA weights with fp16 frozen "
                       "weights); the frozen modules stay fp32 and training runs in fp32.")
        mixed_precision = "no"

    output_dir = Path(args.output_dir)
    # cpu=True for anything but CUDA: accelerate 0.16 otherwise assumes NCCL and CUDA as soon as it
    # runs under a multi-process launcher; with it, processes join over gloo and each keeps the
    # device taken from ACCELERATE_TORCH_DEVICE above.
    try:
        accelerator = Accelerator(
            cpu=device.type != "cuda",
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                logging_dir=str(output_dir / args.logging_dir)),
        )
    except ValueError as exc:
        if device.type == "tpu" and mixed_precision == "fp16":
            # Unpatched accelerate only knows CUDA's GradScaler (the tutorial's accelerator.py edit, Sophgo's patch).
            raise RunnerError(f"fp16 on {device} needs accelerate patched for torch_tpu's GradScaler (the kit's "
                              f"patches/accelerate/v<version>/, applied by its upstream role): {exc}") from None
        raise
    logger.info("device %s, %d process(es), mixed precision %s", accelerator.device, accelerator.num_processes,
                mixed_precision)

    # Identity of this run: refuse to mix checkpoints of different runs in one folder.
    run = fingerprint(args, model_dir, mixed_precision, accelerator.num_processes)
    resume_path, saved = resume_point(args, run, output_dir, accelerator)
    seed = args.seed
    if seed is None and saved is not None:
        seed = saved.get("seed")  # a resumed run must replay the original's data order and noise
    if seed is None:
        # All processes must share it (it fixes the data order they split between them).
        drawn = torch.tensor([int.from_bytes(os.urandom(3), "little")], device=accelerator.device)
        seed = int(broadcast(drawn).item()) if accelerator.num_processes > 1 else int(drawn.item())
        logger.info("no --seed given: using %d (recorded in run.json)", seed)
    run["seed"] = seed
    run.update(described(args))  # after the comparisons with an earlier run.json: a new prompt may resume
    set_seed(seed)
    # The data is checked before the models load (minutes for SD v1.4) and before run.json claims the folder.
    with accelerator.main_process_first():
        rows = sdkit_data.load_rows(args, seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_run_json(output_dir, run)

    noise_scheduler, tokenizer, text_encoder, vae, unet = load_models(model_dir, args.revision, args.allow_pickle)
    # Hashed as loaded (the dtype is part of the cache key on its own).
    vae_id = sdkit_cache.vae_identity(model_dir, args.revision, vae) if not args.no_cache else None
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)

    # Frozen weights are only used for inference inside the training step: half precision is enough.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)

    add_lora(unet, args.rank, sdpa=use_sdpa(args.no_cache, accelerator.device.type))
    if args.enable_xformers_memory_efficient_attention:
        try:
            unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:
            raise RunnerError(f"--enable_xformers_memory_efficient_attention: {exc}") from None
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    # The tutorial's second edit: the new LoRA layers are created on the CPU and must follow the UNet.
    lora_layers = sdkit_lora.lora_layers(unet).to(accelerator.device)

    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
    optimizer_class = torch.optim.AdamW
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RunnerError("--use_8bit_adam needs bitsandbytes (pip install bitsandbytes; CUDA only)") from None
        optimizer_class = bnb.optim.AdamW8bit
    optimizer = optimizer_class(lora_layers.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)

    train_dataset = sdkit_data.build_dataset(args, rows, tokenizer, seed)
    if args.buckets:
        # Batches of one bucket each; skips and lengths are counted in batches.
        sampler = sdkit_data.BucketBatchSampler(train_dataset.transform.buckets, args.train_batch_size, seed)
        train_dataloader = torch.utils.data.DataLoader(
            train_dataset, batch_sampler=sampler, collate_fn=sdkit_data.collate,
            num_workers=args.dataloader_num_workers)
    else:
        sampler = sdkit_data.EpochShuffleSampler(len(train_dataset), seed)
        train_dataloader = torch.utils.data.DataLoader(
            train_dataset, sampler=sampler, collate_fn=sdkit_data.collate, batch_size=args.train_batch_size,
            num_workers=args.dataloader_num_workers,
        )

    overrode_max_train_steps = args.max_train_steps is None
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    lora_layers, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        lora_layers, optimizer, train_dataloader, lr_scheduler)

    # The sharded loader may be shorter than the plain one: recompute as upstream does.
    batches_per_epoch = len(train_dataloader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    run["total_steps"] = args.max_train_steps  # known only now; sdkit_job reports step/total from it
    if accelerator.is_main_process:
        write_run_json(output_dir, run)

    if accelerator.is_main_process and args.report_to != "none":
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
        accelerator.init_trackers("text2image-fine-tune", config=config)

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info("  Num examples = %d, epochs = %d, batch size per device = %d, total batch size = %d",
                len(train_dataset), args.num_train_epochs, args.train_batch_size, total_batch_size)
    logger.info("  Gradient accumulation steps = %d, total optimization steps = %d",
                args.gradient_accumulation_steps, args.max_train_steps)

    global_step = 0
    if resume_path is not None:
        accelerator.print(f"resuming from checkpoint {resume_path}")
        accelerator.load_state(str(resume_path))
        global_step = int(resume_path.name.split("-", 1)[1])
    first_epoch = global_step // steps_per_epoch
    # Batches of the first epoch already consumed before the checkpoint (whole accumulation groups).
    resume_batches = min((global_step % steps_per_epoch) * args.gradient_accumulation_steps, batches_per_epoch)

    if args.prediction_type is not None:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    if noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise RunnerError(f"unknown prediction type {noise_scheduler.config.prediction_type}")

    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
    use_cache = not args.no_cache
    ram_bytes = args.latent_cache_ram_mib * 2**20
    latent_cache = text_cache = None
    if use_cache:
        # Everything besides the image and its preprocessing that changes a latent.
        vae_model = f"{vae_id}:{weight_dtype}:{accelerator.device.type}"
        cache_dir = Path(args.latent_cache_dir) if args.latent_cache_dir else output_dir / "latent_cache"
        latent_cache = sdkit_cache.LatentCache(cache_dir, vae_model, ram_bytes)
        text_cache = sdkit_cache.ByteLRU(ram_bytes)  # captions re-encode cheaply: RAM only, bounded alike
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def latent_parameters(batch) -> torch.Tensor:
        """Mean and log-variance of the VAE posterior per image, encoded once per (image, size, crop, flip)."""
        keys = batch["keys"]
        if latent_cache is not None:
            height, width = batch["pixel_values"].shape[-2:]
            shape = (2 * vae.config.latent_channels, height // vae_factor, width // vae_factor)
            cached = [latent_cache.get(k, shape) for k in keys]
            if all(c is not None for c in cached):
                return torch.stack(cached).to(accelerator.device)
        # Any miss encodes the whole batch, as upstream does, so that a latent never depends on which
        # of its batch's neighbours happened to be cached.
        with torch.no_grad():
            pixels = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)
            params = vae.encode(pixels).latent_dist.parameters
        if latent_cache is not None:
            for key, value in zip(keys, params.detach().cpu()):
                latent_cache.put(key, value)
        return params

    def text_embeddings(input_ids) -> torch.Tensor:
        ids_keys = [row.numpy().tobytes() for row in input_ids.cpu()]
        if text_cache is not None:
            cached = [text_cache.get(k) for k in ids_keys]
            if all(c is not None for c in cached):
                return torch.stack(cached).to(accelerator.device)
        with torch.no_grad():
            hidden = text_encoder(input_ids.to(accelerator.device))[0]
        if text_cache is not None:
            for key, value in zip(ids_keys, hidden.detach().cpu()):
                text_cache.put(key, value)
        return hidden

    def cache_report() -> Dict[str, Any]:
        return {"latent_cache": latent_cache.report() if latent_cache is not None else None}

    def training_loss(batch, generator) -> torch.Tensor:
        params = latent_parameters(batch)
        mean, logvar = torch.chunk(params, 2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        sample_noise = torch.randn(mean.shape, generator=generator).to(accelerator.device, dtype=mean.dtype)
        latents = (mean + std * sample_noise) * vae.config.scaling_factor

        noise = torch.randn(latents.shape, generator=generator)
        if args.noise_offset:
            # https://www.crosslabs.org//blog/diffusion-with-offset-noise
            noise += args.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        noise = noise.to(accelerator.device, dtype=latents.dtype)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(accelerator.device, sdkit_env.index_dtype(accelerator.device))
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_embeddings(batch["input_ids"])

        if noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states).sample
        if args.snr_gamma is None:
            return torch.nn.functional.mse_loss(model_pred.float(), target.float(), reduction="mean")
        # Min-SNR weighting, adapted to epsilon prediction as in upstream (arXiv:2303.09556, section 4.2).
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, args.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = torch.nn.functional.mse_loss(model_pred.float(), target.float(), reduction="none")
        return (loss.mean(dim=list(range(1, len(loss.shape)))) * weights).mean()

    def should_stop(flag: StopFlag) -> bool:
        """All processes must agree to stop at the same step, or the next collective hangs."""
        if accelerator.num_processes == 1:
            return flag.requested
        votes = accelerator.gather(torch.tensor([1.0 if flag.requested else 0.0], device=accelerator.device))
        return bool(votes.sum().item() > 0)

    metrics_path = output_dir / "metrics.jsonl"
    progress_bar = tqdm(range(global_step, args.max_train_steps), disable=not accelerator.is_local_main_process,
                        desc="Steps")
    step_started = time.perf_counter()
    unet.train()
    with StopFlag() as stop:
        for epoch in range(first_epoch, args.num_train_epochs):
            skip = resume_batches if epoch == first_epoch else 0
            if hasattr(train_dataloader, "set_epoch"):  # accelerate 0.30 tells the sampler its own epoch count
                train_dataloader.set_epoch(epoch)
            per_batch = 1 if args.buckets else args.train_batch_size
            sampler.set_epoch(epoch, skip=skip * per_batch * accelerator.num_processes)
            train_dataset.set_epoch(epoch)
            train_loss = 0.0
            micro = 0
            for batch in train_dataloader:
                with accelerator.accumulate(unet):
                    loss = training_loss(batch, step_generator(seed, global_step, micro, accelerator.process_index))
                    micro += 1
                    avg_loss = accelerator.gather(loss.detach().repeat(args.train_batch_size)).mean()
                    train_loss += avg_loss.item() / args.gradient_accumulation_steps
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and accelerator.num_processes > 1:
                        average_gradients(lora_layers.parameters(), accelerator.num_processes)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(lora_layers.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()

                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                micro = 0
                lr = lr_scheduler.get_last_lr()[0]
                now = time.perf_counter()
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{train_loss:.4f}", lr=lr)
                if args.report_to != "none":
                    accelerator.log({"train_loss": train_loss, "lr": lr}, step=global_step)
                if accelerator.is_main_process:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps({"step": global_step, "epoch": epoch, "loss": train_loss, "lr": lr,
                                                 "step_time_s": round(now - step_started, 6)}) + "\n")
                step_started = now
                train_loss = 0.0

                stopping = should_stop(stop)
                if global_step % args.checkpointing_steps == 0 or stopping:
                    if accelerator.is_main_process:
                        save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit, run)
                if stopping:
                    accelerator.wait_for_everyone()
                    progress_bar.close()
                    end_trackers(accelerator)
                    if accelerator.is_main_process:
                        write_run_json(output_dir, run, **cache_report())
                        print(f"interrupted at step {global_step}: checkpoint saved in "
                              f"{output_dir / f'checkpoint-{global_step}'}; resume with "
                              "--resume_from_checkpoint latest", file=sys.stderr)
                    return 130
                if global_step >= args.max_train_steps:
                    break

            last_epoch = epoch == args.num_train_epochs - 1 or global_step >= args.max_train_steps
            if accelerator.is_main_process and args.validation_prompt and (
                    epoch % args.validation_epochs == 0 or last_epoch):
                run_validation(args, accelerator, models, model_dir, weight_dtype, seed, f"epoch-{epoch}", epoch)
                step_started = time.perf_counter()  # keep validation out of step_time_s
            if global_step >= args.max_train_steps:
                break

    progress_bar.close()
    accelerator.wait_for_everyone()
    # Equal on every process when gradients were synchronised; handy when checking a multi-chip run.
    logger.debug("process %d: LoRA parameter checksum %.8f", accelerator.process_index,
                 float(sum(p.detach().double().sum().item() for p in lora_layers.parameters())))
    if accelerator.is_main_process:
        # LoRA layers are fp32 already.
        weights = sdkit_lora.save_lora(unet, output_dir)
        write_run_json(output_dir, run, step=global_step, finished=True, **cache_report())
        logger.info("LoRA weights (%s) saved to %s", sdkit_lora.flow_name(), weights)
    end_trackers(accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(sdkit_env.run_main(main))
