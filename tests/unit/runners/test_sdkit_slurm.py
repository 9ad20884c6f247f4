"""sdkit_slurm.py and the Slurm side of sdkit_job.py: what Slurm's output means to the kit, and the
sbatch command it builds. Real daemons (munge, slurmctld, slurmd) are the slurm scenario's
(tests/molecule/slurm, tests/slurm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sdkit_job
import sdkit_slurm

REPO = Path(__file__).resolve().parents[3]

NODE_TEXT = ("NodeName=sdkit-slurm-a Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 CPULoad=0.10 "
             "AvailableFeatures=(null) ActiveFeatures=(null) Gres=tpu:bm1684x:2(S:0) NodeAddr=10.89.0.3")
# scontrol show job -d of one array task: the node line says which chips it holds.
JOB_TEXT = """JobId=17 ArrayJobId=16 ArrayTaskId=1 JobName=sdkit-train-r1.sdkit-slurm-a
   JobState=RUNNING Reason=None Dependency=(null)
   NodeList=sdkit-slurm-a
   TresPerNode=gres:tpu:1
     Nodes=sdkit-slurm-a CPU_IDs=0 Mem=0 GRES=tpu:bm1684x:1(IDX:1)
"""


@pytest.mark.parametrize("text, count", [
    (NODE_TEXT, 2),
    ("NodeName=n Gres=gpu:a100:4,tpu:bm1684x:8(S:0-1) State=IDLE", 8),
    ("NodeName=n Gres=tpu:3 State=IDLE", 3),
    ("NodeName=n Gres=(null) State=IDLE", 0),
    ("NodeName=n Gres=tpux:bm1684x:2 State=IDLE", 0),
])
def test_gres_count_reads_the_nodes_chips(text, count):
    assert sdkit_slurm.gres_count(text, "tpu") == count


@pytest.mark.parametrize("gres_field, indexes", [
    ("tpu:bm1684x:1(IDX:1)", [1]),
    ("tpu:bm1684x:2(IDX:0-1)", [0, 1]),
    ("tpu:3(IDX:0,2-3)", [0, 2, 3]),
    ("gpu:a100:1(IDX:0),tpu:bm1684x:1(IDX:5)", [5]),
    ("gpu:a100:1(IDX:0)", []),
])
def test_allocated_indexes_come_from_the_idx_list(gres_field, indexes):
    text = JOB_TEXT.replace("tpu:bm1684x:1(IDX:1)", gres_field)
    assert sdkit_slurm.allocated_indexes(text, "tpu") == indexes


def test_queue_maps_each_task_to_its_state_and_reason():
    text = "16_0|RUNNING|None\n16_1|PENDING|Resources\n20|REQUEUED|BeginTime\n\n"
    assert sdkit_slurm.parse_queue(text) == {"16_0": {"state": "RUNNING", "reason": "None"},
                                             "16_1": {"state": "PENDING", "reason": "Resources"},
                                             "20": {"state": "REQUEUED", "reason": "BeginTime"}}


def test_submit_argv_pins_the_tasks_to_the_node_and_asks_one_chip_and_its_cpus_each():
    argv = sdkit_slurm.submit_argv(name="sdkit-train-r1.a", node="a", gres="tpu", chips_per_task=1, cpus_per_task=3,
                                   array=[0, 3],
                                   output="/runs/r1/task%a/slurm.log", command="exec python tool slurm-task")
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in ("--job-name=sdkit-train-r1.a", "--nodelist=a", "--gres=tpu:1", "--cpus-per-task=3", "--requeue", "--export=NIL",
                   "--array=0,3", "--output=/runs/r1/task%a/slurm.log"):
        assert option in argv
    assert argv[-2:] == ["--wrap", "exec python tool slurm-task"]
    data_parallel = sdkit_slurm.submit_argv(name="n", node="a", gres="tpu", chips_per_task=4, cpus_per_task=8,
                                            array=None, output="/o", command="c")
    assert "--gres=tpu:4" in data_parallel and "--cpus-per-task=8" in data_parallel and not any(a.startswith("--array") for a in data_parallel)


def test_the_sites_options_go_before_the_command():
    site = sdkit_slurm.site_args("--partition=tpu  --account=lab-1 --qos=normal --time=2-00:00:00 --reservation=maint")
    argv = sdkit_slurm.submit_argv(name="n", node="a", gres="tpu", chips_per_task=1, cpus_per_task=1, array=[0],
                                   output="/o", command="c", site=site)
    assert argv[-7:] == ["--partition=tpu", "--account=lab-1", "--qos=normal", "--time=2-00:00:00",
                         "--reservation=maint", "--wrap", "c"]


@pytest.mark.parametrize("text", [
    "--wrap=rm",                    # the kit's own options stay the kit's
    "--output=/etc/passwd",
    "--nodelist=other --partition=tpu",
    "--partition tpu",              # the value apart from its name would read as an option of its own
    "-p=tpu",
    "--partition=tpu;reboot",       # no shell or quoting characters in a value
    "--account=",
])
def test_options_outside_the_sites_list_are_refused(text):
    with pytest.raises(sdkit_slurm.SlurmError, match=r"give only --partition=VALUE, --account=VALUE, --qos=VALUE"):
        sdkit_slurm.site_args(text)


def test_missing_slurm_commands_say_how_to_join_the_cluster(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(sdkit_slurm.SlurmError, match="inventory group slurm_compute"):
        sdkit_slurm.queue("x")


def plan_slurm_jobs(run_dir, mode, devices, chips, python, trainer, train_args):
    """The jobs of a run under Slurm, and how many chips each asks for."""
    jobs = sdkit_job.plan_jobs(run_dir, mode, devices, python, trainer, train_args, slurm_chips=chips)
    return jobs, jobs[0].chips


def test_per_chip_under_slurm_is_one_task_per_chip_slurm_counts(tmp_path):
    jobs, chips_per_job = plan_slurm_jobs(tmp_path, "per_chip", ["tpu:0", "tpu:1"], 2, "/py", "/t.py",
                                                    ["--seed", "1"])
    assert chips_per_job == 1
    assert [(j.name, j.device, j.env) for j in jobs] == [("task0", "tpu", {"ACCELERATE_TORCH_DEVICE": "tpu"}),
                                                        ("task1", "tpu", {"ACCELERATE_TORCH_DEVICE": "tpu"})]
    assert jobs[1].argv == ["/py", "/t.py", "--seed", "1", "--output_dir", str(tmp_path / "task1" / "output")]
    # A host with no Sophgo runtime trains on its CPU, one task per chip Slurm hands out.
    cpu_jobs, _ = plan_slurm_jobs(tmp_path, "per_chip", [], 2, "/py", "/t.py", [])
    assert [(j.name, j.device) for j in cpu_jobs] == [("task0", "cpu"), ("task1", "cpu")]


def test_data_parallel_under_slurm_is_one_job_over_every_chip(tmp_path):
    [job], chips_per_job = plan_slurm_jobs(tmp_path, "data_parallel", ["tpu:0", "tpu:1"], 2, "/py",
                                                     "/t.py", [])
    assert (job.name, chips_per_job, job.env) == ("dp2", 2, {"ACCELERATE_TORCH_DEVICE": "tpu"})


def slurm_job_dir(tmp_path: Path, attempt: dict, exit_status: str | None = None) -> Path:
    job_dir = tmp_path / "r1" / "task0"
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"scheduler": "slurm", "slurm_name": "sdkit-train-r1.a",
                                                  "device": "tpu", "attempts": [attempt]}))
    (job_dir / "slurm_job").write_text("16_0\n")
    if exit_status is not None:
        (job_dir / "exit_status").write_text(exit_status)
    return job_dir


@pytest.mark.parametrize("queue, attempt, exit_status, state", [
    ({"16_0": {"state": "PENDING", "reason": "Resources"}}, {}, None, "queued"),
    # Requeued after its node failed: the exit status of the attempt before does not count.
    ({"16_0": {"state": "REQUEUED", "reason": "BeginTime"}}, {"ran_at": 1.0}, "130", "queued"),
    ({"16_0": {"state": "RUNNING", "reason": "None"}}, {"ran_at": 1.0}, None, "running"),
    ({}, {"ran_at": 1.0}, "0", "finished"),
    ({}, {"ran_at": 1.0}, "130", "stopped"),
    ({}, {"ran_at": 1.0}, None, "failed"),
    # scancel of a task still waiting: it never ran, nothing is lost, and make train queues it again.
    ({}, {}, None, "stopped"),
])
def test_slurm_job_states(tmp_path, monkeypatch, queue, attempt, exit_status, state):
    monkeypatch.setattr(sdkit_slurm, "queue", lambda name: queue)
    job_dir = slurm_job_dir(tmp_path, {"started": time.time(), "argv": ["t"], **attempt}, exit_status)
    status = sdkit_job.run_status(job_dir.parent)
    assert status["jobs"][0]["state"] == state
    assert status["state"] == {"queued": "running"}.get(state, state)
    if state == "queued":
        assert status["lines"] == [f"task0: queued in Slurm ({queue['16_0']['reason']}), slurm job 16_0"]


def test_a_run_keeps_its_scheduler(tmp_path):
    jobs = sdkit_job.plan_jobs(tmp_path / "r1", "per_chip", [], "/py", "/t.py", [])
    sdkit_job.prepare_run(tmp_path / "r1", jobs)
    slurm_jobs, _ = plan_slurm_jobs(tmp_path / "r1", "per_chip", [], 1, "/py", "/t.py", [])
    with pytest.raises(sdkit_job.JobError, match="started with SCHEDULER=systemd, not slurm"):
        sdkit_job.prepare_run(tmp_path / "r1", slurm_jobs, {"scheduler": "slurm", "slurm_name": "n"})


def test_an_array_task_asks_for_its_chips_by_its_own_id(monkeypatch):
    """SLURM_JOB_ID of an array's first task is the array's id, whose `scontrol show job` lists every task."""
    monkeypatch.setenv("SLURM_JOB_ID", "16")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "16")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    assert sdkit_slurm.this_task() == "16_0"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert sdkit_slurm.this_task() == "16"


def test_cancel_signals_running_tasks_and_drops_queued_ones(monkeypatch):
    """make train-cancel must wait for the checkpoints: a plain scancel dropped a running task from squeue at
    once (so the job tool kept its own liveness check, a pid and its start ticks). A running task gets SIGTERM
    in every process instead, and squeue lists it as running until its trainer has saved and ended."""
    calls = []
    monkeypatch.setattr(sdkit_slurm, "me", lambda: "sophon-sd")
    monkeypatch.setattr(sdkit_slurm, "slurm", lambda *args: calls.append(args) or "")
    sdkit_slurm.cancel("sdkit-train-r1.a")
    assert sorted(calls) == [
        ("scancel", "--user=sophon-sd", "--name=sdkit-train-r1.a", "--state=PENDING"),
        ("scancel", "--user=sophon-sd", "--name=sdkit-train-r1.a", "--state=RUNNING", "--signal=TERM", "--full")]


def keep_environment(monkeypatch) -> None:
    """slurm-task sets the env file's values in its own environment: put the test process's back after."""
    for key in ("HF_HOME", "SOPHON_SD_STATE_DIR", "HOME", "USER", "LOGNAME"):
        monkeypatch.setenv(key, os.environ.get(key, ""))


@pytest.mark.parametrize("planned, job, chips, device", [
    ("tpu", None, [1], "tpu:1"),          # per chip: the chip Slurm gave, as bm-smi numbers it
    ("cpu", None, [1], "cpu"),            # a host without a Sophgo runtime trains on its CPU
    ("tpu", "dp2", [0, 1], "tpu"),        # data parallel: each process takes the chip of its LOCAL_RANK
])
def test_a_task_trains_on_the_chip_slurm_gave_it(tmp_path, monkeypatch, planned, job, chips, device):
    name = job or "task0"
    job_dir = tmp_path / "r1" / name
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"scheduler": "slurm", "slurm_name": "n", "device": planned,
                                                  "argv": ["t"], "attempts": [{"started": 1.0, "argv": ["t"]}]}))
    (job_dir / "slurm_job").write_text("16_0\n" if job is None else "16\n")
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\nHF_HOME=/state/huggingface\n")
    keep_environment(monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "16")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "16")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    asked = []
    monkeypatch.setattr(sdkit_slurm, "job_chips", lambda task, gres: asked.append(task) or chips)
    supervised = []
    monkeypatch.setattr(sdkit_job, "run_attempt", lambda d, record, attempt: supervised.append(d) or 0)
    argv = ["slurm-task", "--run-dir", str(tmp_path / "r1"), "--env-file", str(env_file)] + (["--job", job] if job else [])

    assert sdkit_job.main(argv) == 0

    attempt = json.loads((job_dir / "job.json").read_text())["attempts"][-1]
    assert (attempt["device"], attempt["env"], attempt["chips"]) == (device, {"ACCELERATE_TORCH_DEVICE": device}, chips)
    assert asked == ["16_0"] and supervised == [job_dir]  # Slurm's SIGTERM reaches the trainer itself (below)
    assert os.environ["HF_HOME"] == "/state/huggingface"  # the env file, as a unit's EnvironmentFile= gives it
    assert attempt["node"] == sdkit_slurm.node_name()  # where it ran: on shared storage, any node


def test_a_requeued_task_is_a_new_attempt_that_resumes(tmp_path, monkeypatch):
    job_dir = tmp_path / "r1" / "task0"
    job_dir.mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"scheduler": "slurm", "slurm_name": "n", "device": "cpu",
                                                  "argv": ["t", "--seed", "1"],
                                                  "attempts": [{"started": 1.0, "argv": ["t"], "ran_at": 2.0}]}))
    (job_dir / "exit_status").write_text("130\n")
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\n")
    keep_environment(monkeypatch)
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setattr(sdkit_slurm, "job_chips", lambda task, gres: [0])
    monkeypatch.setattr(sdkit_job, "run_attempt", lambda d, record, attempt: 0)

    assert sdkit_job.main(["slurm-task", "--run-dir", str(tmp_path / "r1"), "--env-file", str(env_file)]) == 0

    attempts = json.loads((job_dir / "job.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[-1]["argv"] == ["t", "--seed", "1", "--resume_from_checkpoint", "latest"]
    assert not (job_dir / "exit_status").exists()  # the previous attempt's


SIGTERM_ONCE = """
import signal, sys, time
seen = []
signal.signal(signal.SIGTERM, lambda *_: seen.append(1))
print("ready", flush=True)
while not seen:
    time.sleep(0.01)
