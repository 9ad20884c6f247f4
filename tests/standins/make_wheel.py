#!/usr/bin/env python3
"""Builds the torch_tpu STAND-IN wheels the kit's tests install. Not Sophgo's or Google's code.

Two kinds, each a deterministic zip (fixed timestamps, sorted entries, RECORD with hashes):

* ``sophgo``: laid out like Sophgo's torch_tpu wheel (author ``sophgo``, a ``torch_tpu/tpu/``
  package, ``torch_tpu/lib/libtorch_tpu.bm1684x.so`` and ``libtpudnn.bm1684x.so``), with the API the
  kit and the tutorial use: ``torch_tpu.tpu.is_available()``, ``device_count()``, ``set_device()``,
  ``current_device()``, ``synchronize()``, ``amp.GradScaler``, ``amp.autocast``. It has no TPU
  code: it reports ``SOPHON_STANDIN_TPU_COUNT`` devices (default 0) and the libraries are
  placeholders. ``--torch`` sets its ``Requires-Dist: torch==...`` pairing.
* ``google``: shaped like PyPI's ``torch-tpu`` 0.2.0 (Google's Cloud TPU backend): author Google,
  no ``torch_tpu/tpu/``. Used to test that the kit refuses it.

Usage: make_wheel.py sophgo OUT_DIR --python cp311 --torch 2.13.0 [--version 2.1.0.post1]
       make_wheel.py google OUT_DIR
Prints the path of the wheel it wrote.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import zipfile
from pathlib import Path

STANDIN_NOTE = "STAND-IN built by sophon-sd-kit's tests/standins; contains no TPU code."

SOPHGO_INIT = '''"""torch_tpu STAND-IN (sophon-sd-kit tests). Mimics the import-time behaviour of Sophgo's package:
it registers the ``tpu`` device name with torch and exposes ``torch.tpu``. No TPU code."""
import os

import torch

os.environ.setdefault("CHIP", "bm1684x")

from . import tpu  # noqa: E402

try:  # the device name "tpu" (torch.device("tpu:0")), as the real backend registers it
    torch.utils.rename_privateuse1_backend("tpu")
except (RuntimeError, AttributeError):
    pass
try:
    torch._register_device_module("tpu", tpu)
except (RuntimeError, AttributeError):
    if not hasattr(torch, "tpu"):
        torch.tpu = tpu

__version__ = "{version}"
STANDIN = True
'''

SOPHGO_TPU_INIT = '''"""torch_tpu.tpu STAND-IN: device queries answer from SOPHON_STANDIN_TPU_COUNT (default 0)."""
import os

from . import amp  # noqa: F401

_current = 0


def device_count():
    return int(os.environ.get("SOPHON_STANDIN_TPU_COUNT", "0") or 0)


def is_available():
    return device_count() > 0


def set_device(index):
    global _current
    index = int(str(index).rsplit(":", 1)[-1])
    if not 0 <= index < device_count():
        raise RuntimeError(f"invalid device index {index}: {device_count()} TPU(s) (stand-in)")
    _current = index


def current_device():
    return _current


def synchronize(device=None):
    return None
'''

SOPHGO_AMP = '''"""torch_tpu.tpu.amp STAND-IN: the names the patched accelerate and the runners use."""
import torch


class GradScaler(torch.amp.GradScaler if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") else object):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, enabled=True):
        if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
            super().__init__("cpu", init_scale=init_scale, growth_factor=growth_factor,
                             backoff_factor=backoff_factor, growth_interval=growth_interval, enabled=enabled)
        self.standin = True


class autocast(torch.autocast):
    def __init__(self, enabled=True, dtype=torch.float16, cache_enabled=True):
        super().__init__("cpu", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
'''

GOOGLE_INIT = '''"""STAND-IN shaped like PyPI's torch-tpu (Google's Cloud TPU backend): no torch_tpu.tpu module."""
__version__ = "0.2.0"
STANDIN = True
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(path: Path, files: dict[str, bytes], dist_info: str) -> None:
    records = [_record_line(name, data) for name, data in sorted(files.items())]
    records.append(f"{dist_info}/RECORD,,")
    files = dict(files)
    files[f"{dist_info}/RECORD"] = ("\n".join(records) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # dist-info last, as wheel tools do; everything else sorted.
        names = sorted(files, key=lambda n: (n.startswith(dist_info), n))
        for name in names:
            info = zipfile.ZipInfo(name, date_time=(2023, 8, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    path.write_bytes(buffer.getvalue())


def sophgo(out: Path, python: str, torch: str, version: str) -> Path:
    dist_info = f"torch_tpu-{version}.dist-info"
    tag = f"{python}-{python}-linux_x86_64"
    placeholder = f"{STANDIN_NOTE} Placeholder for Sophgo's BM1684X library.\n".encode()
    files = {
        "torch_tpu/__init__.py": SOPHGO_INIT.format(version=version).encode(),
        "torch_tpu/tpu/__init__.py": SOPHGO_TPU_INIT.encode(),
        "torch_tpu/tpu/amp.py": SOPHGO_AMP.encode(),
        "torch_tpu/lib/libtorch_tpu.bm1684x.so": placeholder,
        "torch_tpu/lib/libtpudnn.bm1684x.so": placeholder,
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: torch-tpu\n"
            f"Version: {version}\n"
            f"Summary: {STANDIN_NOTE} Laid out like Sophgo's torch_tpu for BM1684X.\n"
            "Author: sophgo\n"
            "License: STAND-IN\n"
            f"Requires-Python: =={python[2]}.{python[3:]}.*\n"
            f"Requires-Dist: torch=={torch}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: sophon-sd-kit-standins\nRoot-Is-Purelib: false\n"
            f"Tag: {tag}\n"
        ).encode(),
        f"{dist_info}/top_level.txt": b"torch_tpu\n",
    }
    path = out / f"torch_tpu-{version}-{tag}.whl"
    write_wheel(path, files, dist_info)
    return path


def google(out: Path) -> Path:
    dist_info = "torch_tpu-0.2.0.dist-info"
    files = {
        "torch_tpu/__init__.py": GOOGLE_INIT.encode(),
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: torch-tpu\n"
            "Version: 0.2.0\n"
            f"Summary: {STANDIN_NOTE} Shaped like PyPI's torch-tpu (Google Cloud TPU backend).\n"
            "Author: Google LLC\n"
            "License: STAND-IN\n"
            "Requires-Dist: torch>=2.11\n"
            "Requires-Dist: libtpu\n"
            "Requires-Dist: numpy>=2\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: sophon-sd-kit-standins\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ).encode(),
        f"{dist_info}/top_level.txt": b"torch_tpu\n",
    }
    path = out / "torch_tpu-0.2.0-py3-none-any.whl"
    write_wheel(path, files, dist_info)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["sophgo", "google"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--python", default="cp311", help="CPython tag, e.g. cp310 or cp311")
    parser.add_argument("--torch", default="2.13.0", help="the torch version the stand-in claims to pair with")
    parser.add_argument("--version", default="2.1.0.post1")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = sophgo(args.out, args.python, args.torch, args.version) if args.kind == "sophgo" else google(args.out)
    print(path)


if __name__ == "__main__":
    main()
