"""tools/sdkit_role_docs.py: the kit's role READMEs match their specs, and the generator on a fake role."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import sdkit_role_docs as role_docs  # noqa: E402

PROSE_BEFORE = "# fake\n\nWhat the role does.\n\n## Variables\n\n"
PROSE_AFTER = "\nValues with spaces stop the play.\n\n## Tested how\n\nBy hand.\n"


def test_the_kits_role_readmes_and_specs_agree(capsys):
    """Fails on drift: a README table not regenerated, or defaults and specs that disagree."""
    code = role_docs.main(["--check"])
    assert code == 0, capsys.readouterr().out


@pytest.fixture
def fake_roles(tmp_path) -> Path:
    role = tmp_path / "roles" / "fake"
    for folder in ("defaults", "meta"):
        (role / folder).mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text(textwrap.dedent("""\
        ---
        fake_mode: mirror
        fake_dir: "{{ fake_root }}/apt"
        fake_root: /opt/fake
        fake_packages: [git, patch]
        fake_version: "3.10"
        fake_filter: "{{ fake_mode | default('mirror') }}"
        """))
    (role / "meta" / "argument_specs.yml").write_text(textwrap.dedent("""\
        ---
        argument_specs:
          main:
            short_description: A fake role
            options:
              fake_mode:
                type: str
                choices: [mirror, bundle]
                default: mirror
                description: Where packages come from.
              fake_dir:
                type: path
                default: <root>/apt
                description: Hosts get <dir>.tar, unpacked under fake_root.
              fake_root:
                type: path
                description: The root.
              fake_packages:
                type: list
                elements: str
                description: OS packages.
              fake_version:
                type: str
                description: Looks like a number.
              fake_filter:
                type: bool
                description: Computed | piped.
          install:
            short_description: Install something.
            options:
              fake_items:
                type: list
                required: true
                description: What to install.
        """))
    (role / "README.md").write_text(PROSE_BEFORE + "| Variable | Default |\n|---|---|\n| `old` | `1` |\n" + PROSE_AFTER)
    return tmp_path / "roles"


def check(roles: Path, capsys) -> tuple[int, str]:
    code = role_docs.main(["--check", "--roles-dir", str(roles)])
    return code, capsys.readouterr().out


def test_generates_the_table_between_markers_and_keeps_the_prose(fake_roles, capsys):
    assert check(fake_roles, capsys) == (1, "roles/fake/README.md: variable table out of date: run make docs\n")
    assert role_docs.main(["--roles-dir", str(fake_roles)]) == 0
    assert capsys.readouterr().out == "roles/fake/README.md: variable table updated\n"
    text = (fake_roles / "fake" / "README.md").read_text()
    assert text.startswith(PROSE_BEFORE + role_docs.BEGIN) and text.endswith(role_docs.END + "\n" + PROSE_AFTER)
    assert "`old`" not in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["`fake_mode`"] == ("| `fake_mode` | str | `mirror` "
                                   "| Where packages come from. One of `mirror`, `bundle`. |")
    # A computed default is shown as the spec words it; placeholders become code, not HTML tags.
    assert rows["`fake_dir`"] == ("| `fake_dir` | path | `<root>/apt` "
                                  "| Hosts get `<dir>.tar`, unpacked under fake_root. |")
    assert rows["`fake_packages`"] == "| `fake_packages` | list of str | `[git, patch]` | OS packages. |"
    assert rows["`fake_version`"].startswith('| `fake_version` | str | `"3.10"` |')  # a string, not the float 3.1
    # Without words in the spec, the Jinja itself; pipes escaped so the table keeps its columns.
    assert rows["`fake_filter`"] == ("| `fake_filter` | bool | `{{ fake_mode \\| default('mirror') }}` "
                                     "| Computed \\| piped. |")
    assert "Entry point `install` (`tasks_from: install`): Install something." in text
    assert rows["`fake_items`"] == "| `fake_items` | list | required | What to install. |"
    assert check(fake_roles, capsys) == (0, "")


def test_rerun_changes_nothing(fake_roles):
    role_docs.main(["--roles-dir", str(fake_roles)])
    readme = fake_roles / "fake" / "README.md"
    first = readme.read_text()
    readme.write_text(first.replace("Values with spaces", "Values with tabs"))  # prose edits survive
    role_docs.main(["--roles-dir", str(fake_roles)])
    assert readme.read_text() == first.replace("Values with spaces", "Values with tabs")


def test_readme_without_a_variables_section_gets_one(fake_roles):
    readme = fake_roles / "fake" / "README.md"
    readme.write_text("# fake\n\nProse only.\n")
    role_docs.main(["--roles-dir", str(fake_roles)])
    assert readme.read_text().startswith(f"# fake\n\nProse only.\n\n## Variables\n\n{role_docs.BEGIN}\n| Variable |")


def test_drift_is_named_with_its_fix(fake_roles, capsys):
    role_docs.main(["--roles-dir", str(fake_roles)])
    capsys.readouterr()
    defaults = fake_roles / "fake" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text().replace("fake_mode: mirror", "fake_mode: bundle")
                        .replace("fake_root: /opt/fake\n", "") + "fake_apt_update_cache: true\n")
    code, out = check(fake_roles, capsys)
    assert code == 1
    problems = out.splitlines()
    assert ("roles/fake: fake_apt_update_cache is in defaults/main.yml but not in meta/argument_specs.yml (main): "
            "add it with its type and description, then run make docs") in problems
    assert ("roles/fake: fake_root is in meta/argument_specs.yml (main) but not in defaults/main.yml: give it a "
            "default there or mark it required: true, then run make docs") in problems
    assert ("roles/fake: fake_mode defaults to bundle in defaults/main.yml but the spec says mirror: correct the "
            "spec (Ansible uses defaults/main.yml), then run make docs") in problems
    assert "roles/fake/README.md: variable table out of date: run make docs" in problems  # fake_mode's default


def test_a_variable_described_under_another_entry_point_says_so(fake_roles, capsys):
    defaults = fake_roles / "fake" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text() + "fake_items: []\n")
    _, out = check(fake_roles, capsys)
    assert "fake_items is in defaults/main.yml but not in meta/argument_specs.yml (main) (only under the entry " \
           "point install)" in out


def test_a_role_without_specs_is_named(tmp_path, capsys):
    (tmp_path / "roles" / "bare" / "defaults").mkdir(parents=True)
    (tmp_path / "roles" / "bare" / "defaults" / "main.yml").write_text("bare_x: 1\n")
    code, out = check(tmp_path / "roles", capsys)
    assert code == 1 and out.startswith("roles/bare: no meta/argument_specs.yml")