time.sleep(0.5)  # a second SIGTERM, passed on by the task, would arrive meanwhile
print(f"SIGTERM x{len(seen)}", flush=True)
sys.exit(130)
"""


def test_a_task_outlives_slurms_sigterm_to_record_the_trainers_exit(tmp_path):
    """scancel signals every process of the task: the task tool lives on to record the trainer's 130 (there
    is no ExecStopPost under Slurm) and passes no second SIGTERM on, which would abort the trainer."""
    job_dir = tmp_path / "task0"
    job_dir.mkdir()
    (tmp_path / "trainer.py").write_text(SIGTERM_ONCE)
    attempt = {"argv": [sys.executable, str(tmp_path / "trainer.py")]}
    task = subprocess.Popen([sys.executable, "-c", "import sys, sdkit_job; sys.exit(sdkit_job.run_attempt("
                             f"sdkit_job.Path({str(job_dir)!r}), {{}}, {attempt!r}))"], start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(sdkit_job.__file__).parent)))
    deadline = time.monotonic() + 20
    while "ready" not in ((job_dir / "train.log").read_text() if (job_dir / "train.log").exists() else ""):
        assert time.monotonic() < deadline and task.poll() is None
        time.sleep(0.05)
    os.killpg(task.pid, signal.SIGTERM)  # as slurmd signals the task's processes
    assert task.wait(timeout=20) == 130
    assert (job_dir / "exit_status").read_text() == "130\n"
    assert "SIGTERM x1" in (job_dir / "train.log").read_text()


def test_status_takes_the_rounds_one_squeue_instead_of_its_own(tmp_path, monkeypatch):
    """Issue 20: under Slurm every host's poller ran squeue every 3 s. train.yml now asks the controller once
    a round for the whole run and hands each host its lines: the host runs no squeue of its own."""
    def no_squeue(name):
        raise AssertionError("squeue asked on the host")

    monkeypatch.setattr(sdkit_slurm, "queue", no_squeue)
    job_dir = slurm_job_dir(tmp_path, {"started": time.time(), "argv": ["t"], "ran_at": 1.0}, None)
    name = json.loads((job_dir / "job.json").read_text())["slurm_name"]
    lines = [f"{name}|16_0|RUNNING|None|sophon-sd", f"{name}|16_1|PENDING|Resources, Priority|sophon-sd",
             "other|16_0|PENDING|x|sophon-sd"]
    status = sdkit_job.run_status(job_dir.parent, sdkit_slurm.given_queue(name, lines))
    assert status["jobs"][0]["state"] == "running" and status["jobs"][0]["slurm_name"] == name
    # A name the controller was asked about, without lines: none of its tasks is left in the queue.
    status = sdkit_job.run_status(job_dir.parent, sdkit_slurm.given_queue(name, []))
    assert status["jobs"][0]["state"] == "failed"


def test_status_argv_takes_each_queue_line_apart():
    args = sdkit_job.parse_args(["status", "--run-id", "r1", "--slurm-queue-names=a,b",
                                 "--slurm-queue=a|1_0|RUNNING|None|u", "--slurm-queue=b|2|PENDING|A, B|u"])
    assert sdkit_slurm.given_queue(args.slurm_queue_names, args.slurm_queue) == {
        "a": {"1_0": {"state": "RUNNING", "reason": "None"}}, "b": {"2": {"state": "PENDING", "reason": "A, B"}}}


# A node whose chip 1 failed: the kit's gres.conf lists the usable chips only, so Slurm's IDX 1 is chip 2.
GRES_CONF = """# role sophon_slurm
NodeName=node-a Name=tpu Type=bm1684x File=/dev/bm-sophon0
NodeName=node-a Name=tpu Type=bm1684x File=/dev/bm-sophon1
NodeName=node-b Name=tpu Type=bm1684x File=/dev/bm-sophon0
NodeName=node-b Name=tpu Type=bm1684x File=/dev/bm-sophon2
"""


@pytest.mark.parametrize("conf, node, files", [
    (GRES_CONF, "node-b", ["/dev/bm-sophon0", "/dev/bm-sophon2"]),
    (GRES_CONF, "node-a", ["/dev/bm-sophon0", "/dev/bm-sophon1"]),
    (GRES_CONF, "node-c", []),
    # A site's own file: ranges of nodes and of files, no NodeName (every node), other resources, comments.
    ("NodeName=n[1-3,7] name=tpu File=/dev/bm-sophon[0-1,3]\nName=gpu File=/dev/nvidia0\n", "n7",
     ["/dev/bm-sophon0", "/dev/bm-sophon1", "/dev/bm-sophon3"]),
    ("Name=tpu File=/dev/bm-sophon[8-11] # all nodes\nNodeName=n1 Name=tpu Count=4\n", "n1",
     ["/dev/bm-sophon8", "/dev/bm-sophon9", "/dev/bm-sophon10", "/dev/bm-sophon11"]),
])
def test_node_device_files_are_in_the_order_slurm_numbers_them(conf, node, files):
    assert sdkit_slurm.node_device_files(conf, node, "tpu") == files


def fake_job(monkeypatch, tmp_path, gres_field: str, node: str) -> None:
    (tmp_path / "gres.conf").write_text(GRES_CONF)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setattr(sdkit_slurm, "node_name", lambda: node)
    monkeypatch.setattr(sdkit_slurm, "slurm", lambda *args: JOB_TEXT.replace("tpu:bm1684x:1(IDX:1)", gres_field))


def test_the_second_chip_of_a_node_without_chip_1_is_chip_2(monkeypatch, tmp_path):
    fake_job(monkeypatch, tmp_path, "tpu:bm1684x:1(IDX:1)", "node-b")
    assert sdkit_slurm.job_chips("16_1", "tpu") == [2]
    fake_job(monkeypatch, tmp_path, "tpu:bm1684x:2(IDX:0-1)", "node-b")
    assert sdkit_slurm.job_chips("16", "tpu") == [0, 2]


def test_an_index_gres_conf_does_not_list_is_one_clear_error(monkeypatch, tmp_path):
    fake_job(monkeypatch, tmp_path, "tpu:bm1684x:1(IDX:2)", "node-b")
    with pytest.raises(sdkit_slurm.SlurmError, match=r"IDX \[2\].*lists 2 File= device\(s\)"):
        sdkit_slurm.job_chips("16_2", "tpu")


def test_slurm_gives_a_cancelled_task_as_long_to_save_its_checkpoint_as_systemd_does():
    defaults = yaml.safe_load((REPO / "roles/sophon_slurm/defaults/main.yml").read_text())
    assert int(defaults["sophon_slurm_kill_wait"]) >= sdkit_job.STOP_TIMEOUT_S


def test_the_batch_script_execs_the_task_tool_so_a_cancel_signal_does_not_end_the_task(monkeypatch, tmp_path):
    # cancel sends SIGTERM to every process of a running task (--full): sbatch --wrap's /bin/sh would die of it
    # and end the task while the trainer saves; with exec the task tool, which waits for the trainer, is that script.
    submitted = []
    monkeypatch.setattr(sdkit_slurm, "submit", lambda argv: submitted.append(argv) or "42")
    job = type("Job", (), {"name": "task0", "dir": tmp_path / "task0", "chips": 1})()
    job.dir.mkdir()
    sdkit_slurm.submit_jobs([job], task=["/venv/bin/python", "/kit/sdkit_job.py", "slurm-task"], name="n", node="a",
                            gres="tpu", threads=2, site=[])
    assert submitted[0][-2:] == ["--wrap", "exec /venv/bin/python /kit/sdkit_job.py slurm-task"]


# Issue 23: sacct lines as train_status.yml's one sacct of a pass gives them (--parsable2, ACCT_FIELDS' order).
ACCT_LINES = [
    "16_0|sdkit-train-r1.a|COMPLETED|00:00:35|node-a|billing=1,cpu=1,gres/tpu=1,node=1|0:0",
    "16_1|sdkit-train-r1.a|CANCELLED by 1000|1-02:03:04|node-b|billing=2,cpu=2,gres/tpu:bm1684x=2,node=1|0:15",
    "17|sdkit-train-r1.b|NODE_FAIL|12:34|node-c|billing=1,cpu=1,node=1|1:0",
    # Not a task's line: a pending array's range, a line of another shape, a forged id.
    "18_[0-3]|sdkit-train-r1.c|PENDING|00:00:00|None assigned||0:0",
    "16_0|short|line",
    "16_0;rm|x|COMPLETED|00:00:01|n|gres/tpu=1|0:0",
]


def test_sacct_lines_give_each_tasks_state_time_node_and_chips():
    assert sdkit_slurm.parse_acct(ACCT_LINES, "tpu") == {
        "16_0": {"state": "COMPLETED", "elapsed_s": 35, "node": "node-a", "chips": 1, "exit_code": "0:0"},
        "16_1": {"state": "CANCELLED", "elapsed_s": 93784, "node": "node-b", "chips": 2, "exit_code": "0:15"},
        # No chips in AllocTRES: the cluster does not account the resource (AccountingStorageTRES).
        "17": {"state": "NODE_FAIL", "elapsed_s": 754, "node": "node-c", "chips": None, "exit_code": "1:0"}}


@pytest.mark.parametrize("tres, chips", [
    ("cpu=1,gres/tpu=2,gres/tpu:bm1684x=2,node=1", 2),
    ("cpu=1,gres/tpu:a=1,gres/tpu:b=2", 3),
    ("cpu=1,gres/gpu=4,gres/tpux=3", None),
    ("", None),
])
def test_alloc_tres_counts_only_the_chips_resource(tres, chips):
    assert sdkit_slurm.tres_chips(tres, "tpu") == chips


def test_status_of_an_ended_task_shows_what_sacct_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(sdkit_slurm, "queue", lambda name: {})
    job_dir = slurm_job_dir(tmp_path, {"started": time.time(), "argv": ["t"], "ran_at": 1.0}, "0")
    args = sdkit_job.parse_args(["status", "--run-id", "r1", "--slurm-gres=tpu"]
                                + [f"--slurm-acct={line}" for line in ACCT_LINES])
    status = sdkit_job.run_status(job_dir.parent, accounting=sdkit_slurm.parse_acct(args.slurm_acct, args.slurm_gres))
    [job] = status["jobs"]
    assert job["state"] == "finished" and job["slurm_job"] == "16_0"
    assert job["accounting"] == {"state": "COMPLETED", "elapsed_s": 35, "node": "node-a", "chips": 1, "exit_code": "0:0"}
    assert status["lines"][0].endswith(", slurm job 16_0: sacct COMPLETED on node-a, 1 chip, 35 s, exit 0:0")


def test_a_task_still_running_shows_no_accounting_of_an_earlier_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr(sdkit_slurm, "queue", lambda name: {"16_0": {"state": "RUNNING", "reason": "None"}})
    job_dir = slurm_job_dir(tmp_path, {"started": time.time(), "argv": ["t"], "ran_at": 1.0}, None)
    status = sdkit_job.run_status(job_dir.parent, accounting=sdkit_slurm.parse_acct(ACCT_LINES, "tpu"))
    assert status["jobs"][0]["state"] == "running" and "accounting" not in status["jobs"][0]
    assert "sacct" not in status["lines"][0]


def test_a_forged_job_id_is_not_handed_to_sacct(tmp_path, monkeypatch):
    """slurm_job is the runner user's file: only an id's shape goes into the playbook's sacct --jobs."""
    monkeypatch.setattr(sdkit_slurm, "queue", lambda name: {})
    job_dir = slurm_job_dir(tmp_path, {"started": time.time(), "argv": ["t"], "ran_at": 1.0}, "0")
    (job_dir / "slurm_job").write_text("16_0,1-999999\n")
    assert "slurm_job" not in sdkit_job.run_status(job_dir.parent)["jobs"][0]


