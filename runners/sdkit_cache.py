"""The trainer's latent cache: VAE posteriors on disk, keyed by everything that changes them.

Encoding an image with the VAE costs more than a UNet forward on a BM1684X, and the same (image,
size, crop, flip) gives the same posterior every time, so each one is encoded once and kept:

* on disk, one safetensors file per entry, ``<folder>/<2 hex>/<key>.safetensors``, written to a
  temporary name and ``os.replace``d, so a reader never sees half an entry and a resumed, repeated
  or concurrent run reuses what another wrote. safetensors holds tensors only: reading an entry can
  not run code, unlike a pickle;
* in RAM, an LRU bounded in bytes in front of it, so memory stays flat whatever the dataset's size.

The key is a sha256 over the VAE's identity (its config and weight files), the compute dtype and
device type, the target size, the image's content hash, the crop and the flip: a changed image or
another VAE gets another key and never a stale latent. The folder is runner-owned state but is not
trusted blindly: it must belong to this account and not be writable by others (a shared folder
could otherwise feed poisoned latents into training), and an entry that does not read back as the
expected tensor (truncated by a crash, edited, another key's) is encoded again, not a crash.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdkit_env import RunnerError

logger = logging.getLogger("sdkit")

FORMAT = "sdkit-latent-1"  # part of every key: a change of layout or meaning here invalidates old entries
# The files that make up a diffusers model's weights and configuration (whole or sharded, safe or pickled).
VAE_FILES = ("config.json", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class ByteLRU:
    """A least-recently-used map of tensors whose total size stays under ``limit_bytes`` (0 keeps nothing)."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = max(0, int(limit_bytes))
        self.bytes = 0
        self._items: "collections.OrderedDict[Hashable, torch.Tensor]" = collections.OrderedDict()

    def get(self, key: Hashable) -> Optional[torch.Tensor]:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = value.element_size() * value.nelement()
        if size > self.limit_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.element_size() * old.nelement()
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.limit_bytes:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.element_size() * evicted.nelement()

    def __len__(self) -> int:
        return len(self._items)


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of one file; cached by (path, size, mtime) so that it is read once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vae_identity(model_dir: str, revision: Optional[str], vae: Any) -> str:
    """What identifies the VAE's weights: a hash of its local config and weight files.

    A hub id that is not a local folder has its files in the hub cache under names the runner does
    not choose; then the loaded weights themselves are hashed (about a second for SD v1.4's VAE).
    """
    folder = Path(model_dir, "vae")
    files = sorted({p for pattern in VAE_FILES for p in folder.glob(pattern) if p.is_file()}) if folder.is_dir() else []
    digest = hashlib.sha256(FORMAT.encode())
    if any(p.name != "config.json" for p in files):
        for path in files:
            info = path.stat()
            digest.update(f"{path.name}:{_file_digest(str(path.resolve()), info.st_size, info.st_mtime_ns)}\n".encode())
        return digest.hexdigest()
    digest.update(json.dumps({"model": model_dir, "revision": revision}, sort_keys=True).encode())
    digest.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def entry_key(model: str, item_key: Tuple) -> str:
    """The cache key of one latent: ``model`` (VAE identity, dtype, device type) and the item's own key
    (content hash, target size, crop, flip), which sdkit_data builds."""
    return hashlib.sha256(json.dumps([FORMAT, model, list(item_key)]).encode()).hexdigest()


def check_folder(folder: Path) -> None:
    """Create the cache folder (private), or accept an existing one only if this account controls it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise RunnerError(f"cannot create the latent cache folder '{folder}' ({exc.strerror}): give a writable "
                          "--latent_cache_dir") from None
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o002:
        raise RunnerError(f"latent cache folder '{folder}' is a link, belongs to another user or is writable by "
                          "anyone: the latents in it would be trained on unchecked. Give a --latent_cache_dir of "
                          "this account's own (chmod o-w if it is yours)")


class LatentCache:
    """Latents on disk with a byte-bounded LRU in RAM in front; see the module's docstring."""

    def __init__(self, folder: Optional[Path], model: str, ram_bytes: int):
        self.folder = folder
        self.model = model
        self.ram = ByteLRU(ram_bytes)
        self.uid = os.geteuid()
        self.stats = {"hits_ram": 0, "hits_disk": 0, "encoded": 0, "rejected": 0, "write_errors": 0}
        if folder is not None:
            check_folder(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, item_key: Tuple, shape: Optional[Iterable[int]] = None) -> Optional[torch.Tensor]:
        """The cached latent of ``item_key``, or None; an entry that fails its checks is dropped."""
        key = entry_key(self.model, item_key)
        value = self.ram.get(key)
        if value is not None:
            self.stats["hits_ram"] += 1
            return value
        if self.folder is None:
            return None
        path = self.path(key)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        value = self._read(path, key, info, shape)
        if value is None:
            self.stats["rejected"] += 1
            logger.warning("latent cache entry %s is unreadable or not this key's; encoding the image again", path)
            self._remove(path)
            return None
        self.stats["hits_disk"] += 1
        self.ram.put(key, value)
        return value

    def _read(self, path: Path, key: str, info: os.stat_result, shape: Optional[Iterable[int]]
              ) -> Optional[torch.Tensor]:
        if not stat.S_ISREG(info.st_mode) or info.st_uid != self.uid:
            return None
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return None
        value = tensors.get(key)  # the key is also the tensor's name: a file moved under another name is refused
        if value is None or len(tensors) != 1 or not torch.isfinite(value).all():
            return None
        if shape is not None and tuple(value.shape) != tuple(shape):
            return None
        return value

    def put(self, item_key: Tuple, value: torch.Tensor) -> None:
        key = entry_key(self.model, item_key)
        value = value.detach().to("cpu").contiguous()
        self.stats["encoded"] += 1
        self.ram.put(key, value)
        if self.folder is None:
            return
        path = self.path(key)
        handle = None
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=".", suffix=".tmp", delete=False)
            handle.close()
            save_file({key: value}, handle.name)
            os.replace(handle.name, path)
        except OSError as exc:
            # A full disk costs the cache, not the run: the latent is used from RAM this time.
            self.stats["write_errors"] += 1
            if self.stats["write_errors"] == 1:
                logger.warning("cannot write the latent cache in %s (%s); training goes on without it",
                               self.folder, exc.strerror)
            if handle is not None:
                self._remove(Path(handle.name))

    @staticmethod
    def _remove(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    def report(self) -> Dict[str, Any]:
        """What run.json records: where the cache is, its size on disk, and this run's hits and encodes."""
        entries, size = 0, 0
        if self.folder is not None and self.folder.is_dir():
            for sub in os.scandir(self.folder):
                if sub.is_dir(follow_symlinks=False) and len(sub.name) == 2:
                    for entry in os.scandir(sub.path):
                        if entry.name.endswith(".safetensors") and entry.is_file(follow_symlinks=False):
                            entries += 1
                            size += entry.stat(follow_symlinks=False).st_size
        return {"dir": str(self.folder) if self.folder is not None else None, "entries": entries, "bytes": size,
                "ram_limit_bytes": self.ram.limit_bytes, **self.stats}
