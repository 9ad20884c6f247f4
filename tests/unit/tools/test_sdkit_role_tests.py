"""tests/roles.yml and tools/sdkit_role_tests.py: every role's tests can be found by role, and run by make roles ROLE=."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import sdkit_role_docs as role_docs  # noqa: E402
import sdkit_role_tests as role_tests  # noqa: E402


def test_the_kits_index_has_every_role_and_only_real_files():
    """Fails when a role has no entry, an entry names a missing file, or a test file belongs to no role."""
    assert role_tests.problems() == []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small kit: two roles, a scenario, test files of each kind and an index that covers them."""
    for role in ("one", "two"):
        (tmp_path / "roles" / role / "tasks").mkdir(parents=True)
    (tmp_path / "tests" / "molecule" / "fleet").mkdir(parents=True)
    (tmp_path / "tests" / "molecule" / "fleet" / "molecule.yml").write_text("---\n")
    for path in ("tests/roles/test_one.py", "tests/testinfra/test_one.py", "tests/unit/test_two.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("def test_x():\n    pass\n")
    (tmp_path / "tests" / "roles.yml").write_text(textwrap.dedent("""\
        ---
        one:
          hosts: [tests/roles/test_one.py]
          testinfra: [tests/testinfra/test_one.py]
          scenario: [fleet]
        two:
          unit: [tests/unit/test_two.py]
        """))
    return tmp_path


def test_a_complete_index_has_no_problems(repo):
    assert role_tests.problems(repo) == []


def test_a_role_without_an_entry_is_named(repo):
    (repo / "roles" / "three" / "tasks").mkdir(parents=True)
    assert role_tests.problems(repo) == [
        "tests/roles.yml: role three has no entry: add it with its unit, hosts, testinfra and scenario tests"]


def test_a_role_of_defaults_only_needs_an_entry_like_any_other(repo):
    """make docs lists every role's tests, sophon_sd's (defaults, no tasks) too, so the index must have it."""
    (repo / "roles" / "shared" / "defaults").mkdir(parents=True)
    assert role_tests.problems(repo) == [
        "tests/roles.yml: role shared has no entry: add it with its unit, hosts, testinfra and scenario tests"]
    index = repo / "tests" / "roles.yml"
    index.write_text(index.read_text() + "shared:\n  unit: []\n")
    assert role_tests.problems(repo) == []


def test_a_missing_file_and_an_unknown_scenario_are_named(repo):
    index = repo / "tests" / "roles.yml"
    index.write_text(index.read_text().replace("test_two.py]", "test_gone.py]\n  scenario: [nowhere]"))
    found = role_tests.problems(repo)
    assert "tests/roles.yml: two names tests/unit/test_gone.py, which does not exist: correct or remove it" in found
    assert any("two names scenario nowhere" in problem for problem in found)


def test_a_test_file_of_no_role_is_named(repo):
    (repo / "tests" / "roles" / "test_new.py").write_text("")
    assert role_tests.problems(repo) == [
        "tests/roles.yml: tests/roles/test_new.py belongs to no role: list it under the role(s) it tests"]


def test_a_roles_own_unit_folder_belongs_to_it_without_an_entry(repo):
    (repo / "tests" / "unit" / "roles" / "one").mkdir(parents=True)
    assert role_tests.load(repo)["one"].unit == ["tests/unit/roles/one"]
    assert role_tests.load(repo)["two"].unit == ["tests/unit/test_two.py"]


def test_testinfra_runs_only_against_a_named_inventory(repo):
    tests = role_tests.load(repo)["one"]
    without = dict(role_tests.pytest_steps(tests, "ml-python", None, "all"))
    assert without["testinfra checks"] == ("need provisioned hosts: tests/testinfra/test_one.py run with "
                                           "INVENTORY=<provisioned fleet>, or in make molecule-fleet")
    assert without["tests on throwaway hosts"][-1] == "tests/roles/test_one.py"
    with_hosts = dict(role_tests.pytest_steps(tests, "ml-python", "inventory/hall-b", "h1"))
    argv = with_hosts["testinfra checks"]
    assert "--ansible-inventory=inventory/hall-b" in argv and "--hosts=h1" in argv
    assert role_tests.pytest_steps(role_tests.load(repo)["two"], "ml-python", None, "all") == [
        ("unit tests", ["ml-python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_two.py"])]


def test_an_unknown_role_is_one_line_naming_the_roles(capsys):
    assert role_tests.main(["run", "sophon_ap"]) == 2
    assert "ROLE=sophon_ap: no such role in tests/roles.yml; the roles are: sophon_apt," in capsys.readouterr().err


def test_role_readmes_list_the_roles_tests_and_go_stale_with_the_index(repo, capsys):
    for role in ("one", "two"):
        (repo / "roles" / role / "meta").mkdir()
        (repo / "roles" / role / "meta" / "argument_specs.yml").write_text(
            "---\nargument_specs:\n  main:\n    short_description: x\n    options: {}\n")
        (repo / "roles" / role / "README.md").write_text(f"# {role}\n\nProse.\n")
    roles = str(repo / "roles")
    assert role_docs.main(["--roles-dir", roles]) == 0
    readme = (repo / "roles" / "one" / "README.md").read_text()
    assert readme.startswith("# one\n\nProse.\n")
    assert "Run them with `make roles ROLE=one`" in readme
    assert "[`tests/roles/test_one.py`](../../tests/roles/test_one.py)" in readme
    assert "- Molecule: `make molecule-fleet`" in readme
    capsys.readouterr()
    assert role_docs.main(["--check", "--roles-dir", roles]) == 0

    index = repo / "tests" / "roles.yml"
    index.write_text(index.read_text().replace("scenario: [fleet]", "scenario: []"))
    assert role_docs.main(["--check", "--roles-dir", roles]) == 1
    assert capsys.readouterr().out == "roles/one/README.md: tests list out of date: run make docs\n"
    assert role_docs.main(["--roles-dir", roles]) == 0
    readme = (repo / "roles" / "one" / "README.md").read_text()
    assert "Molecule" not in readme and readme.count("## Tests") == 1


def test_a_role_missing_from_the_index_fails_make_docs(repo, capsys):
    (repo / "roles" / "three" / "meta").mkdir(parents=True)
    (repo / "roles" / "three" / "meta" / "argument_specs.yml").write_text(
        "---\nargument_specs:\n  main:\n    short_description: x\n    options: {}\n")
    assert role_docs.main(["--check", "--roles-dir", str(repo / "roles"), "three"]) == 1
    assert "roles/three: no entry in tests/roles.yml" in capsys.readouterr().out
