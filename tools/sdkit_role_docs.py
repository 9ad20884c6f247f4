#!/usr/bin/env python3
"""Write each role's README variable table from its meta/argument_specs.yml, and check for drift.

A role's variables are typed and described once, in meta/argument_specs.yml; their values live in
defaults/main.yml. The table in roles/<role>/README.md between the two marker comments below is
generated from both, so it cannot disagree with them; the rest of the README is prose and is left
alone. A README without the markers gets them around the table under its "## Variables" heading
(or a new such section at its end).

Each README also gets a generated "## Tests" list, between its own markers, from tests/roles.yml (the
role's unit tests, tests on throwaway hosts, testinfra checks and Molecule scenarios), so that a reader
who changed the role finds its tests there, and `make roles ROLE=<role>` runs them.

    tools/sdkit_role_docs.py            # rewrite the tables (make docs)
    tools/sdkit_role_docs.py --check    # exit 1 naming each stale README and each drifted variable

Drift that a rerun cannot fix is reported in both modes: a variable in defaults/main.yml that the
main entry point's specs do not describe, a described one without a default (unless required), and
a spec default that contradicts the literal value in defaults/main.yml.

Standard library and PyYAML (both in the control node's .venv).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

import sdkit_role_tests

ROLES_DIR = Path(__file__).resolve().parent.parent / "roles"
BEGIN = "<!-- BEGIN argument_specs table (tools/sdkit_role_docs.py) -->"
END = "<!-- END argument_specs table -->"
HEADING = "## Variables"
TESTS_BEGIN = "<!-- BEGIN tests list (tools/sdkit_role_docs.py, from tests/roles.yml) -->"
TESTS_END = "<!-- END tests list -->"
TESTS_HEADING = "## Tests"
TEST_KINDS = (("unit", "Unit tests, no containers"), ("hosts", "On throwaway test hosts (bad input, wiring)"),
              ("testinfra", "Installed state (testinfra)"), ("scenario_tests", "Run in the scenario's verify"))
# Longer literal defaults (the pinned libraries, say) would swamp a table row.
MAX_DEFAULT_CHARS = 100
FIX = "run make docs"
MISSING_DEFAULT = object()
# A word with <placeholders> in it: <repo>/bundle/apt, sophon-driver_<version>_amd64.deb, <running kernel>.
PLACEHOLDER = re.compile(r"[\w./:+-]*(?:<[\w -]+>[\w./:+-]*)+")


@dataclass
class Role:
    """What the generator reads of one role."""

    path: Path
    specs: Dict[str, dict]  # entry point -> its spec (short_description, options, ...)
    defaults: Dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def readme(self) -> Path:
        return self.path / "README.md"

    def options(self, entry_point: str = "main") -> Dict[str, dict]:
        return self.specs.get(entry_point, {}).get("options") or {}


@dataclass
class Report:
    problems: List[str] = field(default_factory=list)
    stale: List[Path] = field(default_factory=list)
    what: Dict[Path, str] = field(default_factory=dict)  # which generated part of a stale README changed


def load_role(path: Path) -> Role:
    specs_file = path / "meta" / "argument_specs.yml"
    defaults_file = path / "defaults" / "main.yml"
    specs = yaml.safe_load(specs_file.read_text()) if specs_file.is_file() else None
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.is_file() else None
    return Role(path, (specs or {}).get("argument_specs") or {}, defaults or {})


# --------------------------------------------------------------------------- rendering


def is_templated(value: Any) -> bool:
    """Whether Ansible computes the value (Jinja), so that the file's text is not what a host gets."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, list):
        return any(is_templated(item) for item in value)
    if isinstance(value, dict):
        return any(is_templated(item) for item in value.values())
    return False


