#!/usr/bin/env python3
"""Each role's tests, from tests/roles.yml: list them, check the index, or run them (make roles ROLE=<role>).

Tests are named by what they prove, not by role, so tests/roles.yml says which belong to which role:
unit tests (no containers), tests that start their own throwaway hosts (bad input, wiring), testinfra
checks of the installed state, and the Molecule scenarios that cover the role. Unit tests under
tests/unit/roles/<role>/ belong to their role by their place, without an entry.

    tools/sdkit_role_tests.py list sophon_apt          # every test path of the role, by kind
    tools/sdkit_role_tests.py check                    # exit 1 naming each gap in the index
    tools/sdkit_role_tests.py run sophon_apt --ml-python .venv-ml/bin/python [--inventory INV]

Standard library and PyYAML (both in the control node's .venv).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
INDEX = Path("tests/roles.yml")
KINDS = ("unit", "hosts", "testinfra", "scenario", "scenario_tests")
# Test files that must belong to some role: a new one without an entry is a test nobody finds by role.
OWNED_GLOBS = ("tests/roles/test_*.py", "tests/testinfra/test_*.py", "tests/slurm/test_*.py")


@dataclass
class RoleTests:
    """One role's tests; paths relative to the repository root."""

    role: str
    unit: List[str] = field(default_factory=list)
    hosts: List[str] = field(default_factory=list)
    testinfra: List[str] = field(default_factory=list)
    scenario: List[str] = field(default_factory=list)
    scenario_tests: List[str] = field(default_factory=list)

    def files(self) -> List[str]:
        return [*self.unit, *self.hosts, *self.testinfra, *self.scenario_tests]


def load(repo: Path = REPO) -> Dict[str, RoleTests]:
    """The index, with each role's tests/unit/roles/<role>/ folder added to its unit tests."""
    data = yaml.safe_load((repo / INDEX).read_text()) or {}
    index = {}
    for role, entry in data.items():
        entry = entry or {}
        tests = RoleTests(role, **{kind: list(entry.get(kind) or []) for kind in KINDS})
        own = Path("tests/unit/roles") / role
        if (repo / own).is_dir() and str(own) not in tests.unit:
            tests.unit.append(str(own))
        index[role] = tests
    return index


