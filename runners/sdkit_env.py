"""Shared device, limits and environment handling for the sophon-sd-kit runners.

Every runner (``infer.py``, ``train_lora.py``) goes through this module so that the
answers to "which chip do we run on", "where do the weights come from" and "what
happens when something is missing" are the same everywhere.

The runners are plain scripts deployed next to this file (for example under
``<SOPHON_SD_ROOT>/runners/``); they import it as a flat module, no install needed.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from sdkit_files import HUB_TOKEN_FILE_KEY, EnvFileError, read_hub_token

logger = logging.getLogger("sdkit")

# Hub ids used by the tutorial and the folder that holds each of them in Sophgo's
# download share ("bundle"). The share exists because the hub is often unreachable
# from the hosts, and the pokemon dataset has been taken down from the hub anyway.
BUNDLE_MODEL_DIR = "CompVis_SD14_pretrained_weights"
BUNDLE_DATASET_DIR = "dataset"
BUNDLE_LORA_DIR = "sayakpau_sd_lora-t4"
BUNDLE_SOPHGO_LORA_DIR = "SophgoTrained_lroa_weight"  # sic: the share spells it this way
HUB_TO_BUNDLE = {
    "CompVis/stable-diffusion-v1-4": BUNDLE_MODEL_DIR,
    "lambdalabs/pokemon-blip-captions": BUNDLE_DATASET_DIR,
    "sayakpaul/sd-model-finetuned-lora-t4": BUNDLE_LORA_DIR,
}
ASSETS_ENV = "SOPHON_SD_ASSETS"

TPU_CHECKS = (
    "check the card with `bm-smi --noloop --text_format`, the driver with `lsmod | grep bmsophon` "
    "and the device nodes with `ls /dev/bm-sophon*`"
)

WANTED_OPEN_FILES = 65535


class RunnerError(Exception):
    """A problem the operator can fix; each runner prints its message as one line and exits 2.

    Used instead of tracebacks because the runners are driven by Ansible and by people
    following the tutorial: they need to know what to fix, not where in the code it broke.
    """


def run_main(main, argv: Optional[list] = None) -> int:
    """Run a runner's ``main``: a RunnerError becomes one line on stderr and exit code 2,
    Ctrl-C outside the places that handle it becomes exit code 130 without a traceback."""
    try:
        return main(argv) or 0
    except RunnerError as exc:
        message = " ".join(str(exc).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files already written (checkpoints included) are kept", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- logging


def setup_logging(verbose: bool = False) -> None:
    """Log like the diffusers examples do, and quieten the libraries' chatter.

    The libraries' warnings about e.g. missing safety checkers are noise for an operator;
    our own warnings (fp16 on CPU, low open-files limit) must stay visible.
    """
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.DEBUG if verbose else logging.INFO,
    )
    for noisy in ("diffusers", "transformers", "datasets"):
        try:
            module = __import__(noisy)
            module.utils.logging.set_verbosity_error()
        except Exception:  # a missing or different library only costs some log lines
            pass


# --------------------------------------------------------------------------- device


def _import_torch_tpu():
    """Import Sophgo's torch_tpu, which registers the ``tpu`` device with torch."""
    try:
        import torch_tpu  # noqa: F401
    except ImportError as exc:
        raise RunnerError(
            f"device 'tpu' needs Sophgo's torch_tpu package, which cannot be imported ({exc}). "
            "Install Sophgo's torch_tpu wheel (torch_tpu-2.x.0.postN-...whl from the SDK or the download share; "
            "PyPI's 'torch-tpu' is Google's, not Sophgo's) or run the kit's torch_tpu role."
        ) from None
    if not hasattr(torch_tpu, "tpu"):
        raise RunnerError(
            "the installed 'torch_tpu' has no torch_tpu.tpu module: it is Google's Cloud TPU package from PyPI, "
            "not Sophgo's. Uninstall it and install Sophgo's torch_tpu wheel (or run the kit's torch_tpu role)."
        )
    return torch_tpu


