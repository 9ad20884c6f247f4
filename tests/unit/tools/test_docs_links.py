"""The README, docs/ and the role READMEs: every relative link and anchor resolves, and tables have short cells.

Content moves between these files (the README is a reference, long explanations live in docs/ and the
role READMEs), and a moved section silently breaks the links to it: GitHub shows a dead link or lands at
the top of the page. These tests find each one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))
from sdkit_measured import anchor  # noqa: E402

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "roles").glob("*/README.md")])
# Pages whose tables are written by hand; generated variable tables quote the specs' descriptions.
HAND_TABLES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
MAX_CELL_CHARS = 200
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without code, where brackets and parentheses are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> Set[str]:
    """GitHub's anchors for a page's headings, with -1, -2 for repeated ones."""
    seen: Dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = anchor(match.group(1).replace("`", ""))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def broken_links(page: Path) -> List[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto: are outside this repository
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}: ({target})"
        if not resolved.exists():
            problems.append(f"{where}: no file {resolved.relative_to(REPO) if REPO in resolved.parents else resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{fragment} in {resolved.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", HAND_TABLES, ids=lambda page: str(page.relative_to(REPO)))
def test_table_cells_are_short(page: Path):
    long_cells = []
    for number, line in enumerate(FENCE.sub("", page.read_text()).splitlines(), start=1):
        if line.startswith("|"):
            for text in re.split(r"(?<!\\)\|", line.strip())[1:-1]:
                if len(text.strip()) > MAX_CELL_CHARS:
                    long_cells.append(f"line {number}: {len(text.strip())} characters: {text.strip()[:60]}...")
    assert long_cells == [], "move the explanation below the table and keep the cell short"


def test_the_checker_finds_a_dead_file_and_a_dead_anchor(tmp_path, monkeypatch):
    """The two tests above would pass on any page if the checker found nothing: show that it can fail."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# Other\n\n## A `code` heading: here\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](other.md#a-code-heading-here) [gone](missing.md) [bad](other.md#nowhere) "
                    "[self](#top) `[not a link](nowhere.md)`\n\n# Top\n")
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "no file missing.md" in problems[0] and "#nowhere" in problems[1]