def problems(repo: Path = REPO) -> List[str]:
    """Each gap in the index, with its fix: a role without an entry, a missing file, an unowned test file."""
    where = str(INDEX)
    try:
        data = yaml.safe_load((repo / INDEX).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        return [f"{where}: cannot be read ({error}): fix it"]
    # A role of defaults only (sophon_sd) is still a role: make docs lists its tests like any other's.
    roles = sorted(path.name for path in (repo / "roles").iterdir()
                   if (path / "tasks").is_dir() or (path / "defaults").is_dir())
    found = [f"{where}: role {role} has no entry: add it with its unit, hosts, testinfra and scenario tests"
             for role in roles if role not in data]
    found += [f"{where}: {role} is not a role under roles/: remove its entry or fix the name"
              for role in data if role not in roles]
    for role, entry in data.items():
        for kind in (entry or {}):
            if kind not in KINDS:
                found.append(f"{where}: {role}: unknown key {kind}: use {', '.join(KINDS)}")
    scenarios = {path.name for path in (repo / "tests/molecule").iterdir() if (path / "molecule.yml").is_file()}
    owned = set()
    for tests in load(repo).values():
        for path in tests.files():
            owned.add(path)
            if not (repo / path).exists():
                found.append(f"{where}: {tests.role} names {path}, which does not exist: correct or remove it")
        for scenario in tests.scenario:
            if scenario not in scenarios:
                found.append(f"{where}: {tests.role} names scenario {scenario}, not one of {sorted(scenarios)}")
    for pattern in OWNED_GLOBS:
        for path in sorted(repo.glob(pattern)):
            shown = str(path.relative_to(repo))
            if shown not in owned:
                found.append(f"{where}: {shown} belongs to no role: list it under the role(s) it tests")
    return found


def pytest_steps(tests: RoleTests, ml_python: str, inventory: Optional[str], limit: str) -> List[tuple]:
    """(what, argv or None with the reason it is skipped) for each step of make roles ROLE=<role>."""
    steps: List[tuple] = []
    quiet = ["-q", "-p", "no:cacheprovider"]
    if tests.unit:
        steps.append(("unit tests", [ml_python, "-m", "pytest", *quiet, *tests.unit]))
    if tests.hosts:
        # As plain make roles: one throwaway host per module, three modules at a time.
        steps.append(("tests on throwaway hosts",
                      [sys.executable, "-m", "pytest", *quiet, "-n", "3", "--dist", "loadfile", *tests.hosts]))
    if tests.testinfra:
        if inventory:
            steps.append(("testinfra checks", [sys.executable, "-m", "pytest", *quiet, *tests.testinfra,
                                               f"--ansible-inventory={inventory}", f"--hosts={limit}",
                                               "--connection=ansible"]))
        else:
            scenarios = " or ".join(f"make molecule-{name}" for name in tests.scenario) or "make verify"
            steps.append(("testinfra checks", f"need provisioned hosts: {' '.join(tests.testinfra)} run with "
                                              f"INVENTORY=<provisioned fleet>, or in {scenarios}"))
    if tests.scenario_tests:
        scenarios = " or ".join(f"make molecule-{name}" for name in tests.scenario)
        steps.append(("scenario tests", f"need the scenario's hosts: {' '.join(tests.scenario_tests)} run in "
                                        f"{scenarios}"))
    return steps


def run(role: str, ml_python: str, inventory: Optional[str], limit: str) -> int:
    index = load()
    if role not in index:
        print(f"ROLE={role}: no such role in {INDEX}; the roles are: {', '.join(sorted(index))}", file=sys.stderr)
        return 2
    failed = []
    for what, step in pytest_steps(index[role], ml_python, inventory, limit):
        if isinstance(step, str):
            print(f"== {role}: {what} skipped: {step}")
            continue
        print(f"== {role}: {what}: {' '.join(step)}", flush=True)
        if subprocess.run(step, cwd=REPO, env=os.environ).returncode != 0:
            failed.append(what)
    print(f"== {role}: " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Each role's tests, from tests/roles.yml: list, check or run them.")
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="Print a role's test paths, one per line, as KIND PATH.")
    listing.add_argument("role")
    sub.add_parser("check", help="Exit 1 naming each role without an entry, missing file or test file of no role.")
    running = sub.add_parser("run", help="Run a role's unit tests, its tests on throwaway hosts, and its testinfra "
                                         "checks when --inventory names provisioned hosts.")
    running.add_argument("role")
    running.add_argument("--ml-python", default=str(REPO / ".venv-ml/bin/python"),
                         help="Python of the ML venv: the runners' unit tests import torch and diffusers.")
    running.add_argument("--inventory", default=None,
                         help="Inventory of provisioned hosts for the testinfra checks (default: skip them, "
                              "naming the scenario that runs them).")
    running.add_argument("--limit", default="all", help="Hosts of the inventory to check (default: all).")
    args = parser.parse_args(argv)

    if args.action == "check":
        found = problems()
        for problem in found:
            print(problem)
        return 1 if found else 0
    if args.action == "list":
        index = load()
        if args.role not in index:
            print(f"ROLE={args.role}: no such role in {INDEX}; the roles are: {', '.join(sorted(index))}",
                  file=sys.stderr)
            return 2
        tests = index[args.role]
        for kind in KINDS:
            for path in getattr(tests, kind):
                print(f"{kind} {path}")
        return 0
    return run(args.role, args.ml_python, args.inventory, args.limit)


if __name__ == "__main__":
    sys.exit(main())