def resolve_device(cli_device: Optional[str] = None) -> torch.device:
    """Turn ``--device`` (or ``ACCELERATE_TORCH_DEVICE``, default ``cpu``) into a usable torch.device.

    Asking for a TPU never silently falls back to the CPU: a fine-tune that quietly runs
    on the host CPU takes days instead of hours and looks like a hang.

    ``tpu`` without an index picks the chip of this process under ``accelerate launch``
    (LOCAL_RANK), so that each process of a multi-chip run drives its own chip.
    """
    spec = (cli_device or os.environ.get("ACCELERATE_TORCH_DEVICE") or "cpu").strip().lower()
    kind, _, index_text = spec.partition(":")
    index: Optional[int] = None
    if index_text:
        if not index_text.isdigit():
            raise RunnerError(f"device '{spec}' is not valid: use cpu, cuda, cuda:N, tpu or tpu:N")
        index = int(index_text)

    if kind == "cpu":
        return torch.device("cpu")

    if kind == "tpu":
        torch_tpu = _import_torch_tpu()
        if index is None:
            index = int(os.environ.get("LOCAL_RANK", "0"))
        try:
            available = bool(torch_tpu.tpu.is_available())
            count = int(torch_tpu.tpu.device_count())
        except Exception as exc:  # the library itself failing to talk to the driver
            raise RunnerError(f"torch_tpu could not query the TPU ({exc}); {TPU_CHECKS}") from None
        if not available or count == 0:
            raise RunnerError(
                f"device '{spec}' was asked for but torch_tpu sees no TPU (is_available() is False); "
                f"{TPU_CHECKS}. Not falling back to the CPU."
            )
        if index >= count:
            raise RunnerError(
                f"device 'tpu:{index}' was asked for but torch_tpu sees only {count} chip(s) "
                f"(tpu:0..tpu:{count - 1}); {TPU_CHECKS}"
            )
        return torch.device(f"tpu:{index}")

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RunnerError(f"device '{spec}' was asked for but torch.cuda.is_available() is False")
        if index is not None and index >= torch.cuda.device_count():
            raise RunnerError(f"device '{spec}' was asked for but only {torch.cuda.device_count()} GPU(s) exist")
        return torch.device(spec)

    raise RunnerError(f"device '{spec}' is not supported: use cpu, cuda, cuda:N, tpu or tpu:N")


def resolve_dtype(name: Optional[str], device: torch.device) -> torch.dtype:
    """Pick the weights' dtype for inference: fp16 by default on accelerators, fp32 on CPU.

    Stable Diffusion in fp16 on the CPU either fails (ops without half kernels) or is far
    slower than fp32, so on the CPU fp16 is replaced by fp32, with a warning saying so.
    """
    name = (name or "fp16").lower()
    table = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32, "no": torch.float32}
    if name not in table:
        raise RunnerError(f"dtype '{name}' is not supported: use fp16, bf16 or fp32")
    dtype = table[name]
    if dtype == torch.float16 and device.type == "cpu":
        logger.warning("fp16 is not usable for Stable Diffusion on the CPU; using fp32 instead.")
        return torch.float32
    return dtype


def index_dtype(device: torch.device) -> torch.dtype:
    """The integer dtype for index tensors (timesteps) on ``device``: int32 on tpu, which torch_tpu
    lists as having no int64 (Sophgo's script does ``timesteps.to(torch.int32)``); int64 elsewhere,
    as upstream, so that CPU runs of every profile give the same numbers as before."""
    return torch.int32 if device.type == "tpu" else torch.int64


