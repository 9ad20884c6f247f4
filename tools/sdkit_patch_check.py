#!/usr/bin/env python3
"""Check every profile's patches against real upstream checkouts: each must apply with no fuzz and no offset.

The unit tests apply the patches to fixtures and sdists, because CI cannot reach GitHub; this is the check
against the tags themselves, run by hand where they can be had (make patches-upstream UPSTREAM=DIR).
DIR holds one tree per library and tag, named <library>-<tag> (e.g. accelerate-v0.30.1): a git checkout
or an unpacked `git archive` of the tag. A git checkout's HEAD is also compared with the profile's pinned
commit. Nothing in DIR is changed: every patch runs with --dry-run.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List

import yaml

REPO = Path(__file__).resolve().parents[1]
# patch(1)'s words for a hunk that did not land exactly where the patch says.
INEXACT = re.compile(r"Hunk #\d+ (succeeded at \d+ \((?:offset|fuzz)[^)]*\)|FAILED.*)")


@dataclass(frozen=True)
class Result:
    profile: str
    library: str
    tag: str
    patch: str
    status: str  # "clean", or what is wrong
    detail: str = ""

    @property
    def clean(self) -> bool:
        return self.status == "clean"


def head_commit(tree: Path) -> str:
    """The checkout's HEAD, or '' when the tree is not a git checkout (an unpacked archive)."""
    if not (tree / ".git").exists():
        return ""
    result = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def check_patch(patch: Path, tree: Path) -> tuple[str, str]:
    """Dry-runs `patch` the way the upstream role applies it, but with --fuzz=0; (status, patch's words)."""
    with patch.open("rb") as stdin:
        result = subprocess.run(["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--dry-run"],
                                cwd=tree, stdin=stdin, capture_output=True, text=True)
    said = (result.stdout + result.stderr).strip()
    inexact = INEXACT.findall(said)
    if result.returncode != 0:
        return "FAILED", "; ".join(inexact) or said.splitlines()[-1]
    if inexact:
        return "OFFSET", "; ".join(inexact)
    return "clean", ""


def check_profile(profile_dir: Path, upstream: Path) -> List[Result]:
    profile = yaml.safe_load((profile_dir / "profile.yml").read_text())
    libraries = {library["name"]: library for library in profile["libraries"]}
    results = []
    for entry in profile["patches"]:
        library = libraries[entry["library"]]
        tag, pinned = str(library["tag"]), str(library.get("commit") or "")
        tree = upstream / f"{library['name']}-{tag}"
        row = dict(profile=profile_dir.name, library=library["name"], tag=tag, patch=entry["patch"])
        if not (tree / entry["file"]).is_file():
            results.append(Result(**row, status="NO TREE", detail=f"{tree / entry['file']} is missing"))
            continue
        head = head_commit(tree)
        if head and pinned and head != pinned:
            results.append(Result(**row, status="WRONG COMMIT", detail=f"{tree} is at {head}, the pin is {pinned}"))
            continue
        status, detail = check_patch(REPO / "patches" / entry["patch"], tree)
        results.append(Result(**row, status=status, detail=detail))
    return results


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream-dir", type=Path, required=True,
                        help="folder with one tree per library and tag, named <library>-<tag> "
                             "(e.g. diffusers-v0.29.2: git checkouts, or `git archive TAG | tar x`)")
    parser.add_argument("--profile", action="append", default=[],
                        help="check only this profile (repeatable; default: every profile under profiles/)")
    args = parser.parse_args(argv)
    if not args.upstream_dir.is_dir():
        parser.error(f"{args.upstream_dir} is not a folder: make it with one <library>-<tag> tree per library")
    names = args.profile or sorted(path.parent.name for path in (REPO / "profiles").glob("*/profile.yml"))
    unknown = [name for name in names if not (REPO / "profiles" / name / "profile.yml").is_file()]
    if unknown:
        parser.error(f"no profile {', '.join(unknown)} under profiles/")

    results = [result for name in names for result in check_profile(REPO / "profiles" / name, args.upstream_dir)]
    width = max(len(f"{r.profile}  {r.library} {r.tag}  {r.patch}") for r in results)
    for r in results:
        line = f"{r.profile}  {r.library} {r.tag}  {r.patch}".ljust(width)
        print(f"{line}  {r.status}" + (f": {r.detail}" if r.detail else ""))
    bad = [r for r in results if not r.clean]
    print(f"{len(results) - len(bad)} of {len(results)} patch applications clean (no fuzz, no offset) "
          f"against {args.upstream_dir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