# --------------------------------------------------------------------------- shared storage (issue 23, item 4)


def test_on_shared_storage_sbatch_leaves_the_node_to_slurm():
    common = dict(name="n", gres="tpu", chips_per_task=1, cpus_per_task=1, array=[0, 1], output="/o", command="c")
    pinned = sdkit_slurm.submit_argv(node="a", **common)
    anywhere = sdkit_slurm.submit_argv(node=None, **common)
    assert "--nodelist=a" in pinned
    assert anywhere == [arg for arg in pinned if arg != "--nodelist=a"]


def start_slurm_run(tmp_path, monkeypatch, *extra: str, chips: int = 2, code: int = 0) -> list:
    """make train's start of a CHIPS-chip host's run under Slurm (as the runner user), with sbatch faked; its argv."""
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\n")
    keep_environment(monkeypatch)
    monkeypatch.setattr(sdkit_slurm, "node_name", lambda: "node-a")
    monkeypatch.setattr(sdkit_slurm, "node_chips", lambda node, gres: chips)
    monkeypatch.setattr(sdkit_slurm, "queue", lambda name: {})
    submitted = []
    monkeypatch.setattr(sdkit_slurm, "submit", lambda argv: submitted.append(argv) or "42")
    assert sdkit_job.main(["start", "--run-id", "r1", "--runs-dir", str(tmp_path / "runs"), "--env-file", str(env_file),
                           "--user", "", "--json", "--scheduler", "slurm", "--devices", "cpu", "--cpu-threads", "1",
                           "--python", "/venv/bin/python", "--trainer", "/kit/train_lora.py", *extra, "--", "--seed=1"]) == code
    return submitted


