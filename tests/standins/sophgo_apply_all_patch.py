"""A stand-in for torch_tpu's tpu_apply_all_patch, built from the logic of Sophgo's
torch_tpu/utils/apply_revert_patch.py (apply_all_patches), for tests on hosts without the real wheel.

What it keeps: the table of (package, version, patch); stopping at the first package not at its version;
"applied" meaning <location>/<package>/sophgo.py exists, <location> being where the distribution's
metadata is (pkg_resources' `location`); otherwise changing into <location>/<package> (FileNotFoundError
when it is missing, as os.chdir raises there) and running `patch -p3 --dry-run` then `patch -p3`, raising
RuntimeError when either fails. What it changes: the metadata comes from importlib.metadata (pkg_resources
is deprecated), limited to `site` so that tests can point it at a folder, and the patch folder is a parameter.
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

APPLY_TABLE = [
    ("transformers", "4.41.2", "transformers-Sophgo"),
    ("accelerate", "0.30.1", "accelerate-Sophgo"),
    ("llamafactory", "0.8.3", "LLaMA-Factory-Sophgo"),
]


def distribution(site: Path, name: str):
    return next(iter(metadata.distributions(name=name, path=[str(site)])), None)


def package_dir(site: Path, name: str) -> Path:
    return Path(str(distribution(site, name).locate_file(""))) / name


def run(command: str, cwd: Path) -> None:
    if subprocess.run(command, shell=True, cwd=cwd).returncode != 0:
        raise RuntimeError(f"[!Error]: {command}")


def apply_all_patches(site: Path, patch_dir: Path) -> list[str]:
    """What Sophgo's tool did, one line per package; raises where it raises."""
    log = []
    for name, version, patch_name in APPLY_TABLE:
        dist = distribution(site, name)
        if dist is None or dist.version != version:
            log.append(f"{name} is not in version {version}: stop")
            return log
        if (package_dir(site, name) / "sophgo.py").exists():
            log.append(f"{patch_name} has been applied")
            continue
        cwd = package_dir(site, name)
        os.stat(cwd)  # Sophgo's pushd: os.chdir raises FileNotFoundError here
        patch_file = patch_dir / f"{patch_name}.patch"
        run(f"patch -p3 --dry-run < {patch_file}", cwd)
        run(f"patch -p3 < {patch_file}", cwd)
        log.append(f"{patch_name} applied")
    return log