def as_yaml(value: Any) -> str:
    """A value as one would write it in YAML flow style: strings bare unless YAML would misread them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(as_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {as_yaml(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str):
        plain = value and value.strip() == value and not re.search(r"[,\[\]{}]|: |^[-?:!&*#|>'\"%@`]", value)
        return value if plain and yaml.safe_load(value) == value else f'"{value}"'
    return str(value)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (GitHub needs \\| even inside code spans)."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def prose(text: str) -> str:
    """Spec wording for Markdown: placeholders such as <dir>.tar become code, or GitHub would take
    them for HTML tags and drop them. Text that already has code spans is left as written."""
    if "`" in text:
        return text

    def as_code(match: re.Match) -> str:
        word = match.group(0).rstrip(".")  # a sentence's full stop is not part of the path
        return code(word) + match.group(0)[len(word):]

    return PLACEHOLDER.sub(as_code, text)


def shown_default(role: Role, name: str, option: dict) -> str:
    """The Default column: the literal from defaults/main.yml when it fits, else the spec's wording.

    Specs describe computed defaults in words ("first of the devices, else cpu"), which reads
    better than the Jinja; a spec default without spaces is a value or a variable name, shown as code.
    """
    if option.get("required"):
        return "required"
    value = role.defaults.get(name, MISSING_DEFAULT)
    if value is not MISSING_DEFAULT and not is_templated(value) and len(as_yaml(value)) <= MAX_DEFAULT_CHARS:
        return code(as_yaml(value))
    if "default" in option:
        summary = option["default"]
        if isinstance(summary, str) and re.search(r"\s", summary.strip()):
            return prose(summary)
        return code(as_yaml(summary))
    if value is MISSING_DEFAULT:
        return "none"
    # Computed, and the spec does not put it in words: the Jinja itself, when it is short.
    shown = value if isinstance(value, str) else as_yaml(value)
    return code(shown) if len(shown) <= MAX_DEFAULT_CHARS else "see `defaults/main.yml`"


def shown_type(option: dict) -> str:
    kind = option.get("type", "str")  # Ansible's own default type
    return f"{kind} of {option['elements']}" if kind == "list" and "elements" in option else kind


def meaning(option: dict) -> str:
    description = option.get("description", "")
    text = " ".join(description) if isinstance(description, list) else str(description)
    if option.get("choices"):
        text += " One of " + ", ".join(code(as_yaml(choice)) for choice in option["choices"]) + "."
    return prose(text.strip())


def table(role: Role, options: Dict[str, dict]) -> List[str]:
    rows = ["| Variable | Type | Default | Meaning |", "|---|---|---|---|"]
    for name, option in options.items():
        option = option or {}
        rows.append("| " + " | ".join(cell(text) for text in (
            code(name), shown_type(option), shown_default(role, name, option), meaning(option))) + " |")
    return rows


def render(role: Role) -> str:
    """The generated block, markers included: main's table, then each other entry point."""
    lines = [BEGIN, *table(role, role.options())]
    for entry_point, spec in role.specs.items():
        if entry_point == "main":
            continue
        own = {name: option for name, option in role.options(entry_point).items() if name not in role.options()}
        summary = (spec or {}).get("short_description", "").rstrip(".")
        lines += ["", f"Entry point `{entry_point}` (`tasks_from: {entry_point}`): {summary}."
                  + ("" if own else " Its variables are among those above.")]
        if own:
            lines += ["", *table(role, own)]
    return "\n".join([*lines, END])


def render_tests(tests: sdkit_role_tests.RoleTests) -> str:
    """The generated tests list, markers included; paths link to the files from roles/<role>/README.md."""
    lines = [TESTS_BEGIN, f"Run them with `make roles ROLE={tests.role}` (its testinfra checks need "
                          f"`INVENTORY=<provisioned hosts>`).", ""]
    for kind, label in TEST_KINDS:
        paths = getattr(tests, kind)
        if paths:
            lines.append(f"- {label}: " + ", ".join(f"[`{path}`](../../{path})" for path in paths))
    if tests.scenario:
        lines.append("- Molecule: " + ", ".join(f"`make molecule-{name}`" for name in tests.scenario))
    return "\n".join([*lines, TESTS_END])


def updated_tests(text: str, block: str) -> str:
    """The README with its tests list replaced, or a Tests section added at its end."""
    if TESTS_BEGIN in text and TESTS_END in text:
        start = text.index(TESTS_BEGIN)
        return text[:start] + block + text[text.index(TESTS_END, start) + len(TESTS_END):]
    return text.rstrip("\n") + f"\n\n{TESTS_HEADING}\n\n{block}\n"


