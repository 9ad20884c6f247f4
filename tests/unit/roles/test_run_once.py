"""A run_once task in a role runs for the whole batch on its first host, and a `when` on it (or on a block
around it) is that host's alone: a false one skips the task for every host. So a batch whose first host
pulls from the bundle mirror skipped the push hosts' control-node checksum (sophon_venv: items2dict of a
skipped result, "Copy the wheelhouse archive" failed; sophon_assets likewise), found by make bench-fleet
HOSTS=N. The roles' once-per-batch tasks select the hosts in their loop instead (an empty loop when no
host of the batch needs them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def run_once_tasks(tasks: list | None, conditions: tuple[str, ...], where: str):
    """(where, name, the conditions it runs under) of each run_once task, with its blocks' conditions."""
    for task in tasks or []:
        if not isinstance(task, dict):
            continue
        own = conditions + ((str(task["when"]),) if "when" in task else ())
        if "block" in task:
            for part in ("block", "rescue", "always"):
                yield from run_once_tasks(task.get(part), own, where)
        elif task.get("run_once"):
            yield where, task.get("name"), own


ROLE_TASKS = sorted((REPO / "roles").glob("*/tasks/*.yml"))


def test_the_roles_have_run_once_tasks_to_check():
    found = [hit for path in ROLE_TASKS for hit in run_once_tasks(yaml.safe_load(path.read_text()), (), str(path))]
    assert len(found) >= 5, found


@pytest.mark.parametrize("path", ROLE_TASKS, ids=lambda path: str(path.relative_to(REPO / "roles")))
def test_no_role_task_that_runs_once_depends_on_the_first_hosts_when(path):
    conditioned = [(name, when) for _, name, when in run_once_tasks(yaml.safe_load(path.read_text()), (), str(path))
                   if when]
    assert conditioned == [], f"{path}: run_once under a host's `when` skips it for the whole batch: {conditioned}"
