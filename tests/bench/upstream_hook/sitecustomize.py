"""Loss and time per step of the unmodified upstream script, for bench_photos.py.

bench_photos.py puts this folder first on PYTHONPATH of the upstream process only, so Python imports
this module at start-up, before the script runs, and the script's file stays byte for byte v0.20.0's.
It does nothing unless SDKIT_UPSTREAM_METRICS names the JSONL file to append to. Then it wraps:

- ``Accelerator.init_trackers``: v0.20.0 calls it once, right before the training loop, so its
  return marks the start of the first step;
- ``Accelerator.log``: v0.20.0 calls it once per optimisation step with ``{"train_loss": ...}``;
  one line per call, ``{"step", "loss", "time"}``, time in seconds since the mark (perf_counter);
- ``save_attn_procs``: the LoRA weights are on disk when it returns; one line ``{"saved": time}``
  and the process ends there with status 0. What v0.20.0 does next is its final inference, which
  generates images (work the runner's end-to-end time does not hold either) and, without
  ``--validation_prompt``, fails on a prompt of None.

It also lets torchvision import on .venv-ml's CPU torch. The index has only the CUDA build of
torchvision 0.28.0, whose compiled ops (_C.so) need torch's CUDA libraries and do not load; the
script uses only torchvision.transforms, pure Python on PIL images, which need none of them. But
torchvision's import registers fake kernels for ``torchvision::nms`` and ``qnms`` and fails when no
such operator exists; declaring their schemas first (only when _C.so does not load) lets it through.

It shadows Debian's sitecustomize (the apport crash hook), which a benchmark does not need.
"""

from __future__ import annotations

import json
import os
import time

_PATH = os.environ.get("SDKIT_UPSTREAM_METRICS")


def _append(row: dict) -> None:
    # Opened per line and closed at once: the process may end at os._exit, which flushes nothing.
    with open(_PATH, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


# The two operators torchvision's _meta_registrations registers fake kernels for whether or not its
# _C.so loaded. Nothing here calls them, so only their names must exist; the Library object that
# declares them is kept in _LIBRARIES, as the declarations last only as long as it does.
_TORCHVISION_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_LIBRARIES = []


def _torchvision_without_ops() -> None:
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return
    compiled = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(compiled)
        return  # a build that matches this torch: its own operators are there
    except OSError:
        pass
    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_SCHEMAS:
        library.define(schema)
    _LIBRARIES.append(library)


def _install() -> None:
    _torchvision_without_ops()
    import accelerate
    from diffusers.loaders import UNet2DConditionLoadersMixin

    started = [time.perf_counter()]
    init_trackers, log = accelerate.Accelerator.init_trackers, accelerate.Accelerator.log
    save_attn_procs = UNet2DConditionLoadersMixin.save_attn_procs

    def timed_init_trackers(self, *args, **kwargs):
        result = init_trackers(self, *args, **kwargs)
        started[0] = time.perf_counter()
        return result

    def timed_log(self, values, step=None, **kwargs):
        if "train_loss" in values:
            _append({"step": step, "loss": float(values["train_loss"]), "time": time.perf_counter() - started[0]})
        return log(self, values, step=step, **kwargs)

    def saved_then_exit(self, *args, **kwargs):
        save_attn_procs(self, *args, **kwargs)
        _append({"saved": time.perf_counter() - started[0]})
        os._exit(0)

    accelerate.Accelerator.init_trackers = timed_init_trackers
    accelerate.Accelerator.log = timed_log
    UNet2DConditionLoadersMixin.save_attn_procs = saved_then_exit


if _PATH:
    _install()
