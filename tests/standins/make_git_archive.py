"""Builds a real `git archive` of a tag from a tiny repository, as `make bundle` writes one for a library
(sources/<name>-<version>.git.tar.gz, prefix <name>-<version>/), for the upstream role's tests.

The tree has what a tag has and an sdist lacks: examples/ and no PKG-INFO. git writes the commit into the tar's
pax global header, which is what the role checks against the pin.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Tuple

# What the tag's tree holds: a package and the training script the diffusers patch changes.
FILES = {
    "setup.py": "from setuptools import setup\nsetup()\n",
    "src/pkg/__init__.py": "__version__ = '0'\n",
    "examples/text_to_image/train_text_to_image_lora.py": "import torch\n",
}


def make(work: Path, dest: Path, name: str, version: str) -> Tuple[str, str]:
    """Commit FILES in a fresh repository under WORK, tag v<version>, archive the tag to DEST; (commit, sha256)."""
    repo = work / f"{name}-repo"
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"{name} {version}"], check=True)
    subprocess.run([*git, "tag", f"v{version}"], check=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([*git, "archive", "--format=tar.gz", f"--prefix={name}-{version}/", "-o", str(dest),
                    f"v{version}"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    return commit, hashlib.sha256(dest.read_bytes()).hexdigest()