def test_start_on_shared_storage_keeps_the_tasks_there_and_does_not_pin_them(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    [argv] = start_slurm_run(tmp_path, monkeypatch, f"--slurm-shared-dir={shared}")
    folder = shared / "r1" / "node-a"  # this host's tasks of the run, on storage every node sees
    assert not any(arg.startswith("--nodelist") for arg in argv)
    assert f"--output={folder}/task%a/slurm.log" in argv
    record = json.loads((folder / "task0" / "job.json").read_text())
    assert record["argv"][-2:] == ["--output_dir", f"{folder}/task0/output"]  # the checkpoints too
    assert f"--run-dir {folder}" in argv[-1]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("shared", [False, True])
def test_a_runs_tasks_are_named_by_the_run_and_host_also_on_shared_storage(tmp_path, monkeypatch, shared):
    """squeue and scancel find a run's tasks by their name. On shared storage the run folder is <dir>/r1/node-a,
    whose last part is the host: a name from it would be the same for every run of the host (train-cancel of one
    would cancel all of them, and no poll would find a run's tasks by the run)."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    [argv] = start_slurm_run(tmp_path, monkeypatch, *([f"--slurm-shared-dir={folder}"] if shared else []))
    assert "--job-name=sdkit-train-r1.node-a" in argv
    run_dir = folder / "r1" / "node-a" if shared else tmp_path / "runs" / "r1"
    assert json.loads((run_dir / "task0" / "job.json").read_text())["slurm_name"] == "sdkit-train-r1.node-a"


def test_a_refused_start_on_shared_storage_names_the_run_not_the_host(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    start_slurm_run(tmp_path, monkeypatch, f"--slurm-shared-dir={folder}")
    capsys.readouterr()
    # The host now counts three chips: the run's two tasks no longer fit its plan.
    assert start_slurm_run(tmp_path, monkeypatch, f"--slurm-shared-dir={folder}", chips=3, code=2) == []
    assert "run 'r1' has jobs task0, task1, but these settings make task0, task1, task2" in capsys.readouterr().err


def test_status_on_shared_storage_names_the_run_not_the_host(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    monkeypatch.setattr(sdkit_slurm, "node_name", lambda: "node-a")
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\n")
    assert sdkit_job.main(["status", "--run-id", "r1", "--env-file", str(env_file), "--user", "",
                           f"--slurm-shared-dir={folder}", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["run_id"] == "r1" and status["lines"] == ["r1: no jobs on this host"]


def test_start_without_shared_storage_pins_the_tasks_to_this_host_as_before(tmp_path, monkeypatch):
    [argv] = start_slurm_run(tmp_path, monkeypatch)
    assert "--nodelist=node-a" in argv and f"--output={tmp_path}/runs/r1/task%a/slurm.log" in argv


def test_a_shared_dir_that_is_not_fit_is_refused_before_anything_is_queued(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    submitted = []
    monkeypatch.setattr(sdkit_slurm, "submit", lambda argv: submitted.append(argv) or "42")
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\n")
    assert sdkit_job.main(["start", "--run-id", "r1", "--env-file", str(env_file), "--user", "", "--scheduler", "slurm",
                           f"--slurm-shared-dir={shared}", "--devices", "cpu"]) == 2
    assert "no one else may write" in capsys.readouterr().err and not submitted and not (shared / "r1").exists()


def test_a_shared_dir_is_for_slurm_only(tmp_path, capsys):
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/state\n")
    assert sdkit_job.main(["start", "--run-id", "r1", "--env-file", str(env_file), "--user", "",
                           f"--slurm-shared-dir={tmp_path}", "--devices", "cpu"]) == 2
    assert "is for SCHEDULER=slurm" in capsys.readouterr().err


def test_status_on_shared_storage_reads_this_hosts_folder_there(tmp_path, monkeypatch):
    monkeypatch.setattr(sdkit_slurm, "node_name", lambda: "node-b")
    args = sdkit_job.parse_args(["status", "--run-id", "r1", "--runs-dir", "/local", f"--slurm-shared-dir={tmp_path}"])
    assert sdkit_job.run_dir_of(args) == tmp_path / "r1" / "node-b"
    args = sdkit_job.parse_args(["status", "--run-id", "r1", "--runs-dir", "/local"])
    assert sdkit_job.run_dir_of(args) == Path("/local/r1")


def test_a_fit_shared_dir_has_no_problem(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    assert sdkit_slurm.shared_dir_problem(str(shared)) is None


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "No such file or directory; mount the shared storage there"),
    (lambda d: (d.mkdir(), d.chmod(0o775)), "no one else may write"),
    (lambda d: (d.parent.joinpath("real").mkdir(), d.symlink_to(d.parent / "real")), "is a link"),
    # Another user could swap the run folder, writing in a folder above it that is not sticky.
    (lambda d: (d.mkdir(), d.parent.chmod(0o777)), "above the shared run folder"),
    (lambda d: (d.mkdir(), os.chown(d, 12345, 12345)), "must be a folder of"),
])
def test_a_shared_dir_others_could_change_is_one_clear_problem(tmp_path, setup, message):
    base = tmp_path / "base"
    base.mkdir(mode=0o755)
    shared = base / "shared"
    setup(shared)
    problem = sdkit_slurm.shared_dir_problem(str(shared))
    assert problem and message in problem and str(shared) in problem


@pytest.mark.parametrize("path", ["relative/runs", "/shared/../etc", "/shared/./runs", "/shared/run%j", "/shared/a b"])
def test_a_shared_dir_path_that_is_not_plain_is_refused(path):
    assert "not a plain absolute path" in sdkit_slurm.shared_dir_problem(path)
