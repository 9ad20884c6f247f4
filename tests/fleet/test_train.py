"""playbooks/train.yml end to end on provisioned hosts: the tiny model on each host's CPU (or chips).

Runs against the fleet of conftest.py (SDKIT_FLEET_INVENTORY, or a Molecule scenario's inventory;
skipped without one), provisioned with playbooks/site.yml: two of its hosts train (SDKIT_FLEET_TRAIN_HOSTS,
a comma-separated list, names them; default: the first two). A run trains on both hosts, progress
is printed while polling, results and report come back, and rerunning it changes nothing.

Resuming is checked elsewhere, each way a job can end early: systemctl stop of a job's unit
(tests/roles/test_train_privileges.py), make train-cancel and a node that fails under Slurm
(tests/slurm/test_train_slurm.py), a killed trainer (tests/unit/runners/test_sdkit_job.py).

    SDKIT_FLEET_INVENTORY=/path/to/hosts.yml .venv/bin/pytest -p no:cacheprovider tests/fleet
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from fleet_support import Fleet, recap

RUNS_ON_HOST = "/var/lib/sophon-sd/runs"


@pytest.fixture(scope="module")
def trainers(fleet: Fleet) -> list[str]:
    named = [host for host in os.environ.get("SDKIT_FLEET_TRAIN_HOSTS", "").split(",") if host]
    hosts = named or fleet.hosts[:2]
    assert set(hosts) <= set(fleet.hosts), f"SDKIT_FLEET_TRAIN_HOSTS names hosts outside the fleet: {hosts}"
    return hosts


def train(fleet: Fleet, hosts: list[str], run_id: str, fetch_dir: Path, **extra_vars):
    # Each poll round costs a second or so of CPU; a run's end is seen within one interval.
    extra = {"sophon_sd_train_run_id": run_id, "sophon_sd_train_tiny": True, "sophon_sd_train_args": "",
             "sophon_sd_train_fetch_dir": str(fetch_dir), "sophon_sd_train_poll_interval": 15, **extra_vars}
    started = time.monotonic()
    result = fleet.playbook("train.yml", "--limit", ",".join(hosts), "-e", json.dumps(extra), timeout=1800)
    result.seconds = time.monotonic() - started
    print(f"train.yml for {run_id}: rc {result.returncode} in {result.seconds:.0f} s")
    return result


def on_each_host(fleet: Fleet, hosts: list[str], script: str) -> None:
    for host in hosts:
        result = fleet.command(host, ["sh", "-c", script])
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def run_ids(fleet, trainers):
    """Unique per session so that reruns of the test never resume an older run; removed afterwards."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ids = {"train": f"fleet-test-{stamp}"}
    yield ids
    on_each_host(fleet, trainers, " ".join(f"rm -rf {RUNS_ON_HOST}/{run_id};" for run_id in ids.values()))


def job_dirs(run_dir: Path, host: str):
    return sorted(p for p in (run_dir / host).iterdir() if p.is_dir())


def metrics_steps(job: Path):
    return [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()]


def test_train_collects_results_and_report(fleet, trainers, run_ids, tmp_path):
    hosts = trainers
    result = train(fleet, hosts, run_ids["train"], tmp_path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    run_dir = tmp_path / run_ids["train"]
    for host in hosts:
        # The polls printed progress for the host: its jobs' step/total and loss.
        assert re.search(rf"ok: \[{re.escape(host)}\] => .*\n.*\n\s+\"\w+: (running|finished), step \d+/6",
                         result.stdout), result.stdout[-3000:]
        for job in job_dirs(run_dir, host):
            assert (job / "pytorch_lora_weights.safetensors").stat().st_size > 0
            assert metrics_steps(job) == [1, 2, 3, 4, 5, 6]
            assert json.loads((job / "run.json").read_text())["finished"] is True
            assert list((job / "validation").glob("*.png"))
            assert not list(job.glob("checkpoint-*"))  # checkpoints stay on the host
        assert json.loads((run_dir / host / "status.json").read_text())["state"] == "finished"
    page = (run_dir / "report.html").read_text()
    assert page.count('<polyline class="loss"') == sum(len(job_dirs(run_dir, h)) for h in hosts)
    assert all(f'src="{h}/' in page for h in hosts)
    assert "final loss" in result.stdout  # the table, printed

    # Again: nothing to start, nothing new to fetch, the same report.
    again = train(fleet, hosts, run_ids["train"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "already finished" in again.stdout
    assert {host: counts["changed"] for host, counts in recap(again.stdout).items()} == {h: 0 for h in hosts}