def updated_readme(text: str, block: str) -> str:
    """The README with its generated block replaced; the first run puts markers around the old table."""
    if BEGIN in text and END in text:
        start = text.index(BEGIN)
        return text[:start] + block + text[text.index(END, start) + len(END):]
    lines = text.splitlines()
    if HEADING not in lines:
        return text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}\n"
    start = lines.index(HEADING) + 1
    while start < len(lines) and not lines[start].strip():
        start += 1
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + block.splitlines() + lines[end:]) + "\n"


# --------------------------------------------------------------------------- drift


def drift(role: Role) -> List[str]:
    """What no rerun can fix: the specs and defaults/main.yml disagree about which variables exist."""
    where = f"roles/{role.name}"
    if not role.specs:
        return [f"{where}: no meta/argument_specs.yml (or no argument_specs in it): describe the role's "
                f"variables there, then {FIX}"]
    described = role.options()
    problems = []
    for name in role.defaults:
        if name not in described:
            elsewhere = [ep for ep in role.specs if ep != "main" and name in role.options(ep)]
            hint = f" (only under the entry point {', '.join(elsewhere)})" if elsewhere else ""
            problems.append(f"{where}: {name} is in defaults/main.yml but not in meta/argument_specs.yml (main)"
                            f"{hint}: add it with its type and description, then {FIX}")
    for name, option in described.items():
        option = option or {}
        if name not in role.defaults and not option.get("required"):
            problems.append(f"{where}: {name} is in meta/argument_specs.yml (main) but not in defaults/main.yml: "
                            f"give it a default there or mark it required: true, then {FIX}")
        value = role.defaults.get(name, MISSING_DEFAULT)
        stated = option.get("default", MISSING_DEFAULT)
        # A spec default of another type than the value is a summary in words (e.g. of a long list).
        if (value is not MISSING_DEFAULT and stated is not MISSING_DEFAULT and not is_templated(value)
                and type(stated) is type(value) and stated != value):
            problems.append(f"{where}: {name} defaults to {as_yaml(value)} in defaults/main.yml but the spec says "
                            f"{as_yaml(stated)}: correct the spec (Ansible uses defaults/main.yml), then {FIX}")
    return problems


def run(roles_dir: Path, names: List[str], check: bool) -> Report:
    report = Report()
    paths = [roles_dir / name for name in names] if names else sorted(p for p in roles_dir.iterdir() if p.is_dir())
    # The tests index sits beside roles/ (tests/roles.yml); a tree without one gets no tests lists.
    has_index = (roles_dir.parent / sdkit_role_tests.INDEX).is_file()
    tests_index = sdkit_role_tests.load(roles_dir.parent) if has_index else {}
    for path in paths:
        role = load_role(path)
        report.problems += drift(role)
        if not role.specs:
            continue
        text = role.readme.read_text() if role.readme.is_file() else f"# {role.name}\n"
        new_text = updated_readme(text, render(role))
        if new_text == text:
            report.what[role.readme] = "tests list"
        if has_index:
            if role.name in tests_index:
                new_text = updated_tests(new_text, render_tests(tests_index[role.name]))
            else:
                report.problems.append(f"roles/{role.name}: no entry in {sdkit_role_tests.INDEX}: list the role's "
                                       f"tests there, then {FIX}")
        if new_text != text:
            report.stale.append(role.readme)
            if not check:
                role.readme.write_text(new_text)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the variable table of each role's README from "
                                                 "meta/argument_specs.yml and defaults/main.yml; --check finds drift.")
    parser.add_argument("--check", action="store_true",
                        help="Change nothing; exit 1 naming each stale README and each drifted variable.")
    parser.add_argument("--roles-dir", type=Path, default=ROLES_DIR, help="Folder of the roles (default: the kit's).")
    parser.add_argument("roles", nargs="*", help="Only these roles (default: every folder in --roles-dir).")
    args = parser.parse_args(argv)
    report = run(args.roles_dir, args.roles, args.check)
    for readme in report.stale:
        shown = readme.relative_to(args.roles_dir.parent)
        what = report.what.get(readme, "variable table")
        print(f"{shown}: {what} out of date: {FIX}" if args.check else f"{shown}: {what} updated")
    for problem in report.problems:
        print(problem)
    return 1 if report.problems or (args.check and report.stale) else 0


if __name__ == "__main__":
    sys.exit(main())
