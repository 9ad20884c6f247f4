#!/usr/bin/env python3
"""How much of the roles' task YAML is checks: the lines of roles/*/tasks/*.yml and, of those, the lines
inside assert and fail tasks (issue 22: checks belong in a role's Python module, where unit tests reach them).

A task's lines are its span in the file, from its first key to its last value, found by parsing the YAML
(not by grepping for `assert:`, which would miss a multi-line fail_msg). Blocks count through their tasks,
so an assert inside a block counts once. Run it from anywhere: `python3 tools/sdkit_yaml_stats.py`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import yaml

REPO = Path(__file__).resolve().parents[1]
CHECK_ACTIONS = {"assert", "fail", "ansible.builtin.assert", "ansible.builtin.fail",
                 "ansible.legacy.assert", "ansible.legacy.fail"}
BLOCK_KEYS = ("block", "rescue", "always")


@dataclass
class FileStats:
    path: Path
    lines: int
    check_lines: int


def _keys(node: yaml.MappingNode) -> dict:
    return {key.value: value for key, value in node.value if isinstance(key, yaml.ScalarNode)}


def _span(node: yaml.Node, text_lines: List[str]) -> int:
    """Lines from the node's start to its last non-blank line (the parser's end mark may sit past
    the trailing blank lines and comments before the next task, which are not the task's)."""
    end = node.end_mark
    # The end mark is where the next token starts: at the indent of a next task in a block, not after this one.
    last = end.line if text_lines[end.line][:end.column].strip() else end.line - 1
    while last > node.start_mark.line and not text_lines[last].strip():
        last -= 1
    while last > node.start_mark.line and text_lines[last].lstrip().startswith("#"):
        last -= 1
    return last - node.start_mark.line + 1


def _check_tasks(tasks: yaml.Node) -> Iterator[yaml.MappingNode]:
    if not isinstance(tasks, yaml.SequenceNode):
        return
    for task in tasks.value:
        if not isinstance(task, yaml.MappingNode):
            continue
        keys = _keys(task)
        if any(key in keys for key in BLOCK_KEYS):
            for key in BLOCK_KEYS:
                if key in keys:
                    yield from _check_tasks(keys[key])
        elif CHECK_ACTIONS & keys.keys():
            yield task


def file_stats(path: Path) -> FileStats:
    text = path.read_text()
    text_lines = text.splitlines() + [""]
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    checks = sum(_span(task, text_lines) for task in _check_tasks(root)) if root is not None else 0
    return FileStats(path, len(text.splitlines()), checks)


def role_stats(roles: Path) -> List[FileStats]:
    return [file_stats(path) for path in sorted(roles.glob("*/tasks/*.yml"))]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print, for each role, its task YAML lines and the lines inside assert/fail tasks, then the "
                    "totals and the share that is checks (the figure issue 22 tracks).")
    parser.add_argument("--roles", type=Path, default=REPO / "roles",
                        help="the roles folder to measure (default: this kit's roles/)")
    parser.add_argument("--files", action="store_true", help="one line per task file instead of per role")
    args = parser.parse_args(argv)
    stats = role_stats(args.roles)
    if not stats:
        print(f"no roles/*/tasks/*.yml under {args.roles}: pass --roles with the kit's roles folder", file=sys.stderr)
        return 2
    rows: dict = {}
    for item in stats:
        name = str(item.path.relative_to(args.roles)) if args.files else item.path.relative_to(args.roles).parts[0]
        lines, checks = rows.get(name, (0, 0))
        rows[name] = (lines + item.lines, checks + item.check_lines)
    width = max(len(name) for name in rows)
    for name, (lines, checks) in rows.items():
        print(f"{name:<{width}}  {lines:5d} lines  {checks:5d} in assert/fail")
    total = sum(item.lines for item in stats)
    checks = sum(item.check_lines for item in stats)
    print(f"{'total':<{width}}  {total:5d} lines  {checks:5d} in assert/fail ({100 * checks / total:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
