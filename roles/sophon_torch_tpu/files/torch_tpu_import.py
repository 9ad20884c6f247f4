"""Imports torch_tpu the way the runners do and reports what it found, as JSON.

The kit runs this once at provision time as root: older torch_tpu versions create symlinks inside
their own site-packages lib/ on first import, which the unprivileged runner user could not do later.
"""

import json

import torch
import torch_tpu

tpu = getattr(torch_tpu, "tpu", None)
try:
    count = int(tpu.device_count()) if tpu is not None else None
    available = bool(tpu.is_available()) if tpu is not None else None
    error = None
except Exception as exc:  # the library failing to talk to the driver is reported, not fatal here
    count, available, error = None, None, "%s: %s" % (type(exc).__name__, exc)
print(json.dumps({
    "file": torch_tpu.__file__,
    "torch": torch.__version__,
    "has_tpu": tpu is not None,
    "has_amp_grad_scaler": tpu is not None and hasattr(getattr(tpu, "amp", None), "GradScaler"),
    "torch_has_tpu": hasattr(torch, "tpu"),
    "device_count": count,
    "available": available,
    "error": error,
}, sort_keys=True))
