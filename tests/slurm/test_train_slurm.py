"""`make train SCHEDULER=slurm` end to end on a Slurm cluster with real daemons (issue 11).

The compute hosts have stand-in chips (plain files for /dev/bm-sophonN) and no Sophgo runtime: Slurm
counts and hands out the chips, the tasks train the tiny model on the CPU. The second host's chip 1 has
failed (molecule.yml), so its chips are 0 and 2, and the task Slurm gives IDX 1 must get bm-sophon2.
In order:

* a run queues one array task per chip on each host, every result and the report come back, and
  rerunning it submits nothing;
* with the shared run folder (sophon_slurm_shared_run_dir, a podman volume both compute hosts mount),
  a run's tasks are not pinned, and every result comes back once: the time from make train to all
  results fetched is printed for both ways;
* make train-cancel stops a running run: every task saves a checkpoint (SIGTERM from scancel);
* make train resumes it; the host then fails (its node set DOWN): Slurm requeues its tasks, which
  resume from their checkpoints once the node is back, and the run finishes;
* on the shared run folder, the node running a task fails (its slurmd and tasks killed, the node DOWN):
  Slurm requeues the task, which resumes from its checkpoint on the other node, and its result comes
  back once.

The long runs train from one host only: the other adds minutes of CPU to the test suite and nothing
to what is checked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from slurm_support import Cluster
from fleet_support import recap

RUNS_ON_HOST = "/var/lib/sophon-sd/runs"
# molecule.yml's sophon_slurm_shared_run_dir: the shared volume. A run without it sets it empty.
SHARED = "/srv/sdkit-shared/runs"
# Each poll round costs a second or so of CPU; a run's end is seen within one interval. Tasks pinned to
# the host that submitted them, unless a test gives the shared run folder.
TINY = {"sophon_sd_train_tiny": True, "sophon_sd_train_scheduler": "slurm", "sophon_sd_train_poll_interval": 15,
        "sophon_slurm_shared_run_dir": ""}
# Seconds from make train to every result fetched, 2 hosts x 2 stand-in chips: pinned, and on shared storage.
TIMES: dict[str, float] = {}
# Long enough to be still running when cancelled, and again when its node fails (at 30 a TINY run could
# end its training between the first make train, which now fetches its files after the last round, and
# the cancel: SIGTERM then met the trainer saving its weights, exit -15).
STEPS = 120
# The chips each compute host's gres.conf lists (molecule.yml: the second host's chip 1 has failed).
USABLE = {"sdkit-slurm-a": [0, 1], "sdkit-slurm-b": [0, 2]}
# The long run stays pinned to its host: cancelled, resumed, and requeued when its node fails.
LONG_RUN = {"sophon_sd_train_args": f"--max_train_steps={STEPS} --checkpointing_steps=2 --validation_epochs=1000"}


@pytest.fixture(scope="module")
def run_ids(cluster: Cluster):
    stamp = time.strftime("%H%M%S")
    ids = {"train": f"slurm-{stamp}", "long": f"slurm-long-{stamp}", "shared": f"slurm-shared-{stamp}",
           "moved": f"slurm-moved-{stamp}"}
    yield ids
    for host in cluster.compute:
        cluster.on(host, " ".join(f"rm -rf {RUNS_ON_HOST}/{run_id} {SHARED}/{run_id};" for run_id in ids.values()))


def train(cluster: Cluster, playbook: str, run_id: str, fetch_dir: Path, hosts: str = "slurm_compute", **extra_vars):
    extra = {"sophon_sd_train_run_id": run_id, "sophon_sd_train_fetch_dir": str(fetch_dir), **TINY, **extra_vars}
    started = time.monotonic()
    result = cluster.playbook(playbook, "-e", f"sophon_sd_hosts={hosts}", "-e", json.dumps(extra), timeout=1800)
    result.seconds = time.monotonic() - started
    print(f"{playbook} for {run_id}: rc {result.returncode} in {result.seconds:.0f} s")
    return result


def tasks_of(cluster: Cluster, host: str, run_id: str, run_dir: str = "") -> dict[str, dict]:
    """Each task's job.json on the host (in RUN_DIR there when given)."""
    text = cluster.on(host, f"cd {run_dir or RUNS_ON_HOST + '/' + run_id} && for d in task*; do printf '%s ' $d; "
                            "tr -d '\\n' < $d/job.json; echo; done")
    return {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.strip()}


