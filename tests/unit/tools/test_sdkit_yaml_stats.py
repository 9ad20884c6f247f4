"""tools/sdkit_yaml_stats.py: the lines of assert/fail tasks are counted by their span, through blocks."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import sdkit_yaml_stats  # noqa: E402

TASKS = textwrap.dedent("""\
    ---
    - name: Install
      ansible.builtin.apt:
        name: make

    # a comment before the next task
    - name: Check
      ansible.builtin.assert:
        that: x
        fail_msg: >-
          two lines
          of message

    - name: Block
      block:
        - name: Stop
          ansible.builtin.fail:
            msg: no
        - name: Copy
          ansible.builtin.copy:
            src: a
            dest: b
    """)


def test_counts_assert_and_fail_spans_through_blocks(tmp_path, capsys):
    tasks = tmp_path / "roles" / "fake" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(TASKS)
    stats = sdkit_yaml_stats.role_stats(tmp_path / "roles")
    # The assert: 6 lines (not the blank line after it); the fail in the block: 3 lines.
    assert [(item.lines, item.check_lines) for item in stats] == [(22, 9)]
    assert sdkit_yaml_stats.main(["--roles", str(tmp_path / "roles")]) == 0
    assert "total     22 lines      9 in assert/fail (41%)" in capsys.readouterr().out


def test_no_roles_is_an_error_that_says_what_to_pass(tmp_path, capsys):
    assert sdkit_yaml_stats.main(["--roles", str(tmp_path)]) == 2
    assert "pass --roles" in capsys.readouterr().err