def seed_everything(seed: Optional[int]) -> None:
    """Seed Python, NumPy and torch, so that anything not driven by an explicit generator repeats."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(device: torch.device, seed: Optional[int]) -> torch.Generator:
    """A generator on ``device`` (as the tutorial does), seeded when a seed is given.

    Noise drawn on the device keeps results identical for a seed on a given device;
    different devices may still give different pixels.
    """
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    return generator


def attention_dims(unet) -> Dict[str, Tuple[int, Optional[int]]]:
    """(hidden size, cross-attention size or None) of each attention processor of an SD UNet.

    The sizes a LoRAAttnProcessor for that slot must have: self-attention (attn1) has no
    cross-attention input; the hidden size follows the block's channel count, mirrored for the up
    blocks. The trainer creates its LoRA layers from this, the fixtures too.
    """
    channels = list(unet.config.block_out_channels)
    dims: Dict[str, Tuple[int, Optional[int]]] = {}
    for name in unet.attn_processors.keys():
        cross_attention_dim = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden_size = channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden_size = channels[int(name[len("down_blocks.")])]
        dims[name] = (hidden_size, cross_attention_dim)
    return dims


# --------------------------------------------------------------------------- limits


def raise_open_files_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (the tutorial's ``ulimit -n 65535``).

    The datasets/arrow stack and the TPU runtime keep many files open; the tutorial asks
    for 65535. Without CAP_SYS_RESOURCE a process can only go up to its hard limit, so we
    go as far as allowed and warn when that is below what the tutorial asks for.
    Returns the soft limit in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit from %s to %s: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < WANTED_OPEN_FILES:
        logger.warning(
            "open-files limit is %s (hard limit %s), below the %s the tutorial asks for; "
            "raise the hard limit (limits.conf / systemd LimitNOFILE) if training fails with 'Too many open files'.",
            soft, hard, WANTED_OPEN_FILES,
        )
    return soft


# --------------------------------------------------------------------------- offline and bundle paths


def configure_offline(*paths: Optional[Union[str, os.PathLike]]) -> bool:
    """Switch the Hugging Face libraries to offline mode when every given source is local.

    With local paths there is nothing to download, and on hosts without the hub each
    library otherwise waits on network timeouts before falling back. Returns True when
    offline mode was switched on. None entries (options not given) are ignored.
    """
    given = [p for p in paths if p]
    if not given or not all(Path(p).exists() for p in given):
        return False
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ[name] = "1"
    # huggingface_hub reads the variable once at import; keep an already imported copy in step.
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except Exception:
        pass
    return True


def assets_root(cli_assets: Optional[str] = None) -> Optional[Path]:
    """The download-share root given by ``--assets`` or ``SOPHON_SD_ASSETS``, if any."""
    value = cli_assets or os.environ.get(ASSETS_ENV)
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise RunnerError(
            f"assets folder '{root}' (from --assets or {ASSETS_ENV}) does not exist; it should be the download share "
            f"holding {BUNDLE_MODEL_DIR}/, {BUNDLE_DATASET_DIR}/, {BUNDLE_LORA_DIR}/"
        )
    return root


def resolve_source(name_or_path: str, assets: Optional[Path]) -> str:
    """Map a tutorial hub id to its folder in the download share; leave anything else alone.

    Local paths win: an existing file or folder is returned as given. A hub id is mapped
    only when an assets root is known; otherwise it stays a hub id for the libraries.
    """
    if os.path.exists(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    if assets is not None and name_or_path in HUB_TO_BUNDLE:
        mapped = assets / HUB_TO_BUNDLE[name_or_path]
        if not mapped.exists():
            raise RunnerError(
                f"'{name_or_path}' maps to '{mapped}' in the assets folder, but that path does not exist"
            )
        return str(mapped)
    return name_or_path


def looks_like_local_path(name_or_path: str) -> bool:
    """True for things meant as paths (absolute, ./relative, ~) rather than hub ids 'owner/name'."""
    return name_or_path.startswith(("/", "./", "../", "~", ".")) or name_or_path.count("/") != 1


def resolve_model_dir(name_or_path: str, assets: Optional[Path]) -> str:
    """Return a loadable Stable Diffusion pipeline location: a local folder or a hub id.

    A local folder must hold ``model_index.json`` (a diffusers pipeline saved with
    save_pretrained). Copies of the share sometimes nest the pipeline one level deeper, so
    a single sub-folder holding ``model_index.json`` is accepted as well.
    """
    source = resolve_source(name_or_path, assets)
    path = Path(source)
    if path.exists() or looks_like_local_path(name_or_path):
        if not path.is_dir():
            raise RunnerError(
                f"model folder '{path}' does not exist; it should be a diffusers Stable Diffusion pipeline folder "
                "containing model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/"
            )
        if (path / "model_index.json").is_file():
            return str(path)
        nested = sorted(p.parent for p in path.glob("*/model_index.json"))
        if len(nested) == 1:
            return str(nested[0])
        raise RunnerError(
            f"model folder '{path}' has no model_index.json; it should be a diffusers Stable Diffusion pipeline "
            "folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    return source


# Weights that torch.load unpickles (torch 2.1 with a full unpickler: a file can run any code), and the
# names under which diffusers and transformers look for safetensors first, whole or sharded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFE_WEIGHTS = tuple(f"{stem}.safetensors{index}" for stem in ("diffusion_pytorch_model", "model")
                     for index in ("", ".index.json"))
ALLOW_PICKLE_FLAG = "--allow_pickle"


def safe_weights(allow_pickle: bool) -> Dict[str, Optional[bool]]:
    """from_pretrained's keyword for a base model: safetensors only, unless the operator allowed pickles
    (then the libraries' own choice, which still prefers safetensors where both are there)."""
    return {"use_safetensors": None if allow_pickle else True}


def check_model_weights(model_dir: str, allow_pickle: bool) -> None:
    """Refuse a local pipeline folder whose UNet, VAE, text encoder (or any component) has its weights only as
    a pickle, before anything loads.

    Checked here rather than left to use_safetensors=True: transformers (4.29 and 4.41) still loads a
    local pytorch_model.bin with it, and diffusers 0.20's pipeline passes it on to no component.
    A hub id is left to use_safetensors=True, which the libraries do honour for downloads.
    """
    folder = Path(model_dir)
    if allow_pickle or not folder.is_dir():
        return
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return  # resolve_model_dir found it; the pipeline's own loader says what is wrong with it
    components = [folder / name for name, value in sorted(index.items())
                  if not name.startswith("_") and isinstance(value, list) and (folder / name).is_dir()]
    for component in components:
        if any((component / name).is_file() for name in SAFE_WEIGHTS):
            continue
        pickles = sorted(p.name for p in component.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise RunnerError(f"model folder '{folder}' has {component.name} weights only as a pickle ({pickles[0]}), "
                              f"and loading one can run code hidden in it: convert the model to safetensors, or "
                              f"pass {ALLOW_PICKLE_FLAG} if you trust where it came from")


def apply_hub_token(cli_token: Optional[str] = None) -> bool:
    """Hand a Hugging Face token to the libraries through the environment; True when there is one.

    The file named by SOPHON_SD_HUB_TOKEN_FILE wins over ``--hub_token``: a flag's value is seen
    by every local user in the process list and copied into logs, the file is readable by the
    runner group only. huggingface_hub reads HF_TOKEN (HUGGING_FACE_HUB_TOKEN before 0.20)
    whenever a download passes no token, which is how diffusers 0.20 and transformers 4.29 call it.
    """
    try:
        token = read_hub_token(os.environ)
    except EnvFileError as exc:
        raise RunnerError(str(exc)) from None
    if token and cli_token and token != cli_token:
        logger.warning("--hub_token ignored: the token in %s is used", HUB_TOKEN_FILE_KEY)
    token = token or cli_token
    if token:
        os.environ["HF_TOKEN"] = token
        os.environ["HUGGING_FACE_HUB_TOKEN"] = token
    return bool(token)


def hub_error(what: str, name: str, exc: BaseException) -> RunnerError:
    """Explain a failed hub download in terms of what the operator can do offline."""
    return RunnerError(
        f"could not load {what} '{name}' ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        f"The Hugging Face hub is probably unreachable: pass a local path, or set {ASSETS_ENV} (or --assets) "
        "to the download share folder"
    )