def wait_on(cluster: Cluster, host: str, condition: str, timeout: int = 600, folder: str = "") -> None:
    """Wait until CONDITION holds on HOST; else fail with Slurm's queue and nodes (and FOLDER's task logs)."""
    try:
        cluster.on(host, f"for i in $(seq {timeout}); do {condition} && exit 0; sleep 1; done; exit 1")
    except AssertionError:
        logs = cluster.on(host, f"tail -n 15 {folder}/task*/train.log {folder}/task*/slurm.log || true") if folder else ""
        raise AssertionError(f"{condition!r} did not hold on {host} in {timeout} s. squeue:\n"
                             + cluster.on(cluster.controller, "squeue --all --array -o '%i %j %T %r %N'; sinfo -N")
                             + f"\n{logs}") from None


def attempts_beyond(job_dir: str, count: int, node: str) -> str:
    """A shell test, true once the job's record holds more than COUNT attempts, the last one on NODE."""
    return (f"python3 -c \"import json, sys; a = json.load(open('{job_dir}/job.json'))['attempts']; "
            f"sys.exit(not (len(a) > {count} and a[-1].get('node') == '{node}'))\"")


def test_a_run_is_one_task_per_chip_and_its_results_come_back(cluster, run_ids, tmp_path):
    result = train(cluster, "train.yml", run_ids["train"], tmp_path)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    TIMES["pinned"] = result.seconds
    run_dir = tmp_path / run_ids["train"]
    for host in cluster.compute:
        tasks = tasks_of(cluster, host, run_ids["train"])
        assert sorted(tasks) == ["task0", "task1"]
        # Slurm gave each task a chip of its own, named by its device file, not by Slurm's IDX.
        assert sorted(chip for task in tasks.values() for chip in task["attempts"][-1]["chips"]) == USABLE[host]
        for task in tasks:
            job = run_dir / host / task
            assert (job / "pytorch_lora_weights.safetensors").stat().st_size > 0
            assert [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()] == \
                [1, 2, 3, 4, 5, 6]
        assert json.loads((run_dir / host / "status.json").read_text())["state"] == "finished"
    assert (run_dir / "report.html").read_text().count('<polyline class="loss"') == 2 * len(cluster.compute)

    # Issue 23: Slurm's accounting recorded each task, with its node and its chip, and make train-status shows it.
    for host in cluster.compute:
        records = cluster.on(cluster.controller, "sacct --noheader --parsable2 --allocations --starttime=now-1days "
                                                 f"--name=sdkit-train-{run_ids['train']}.{host} "
                                                 "--format=JobID,State,NodeList,AllocTRES")
        assert len(records.splitlines()) == 2, records
        for line in records.splitlines():
            _, state, node, tres = line.split("|")
            assert (state, node) == ("COMPLETED", host) and "gres/tpu=1" in tres.split(","), records
    status = train(cluster, "train_status.yml", run_ids["train"], tmp_path)
    assert status.returncode == 0, status.stdout[-3000:]
    for host in cluster.compute:
        assert status.stdout.count(f": sacct COMPLETED on {host}, 1 chip, ") == 2, status.stdout[-3000:]

    again = train(cluster, "train.yml", run_ids["train"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "already finished" in again.stdout
    assert {h: c["changed"] for h, c in recap(again.stdout).items() if h in cluster.compute} == \
        {h: 0 for h in cluster.compute}
    assert cluster.on(cluster.controller, "squeue --noheader --all | wc -l") == "0"


def test_on_shared_storage_tasks_go_to_any_node_and_each_result_comes_back_once(cluster, run_ids, tmp_path, capsys):
    shared = {"sophon_slurm_shared_run_dir": SHARED}
    result = train(cluster, "train.yml", run_ids["shared"], tmp_path, **shared)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    TIMES["shared"] = result.seconds
    run_dir = tmp_path / run_ids["shared"]
    for host in cluster.compute:
        # The host's tasks live on the shared volume, in its own folder there: every node sees them.
        folder = f"{SHARED}/{run_ids['shared']}/{host}"
        tasks = tasks_of(cluster, cluster.compute[-1], run_ids["shared"], folder)
        assert sorted(tasks) == ["task0", "task1"]
        assert cluster.on(host, f"test ! -e {RUNS_ON_HOST}/{run_ids['shared']} && echo none") == "none"
        for name, task in tasks.items():
            attempt = task["attempts"][-1]
            # Not pinned (the job tool leaves --nodelist out): whichever node Slurm chose, the task's chip is
            # one of that node's.
            assert set(attempt["chips"]) <= set(USABLE[attempt["node"]]), attempt
            job = run_dir / host / name
            assert [json.loads(line)["step"] for line in (job / "metrics.jsonl").read_text().splitlines()] == \
                [1, 2, 3, 4, 5, 6]
            assert (job / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == sorted(cluster.compute)
    assert (run_dir / "report.html").read_text().count('<polyline class="loss"') == 2 * len(cluster.compute)
    with capsys.disabled():  # in the verify log, also when the test passes: the note reports them
        print(f"\nmake train SCHEDULER=slurm TINY=1 to all results fetched, {len(cluster.compute)} hosts x 2 stand-in "
              f"chips: pinned {TIMES.get('pinned', float('nan')):.0f} s, shared run folder {TIMES['shared']:.0f} s")


def test_cancel_leaves_a_checkpoint_in_every_task(cluster, run_ids, tmp_path):
    host = cluster.compute[0]
    first = train(cluster, "train.yml", run_ids["long"], tmp_path, host, sophon_sd_train_poll_rounds=1,
                  sophon_sd_train_poll_interval=1, sophon_sd_train_slurm_args="--time=3:00:00", **LONG_RUN)
    assert "rerun the same command to poll again" in first.stdout, first.stdout[-3000:]
    # The site's options (SLURM_ARGS) reach sbatch: each task has the time limit.
    assert set(cluster.on(cluster.controller, "squeue --noheader --array -o %l").split()) == {"3:00:00"}
    wait_on(cluster, host, f"test -s {RUNS_ON_HOST}/{run_ids['long']}/task0/output/metrics.jsonl && "
                           f"test -s {RUNS_ON_HOST}/{run_ids['long']}/task1/output/metrics.jsonl")

    cancelled = train(cluster, "train_cancel.yml", run_ids["long"], tmp_path, host)
    assert cancelled.returncode == 0, cancelled.stdout[-3000:]
    status = train(cluster, "train_status.yml", run_ids["long"], tmp_path, host)
    for task in ("task0", "task1"):
        folder = f"{RUNS_ON_HOST}/{run_ids['long']}/{task}"
        assert cluster.on(host, f"cat {folder}/exit_status") == "130"
        assert cluster.on(host, f"ls -d {folder}/output/checkpoint-* | wc -l") != "0"
        assert "SIGTERM received: saving a checkpoint" in cluster.on(host, f"cat {folder}/train.log")
    assert status.stdout.count(": stopped, step") == 2, status.stdout[-3000:]


def test_tasks_of_a_failed_node_are_requeued_and_resume(cluster, run_ids, tmp_path):
    failing = cluster.compute[0]
    resumed = train(cluster, "train.yml", run_ids["long"], tmp_path, failing, sophon_sd_train_poll_rounds=1,
                    sophon_sd_train_poll_interval=1, **LONG_RUN)
    assert "resumed from checkpoint-" in resumed.stdout, resumed.stdout[-3000:]
    before = tasks_of(cluster, failing, run_ids["long"])
    name = f"sdkit-train-{run_ids['long']}.{failing}"
    wait_on(cluster, cluster.controller, f"test $(squeue --noheader --array --states=RUNNING --name={name} | wc -l) = 2")
    # Each task asked Slurm for the CPUs its trainer's threads use (a TINY run: one).
    assert cluster.on(cluster.controller, f"squeue --noheader --array --name={name} --format=%C").split() == ["1", "1"]

    # The node fails: Slurm takes its tasks off it (SIGTERM: a checkpoint) and queues them again.
    cluster.on(cluster.controller, f"scontrol update NodeName={failing} State=DOWN Reason=sdkit-test")
    wait_on(cluster, cluster.controller, f"test $(squeue --noheader --array --states=PENDING --name={name} | wc -l) = 2",
            timeout=120)
    # Back: Slurm may already have returned it (ReturnToService=2) once its slurmd answered.
    cluster.on(cluster.controller, f"scontrol update NodeName={failing} State=RESUME || "
                                   f"sinfo --noheader --nodes={failing} --format=%t | grep -qv down")

    finished = train(cluster, "train.yml", run_ids["long"], tmp_path, failing, **LONG_RUN)
    assert finished.returncode == 0, finished.stdout[-5000:]
    after = tasks_of(cluster, failing, run_ids["long"])
    for task in ("task0", "task1"):
        # One more attempt than before, made by Slurm's requeue (not by make train), resuming.
        assert len(after[task]["attempts"]) == len(before[task]["attempts"]) + 1
        assert after[task]["attempts"][-1]["argv"][-2:] == ["--resume_from_checkpoint", "latest"]
        steps = [json.loads(line)["step"] for line in
                 (tmp_path / run_ids["long"] / failing / task / "metrics.jsonl").read_text().splitlines()]
        # Every step trained, step 1 once: each attempt carried on from a checkpoint, none started over.
        assert set(steps) == set(range(1, STEPS + 1)) and steps.count(1) == 1 and steps[-1] == STEPS


def test_on_shared_storage_a_failed_nodes_task_resumes_on_the_other_node(cluster, run_ids, tmp_path):
    submitter = cluster.compute[0]
    run_id = run_ids["moved"]
    folder = f"{SHARED}/{run_id}/{submitter}"
    moved_run = {**LONG_RUN, "sophon_slurm_shared_run_dir": SHARED}
    first = train(cluster, "train.yml", run_id, tmp_path, submitter, sophon_sd_train_poll_rounds=1,
                  sophon_sd_train_poll_interval=1, **moved_run)
    assert "rerun the same command to poll again" in first.stdout, first.stdout[-3000:]
    # The tasks' Slurm name is the run's (and the host's): squeue finds them by it.
    name = f"sdkit-train-{run_id}.{submitter}"
    wait_on(cluster, cluster.controller, f"test $(squeue --noheader --array --states=RUNNING --name={name} | wc -l) = 2")
    # Both tasks have trained a little and saved a checkpoint where they run now (not pinned: either node, maybe
    # the same one). A task killed before its first checkpoint starts again at step 1, rightly, and would log it
    # twice: under load task1 can start well after task0.
    wait_on(cluster, submitter, f"ls -d {folder}/task0/output/checkpoint-* {folder}/task1/output/checkpoint-* "
                                ">/dev/null 2>&1", folder=folder)
    before = tasks_of(cluster, submitter, run_id, folder)["task0"]["attempts"]
    failing = before[-1]["node"]
    other = next(host for host in cluster.compute if host != failing)

    # The node fails: everything on it stops at once (slurmd, and the tasks it started, killed: no checkpoint
    # on the way out), and Slurm marks it DOWN, as slurmctld does by itself after SlurmdTimeout (5 minutes), and
    # queues its tasks again. Not a DOWN alone: a node whose slurmd still answers is back at once
    # (ReturnToService=2), and the task would start there again. With the node down, the other one (two chips,
    # nothing else queued) takes them, and task0 resumes there from the shared run folder.
    cluster.on(failing, "systemctl kill --signal=KILL slurmd.service; sleep 1; ! pgrep -f '[t]rain_lora.py'")
    try:
        cluster.on(cluster.controller, f"scontrol update NodeName={failing} State=DOWN Reason=sdkit-test")
        wait_on(cluster, other, attempts_beyond(f"{folder}/task0", len(before), other), timeout=120, folder=folder)
        job = cluster.on(other, f"cat {folder}/task0/slurm_job")
        wait_on(cluster, cluster.controller, f"test \"$(squeue --noheader --jobs={job} --format=%T/%N)\" = RUNNING/{other}",
                timeout=30)
    finally:
        # Back: its slurmd registers again, and the node returns to service by itself (ReturnToService=2).
        cluster.on(failing, "systemctl reset-failed slurmd.service; systemctl start slurmd.service")
        wait_on(cluster, cluster.controller, f"sinfo --noheader --nodes={failing} --format=%t | grep -qv down",
                timeout=60)

    finished = train(cluster, "train.yml", run_id, tmp_path, submitter, **moved_run)
    assert finished.returncode == 0, finished.stdout[-5000:]
    moved = tasks_of(cluster, other, run_id, folder)["task0"]["attempts"]
    # Slurm's requeue (not make train) made the attempt on the other node, which resumed from the checkpoint.
    assert moved[len(before)]["node"] == other, moved
    assert moved[len(before)]["argv"][-2:] == ["--resume_from_checkpoint", "latest"]
    assert set(moved[len(before)]["chips"]) <= set(USABLE[other])
    # The host's results came back once: its own folder under the run, one per task.
    run_dir = tmp_path / run_id
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [submitter]
    for task in ("task0", "task1"):
        assert (run_dir / submitter / task / "pytorch_lora_weights.safetensors").stat().st_size > 0
        steps = [json.loads(line)["step"] for line in (run_dir / submitter / task / "metrics.jsonl").read_text().splitlines()]
        # Every step trained, step 1 once: the moved attempt carried on from the checkpoint, not from the start.
        assert set(steps) == set(range(1, STEPS + 1)) and steps.count(1) == 1 and steps[-1] == STEPS, steps
