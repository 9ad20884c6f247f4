"""sdkit_job.py: the commands it plans, and start/status/stop on a fake trainer.

systemctl is the stand-in in fake_systemd/ (a unit is a detached manager that runs ExecStart, then
ExecStopPost with how it ended, and records the main pid); the real ones, the runner user and the link attacks are tested on systemd test hosts
(tests/roles/test_train_privileges.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sdkit_job
from sdkit_job import JobError

JOB_TOOL = Path(sdkit_job.__file__)
FAKE_SYSTEMD = Path(__file__).with_name("fake_systemd")
UNIT = "sdkit-train-r1-cpu.service"

# Behaves like train_lora.py where the job tool can see it: logs the step count, appends to
# metrics.jsonl, checkpoints every 2 steps, resumes from the latest checkpoint, and on Ctrl-C
# checkpoints and exits 130. FAKE_STEP_S sets the pace.
FAKE_TRAINER = textwrap.dedent('''
    import argparse, json, os, signal, sys, time
    from pathlib import Path
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_train_steps", type=int, default=6)
    parser.add_argument("--resume_from_checkpoint")
    parser.add_argument("--fail_at", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    print(f"device {os.environ['ACCELERATE_TORCH_DEVICE']}, total optimization steps = {args.max_train_steps}",
          file=sys.stderr, flush=True)
    print(f"threads {os.environ.get('OMP_NUM_THREADS')}", flush=True)
    print(f"HF_TOKEN {'set' if os.environ.get('HF_TOKEN') else 'absent'}, token file "
          f"{os.environ.get('SOPHON_SD_HUB_TOKEN_FILE', 'absent')}", flush=True)
    credential = Path(os.environ.get("CREDENTIALS_DIRECTORY", "/nonexistent")) / "hub_token"
    print(f"credential {credential.read_text().strip() if credential.is_file() else 'absent'}", flush=True)
    step = 0
    if args.resume_from_checkpoint == "latest":
        done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        if done:
            step = done[-1]
            print(f"resuming from checkpoint checkpoint-{step}", flush=True)
    while step < args.max_train_steps:
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0.05")))
        step += 1
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, "loss": 1.0 / step, "step_time_s": 0.05}) + "\\n")
        if step % 2 == 0 or stop:
            (out / f"checkpoint-{step}").mkdir(exist_ok=True)
        if stop:
            sys.exit(130)
        if step == args.fail_at:
            sys.exit(3)
    (out / "run.json").write_text(json.dumps({"step": step, "finished": True}))
''')


@pytest.fixture
def job_tool(tmp_path):
    """Runs sdkit_job.py as a separate process, as Ansible does, against a run folder in tmp_path."""
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    env_file = tmp_path / "env"
    state = tmp_path / "state"
    env_file.write_text(f"ACCELERATE_TORCH_DEVICE=cpu\nSOPHON_SD_DEVICES=\nSOPHON_SD_ROOT={tmp_path / 'kit'}\n"
                        f"SOPHON_SD_STATE_DIR={state}\n")
    runs = state / "runs"
    units = tmp_path / "units"
    units.mkdir()
    unit_files = tmp_path / "etc-systemd-system"
    unit_files.mkdir()
    env = dict(os.environ, PATH=f"{FAKE_SYSTEMD}{os.pathsep}{os.environ['PATH']}", FAKE_SYSTEMD_DIR=str(units),
               FAKE_SYSTEMD_UNIT_DIR=str(unit_files))

    def run(command, *args, step_s="0.05", check=True):
        common = ["--run-id", "r1", "--runs-dir", str(runs), "--json", "--user", ""]
        if command == "start":
            common += ["--env-file", str(env_file), "--python", sys.executable, "--trainer", str(trainer),
                       "--unit-dir", str(unit_files)]
        if command == "stop":
            common.remove("--json")
        result = subprocess.run([sys.executable, str(JOB_TOOL), command, *common, *args], capture_output=True,
                                text=True, timeout=60, env=dict(env, FAKE_STEP_S=step_s))
        if command == "stop":
            return result
        if check:
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)
        return result

    run.job_dir = runs / "r1" / "cpu"
    run.env_file = env_file
    run.env = env
    run.unit = lambda: json.loads((units / f"{UNIT}.json").read_text())
    run.unit_file = unit_files / UNIT
    run.enabled = lambda: (units / f"{UNIT}.enabled").exists()
    run.boot = lambda: subprocess.run(["systemctl", "fake-boot"], env=env, check=True)
    return run


def power_loss(job_tool):
    """The unit's manager (systemd) and its main process die at once: nothing records how the job ended."""
    unit = job_tool.unit()
    os.kill(unit["manager"], signal.SIGKILL)
    os.kill(unit["pid"], signal.SIGKILL)


def wait_for(job_tool, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_tool("status")
        if condition(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"timed out; last status {status}")


def only_job(status):
    [job] = status["jobs"]
    return job


# --------------------------------------------------------------------------- planning


def test_per_chip_is_one_job_per_chip(tmp_path):
    jobs = sdkit_job.plan_jobs(tmp_path, "per_chip", ["tpu:0", "tpu:1"], "/venv/bin/python", "/r/train_lora.py",
                               ["--seed=42"])
    assert [j.name for j in jobs] == ["tpu0", "tpu1"]
    assert jobs[1].argv == ["/venv/bin/python", "/r/train_lora.py", "--seed=42",
                            "--output_dir", str(tmp_path / "tpu1" / "output")]
    assert jobs[1].env == {"ACCELERATE_TORCH_DEVICE": "tpu:1"}


def test_data_parallel_is_one_accelerate_launch_over_all_chips(tmp_path):
    [job] = sdkit_job.plan_jobs(tmp_path, "data_parallel", ["tpu:0", "tpu:1", "tpu:2"], "/venv/bin/python",
                                "/r/train_lora.py", ["--seed=42"])
    assert job.name == "dp3"
    assert job.argv[:6] == ["/venv/bin/python", "-m", "accelerate.commands.launch", "--num_processes", "3",
                            "--num_machines"]
    assert "--multi_gpu" in job.argv
    assert job.argv[-4:] == ["/r/train_lora.py", "--seed=42", "--output_dir", str(tmp_path / "dp3" / "output")]
    # No index: each process takes the chip of its LOCAL_RANK (sdkit_env.resolve_device).
    assert job.env == {"ACCELERATE_TORCH_DEVICE": "tpu"}


def test_data_parallel_refuses_chips_that_local_rank_cannot_reach(tmp_path):
    with pytest.raises(JobError, match="tpu:0,tpu:1.*per_chip"):
        sdkit_job.plan_jobs(tmp_path, "data_parallel", ["tpu:0", "tpu:2"], "py", "t.py", [])


@pytest.mark.parametrize("mode", sdkit_job.MODES)
def test_a_host_without_chips_gets_one_cpu_job(tmp_path, mode):
    [job] = sdkit_job.plan_jobs(tmp_path, mode, [], "py", "t.py", [])
    assert (job.name, job.env, job.argv[:2]) == ("cpu", {"ACCELERATE_TORCH_DEVICE": "cpu"}, ["py", "t.py"])


@pytest.mark.parametrize("cpus, processes, threads, env_file, expected", [
    (8, 3, None, "", "2"),   # each of the host's jobs gets its share of the CPUs
    (2, 4, None, "", "1"),   # at least one
    (8, 1, 3, "OMP_NUM_THREADS=6\n", "3"),  # --cpu-threads (make train THREADS=) wins
    (8, 2, None, "OMP_NUM_THREADS=6\n", None),  # the env file's, which the unit gets from it
])
def test_jobs_share_the_hosts_cpus(tmp_path, monkeypatch, cpus, processes, threads, env_file, expected):
    monkeypatch.setattr(sdkit_job.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    (tmp_path / "env").write_text(env_file)
    jobs = sdkit_job.plan_jobs(tmp_path, "per_chip", [f"tpu:{i}" for i in range(processes)], "py", "t.py", [])
    given = sdkit_job.share_cpus(jobs, processes, threads, sdkit_job.EnvFile.read(tmp_path / "env"))
    assert {job.env.get("OMP_NUM_THREADS") for job in jobs} == {expected}
    # What a Slurm task asks for as its CPUs: the threads each process runs, wherever they were set.
    assert given == int(expected or 6)


def test_a_bad_thread_count_in_the_env_file_is_one_line(tmp_path):
    (tmp_path / "env").write_text("OMP_NUM_THREADS=all\n")
    jobs = sdkit_job.plan_jobs(tmp_path, "per_chip", ["cpu"], "py", "t.py", [])
    with pytest.raises(sdkit_job.JobError, match=r"OMP_NUM_THREADS=all in .*/env is not a whole number.*THREADS=n"):
        sdkit_job.share_cpus(jobs, 1, None, sdkit_job.EnvFile.read(tmp_path / "env"))


# --------------------------------------------------------------------------- lifecycle


def test_absent_run(job_tool):
    status = job_tool("status")
    assert status["state"] == "absent" and status["jobs"] == []


def test_start_runs_detached_then_finishes_and_start_again_changes_nothing(job_tool):
    started = job_tool("start", "--", "--max_train_steps=6", step_s="1.5")
    [result] = started["jobs"]
    assert result["action"] == "started" and result["status"]["state"] == "running"
    pid = only_job(wait_for(job_tool, lambda s: only_job(s)["pid"] is not None))["pid"]
    # Not a child of this session: a unit of its own, whose main process is the job's trainer itself (launch
    # became it), and whose ExecStopPost records how it ended.
    assert os.getsid(pid) != os.getsid(0)
    assert os.getppid() != pid and Path(f"/proc/{pid}").exists()
    assert pid == job_tool.unit()["pid"]
    # launch sets the attempt up, then execs the trainer in the same process: on a loaded machine the first
    # status can come before the exec.
    deadline = time.monotonic() + 30
    while "fake_trainer.py" not in Path(f"/proc/{pid}/cmdline").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "fake_trainer.py" in Path(f"/proc/{pid}/cmdline").read_text()
    unit = job_tool.unit()
    assert unit["command"][-3:] == ["launch", "--job-dir", str(job_tool.job_dir)]
    assert unit["stop_post"].split()[-3:] == ["ended", "--job-dir", str(job_tool.job_dir)]
    assert {"--property=KillMode=mixed", "--property=KillSignal=SIGTERM", "--property=TimeoutStopSec=900",
            f"--property=EnvironmentFile={job_tool.env_file}"} <= set(unit["options"])
    # The trainer's command is not in the unit, where systemd would expand $VARIABLES in it.
    assert "--max_train_steps=6" not in unit["command"]
    assert result["status"]["unit"] == UNIT
    assert job_tool("start", "--", "--max_train_steps=6")["jobs"][0]["action"] == "already running"

    running = wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 1)
    assert only_job(running)["total_steps"] == 6 and only_job(running)["state"] == "running"

    done = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (done["state"], done["step"], done["total_steps"], done["exit_status"]) == ("finished", 6, 6, 0)
    assert done["loss"] == pytest.approx(1 / 6)
    assert done["elapsed_s"] > 1.0
    record = json.loads((job_tool.job_dir / "job.json").read_text())
    assert record["argv"][-3:] == ["--max_train_steps=6", "--output_dir", str(job_tool.job_dir / "output")]

    again = job_tool("start", "--", "--max_train_steps=6")["jobs"][0]
    assert again["action"] == "already finished"
    assert len(json.loads((job_tool.job_dir / "job.json").read_text())["attempts"]) == 1


def test_a_killed_job_resumes_from_its_latest_checkpoint(job_tool):
    steps_total = 20  # room for slow status polls on a busy machine: the kill must come before the end
    job_tool("start", "--", f"--max_train_steps={steps_total}", step_s="0.3")
    wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 3)
    os.kill(only_job(job_tool("status"))["pid"], signal.SIGKILL)
    died = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (died["state"], died["exit_status"]) == ("failed", -9)
    checkpoint = died["checkpoint"]
    resumed_at = int(checkpoint.split("-")[1])
    assert resumed_at % 2 == 0 and 2 <= resumed_at < steps_total  # every 2 steps; the kill came after step 3

    result = job_tool("start", "--", f"--max_train_steps={steps_total}", step_s="0.05")["jobs"][0]
    assert result["action"] == f"resumed from {checkpoint}"
    done = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (done["state"], done["step"], done["attempts"]) == ("finished", steps_total, 2)
    log = (job_tool.job_dir / "train.log").read_text()
    assert "--resume_from_checkpoint latest" in log and f"resuming from checkpoint {checkpoint}" in log
    # The second attempt carries on after the checkpoint rather than starting over at step 1.
    steps = [json.loads(line)["step"] for line in (job_tool.job_dir / "output/metrics.jsonl").read_text().splitlines()]
    assert steps[-(steps_total - resumed_at):] == list(range(resumed_at + 1, steps_total + 1)) and steps.count(1) == 1


def test_a_job_that_vanished_without_exit_status_counts_as_failed(job_tool):
    job_tool("start", "--", "--max_train_steps=50", step_s="0.3")
    wait_for(job_tool, lambda s: only_job(s)["pid"] is not None)
    power_loss(job_tool)  # as a reboot would: nobody records the end
    job = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (job["state"], job["exit_status"]) == ("failed", None)
    assert "no exit status recorded" in job_tool("status")["lines"][0]


def test_stop_checkpoints_and_start_resumes(job_tool):
    job_tool("start", "--", "--max_train_steps=40", step_s="0.2")
    wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 1)
    result = job_tool("stop", "--wait", "20")
    assert f"{UNIT}: asked to stop" in result.stdout
    stopped = only_job(job_tool("status"))
    assert (stopped["state"], stopped["exit_status"]) == ("stopped", 130)
    assert stopped["checkpoint"] == f"checkpoint-{stopped['step']}"
    resumed = job_tool("start", "--", "--max_train_steps=40")["jobs"][0]
    assert resumed["action"] == f"resumed from checkpoint-{stopped['step']}"
    assert job_tool("stop").returncode == 0


def test_a_shutdown_leaves_a_stopped_job_that_start_resumes(job_tool):
    """Issue 9 (SIGTERM): a shutdown or systemctl stop signals the unit's main process (KillMode=mixed),
    the trainer itself, which checkpoints (train_lora's StopFlag) and exits 130; ExecStopPost records it."""
    job_tool("start", "--", "--max_train_steps=40", step_s="0.2")
    wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 1)
    os.kill(job_tool.unit()["pid"], signal.SIGTERM)
    stopped = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (stopped["state"], stopped["exit_status"]) == ("stopped", 130)
    assert job_tool("start", "--", "--max_train_steps=40")["jobs"][0]["action"].startswith("resumed from checkpoint-")
    assert job_tool("stop").returncode == 0


def test_a_reboot_resumes_the_job_by_itself_from_its_latest_checkpoint(job_tool):
    """Issue 20: a unit of systemd-run was transient, gone after a reboot, so only a second make train
    resumed the job. The job's unit is a file enabled for boot; the boot's start of it resumes the job."""
    steps_total = 20
    job_tool("start", "--", f"--max_train_steps={steps_total}", step_s="0.3")
    assert job_tool.enabled() and "WantedBy=multi-user.target" in job_tool.unit_file.read_text()
    wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 3)
    power_loss(job_tool)  # the power goes: nobody records the end
    died = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    checkpoint = died["checkpoint"]

    job_tool.boot()
    done = only_job(wait_for(job_tool, lambda s: s["state"] != "running", timeout=60))
    assert (done["state"], done["step"], done["attempts"]) == ("finished", steps_total, 2)
    log = (job_tool.job_dir / "train.log").read_text()
    assert "--resume_from_checkpoint latest" in log and f"resuming from checkpoint {checkpoint}" in log
    # A finished job's unit does nothing at the next boot (its end and elapsed time stay as they were),
    # and the next start keeps it from booting at all.
    ended = (job_tool.job_dir / "exit_status").stat().st_mtime_ns
    job_tool.boot()
    time.sleep(1)
    assert only_job(job_tool("status"))["attempts"] == 2
    assert (job_tool.job_dir / "exit_status").stat().st_mtime_ns == ended
    assert job_tool("start", "--", f"--max_train_steps={steps_total}")["jobs"][0]["action"] == "already finished"
    assert not job_tool.enabled()


def test_a_cancelled_job_stays_stopped_through_a_reboot(job_tool):
    job_tool("start", "--", "--max_train_steps=40", step_s="0.2")
    wait_for(job_tool, lambda s: (only_job(s)["step"] or 0) >= 1)
    job_tool("stop", "--wait", "20")
    assert not job_tool.enabled()
    job_tool.boot()
    time.sleep(1)
    assert only_job(job_tool("status"))["state"] == "stopped"


@pytest.mark.parametrize("runs_dir", ["/srv/runs dir", "/srv/%h/runs", "/srv/runs\nExecStartPre=/bin/sh", "relative"])
def test_root_writes_no_unit_from_a_path_systemd_would_read_as_more(tmp_path, runs_dir):
    """Root writes the unit file: a runs folder with a space, a specifier or a newline would add settings."""
    job = sdkit_job.plan_jobs(Path(runs_dir) / "r1", "per_chip", [], "python", "train.py", [])[0]
    with pytest.raises(JobError, match="cannot go into a systemd unit"):
        sdkit_job.unit_text(job, None, "/etc/sophon-sd/env", 900)


def test_the_hub_token_file_reaches_the_trainer_as_a_credential_only(job_tool, tmp_path):
    """The unit loads the token file the env file names (LoadCredential=): systemd reads it as root and
    gives the job's processes alone a copy, so the file can stay root's; a missing file adds nothing,
    since systemd would refuse to start the unit."""
    token = tmp_path / "hub-token"
    job_tool.env_file.write_text(job_tool.env_file.read_text() + f"SOPHON_SD_HUB_TOKEN_FILE={token}\n")
    job_tool("start", "--", "--max_train_steps=2")
    assert "LoadCredential" not in job_tool.unit_file.read_text()
    wait_for(job_tool, lambda s: s["state"] == "finished")
    token.write_text("hf_secret\n")
    job_tool("start", "--run-id", "r2", "--", "--max_train_steps=2")
    unit_file = job_tool.unit_file.with_name("sdkit-train-r2-cpu.service")
    assert f"LoadCredential=hub_token:{token}\n" in unit_file.read_text()
    log = job_tool.job_dir.parent.parent / "r2" / "cpu" / "train.log"
    deadline = time.monotonic() + 30
    while "credential" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "credential hf_secret" in log.read_text()
    assert "hf_secret" not in unit_file.read_text() + (log.parent / "job.json").read_text()


def test_a_token_file_another_user_could_swap_is_refused(tmp_path):
    """systemd reads a LoadCredential= file as root: one in a folder others may write could become a link to
    /etc/shadow, which the runner user would then read as its credential."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hub-token").write_text("hf_secret\n")
    assert sdkit_job.credential_file(str(shared / "hub-token")) == str(shared / "hub-token")
    assert sdkit_job.credential_file(str(shared / "none")) is None
    shared.chmod(0o777)
    with pytest.raises(JobError, match=r"hub-token \(SOPHON_SD_HUB_TOKEN_FILE\) or a folder above it can be changed "
                                       r"by another user than .*sophon_host_env_hub_token_file"):
        sdkit_job.credential_file(str(shared / "hub-token"))
    shared.chmod(0o1777)  # sticky, as /tmp: no one else may replace my file there
    assert sdkit_job.credential_file(str(shared / "hub-token")) == str(shared / "hub-token")


@pytest.mark.parametrize("how, status, code", [("exited", "0", 0), ("exited", "130", 130), ("killed", "KILL", -9),
                                               ("dumped", "SEGV", -11), ("killed", "NOSUCH", 1), ("", "", 1)])
def test_execstoppost_records_how_the_trainer_ended(how, status, code):
    """systemd gives ExecStopPost $EXIT_CODE and $EXIT_STATUS (a signal by its name); exit_status keeps the
    code status reads after a reboot too, when systemd no longer knows it."""
    assert sdkit_job.exit_code(how, status) == code


def test_a_link_planted_at_the_log_is_not_followed(job_tool, tmp_path):
    """systemd opens StandardOutput=append: files as root; train.log is the runner user's, so the unit's launch
    opens it itself, as that user, following no link: the job fails in one line and the target is untouched."""
    target = tmp_path / "roots-file"
    target.write_text("root's\n")
    job_tool.job_dir.mkdir(parents=True)
    (job_tool.job_dir / "train.log").symlink_to(target)
    job_tool("start", "--", "--max_train_steps=2")
    assert "StandardOutput" not in job_tool.unit_file.read_text()
    job = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (job["state"], job["exit_status"]) == ("failed", 2)
    assert target.read_text() == "root's\n"
    result = subprocess.run([sys.executable, str(JOB_TOOL), "launch", "--job-dir", str(job_tool.job_dir)],
                            capture_output=True, text=True, env=job_tool.env, check=False)
    assert result.returncode == 2 and result.stderr == (
        f"error: cannot open {job_tool.job_dir}/train.log (Too many levels of symbolic links): it must be a plain "
        "file or absent; remove it and rerun make train\n")


def test_a_failed_job_reports_its_exit_status(job_tool):
    job_tool("start", "--", "--max_train_steps=6", "--fail_at=1")
    job = only_job(wait_for(job_tool, lambda s: s["state"] != "running"))
    assert (job["state"], job["exit_status"], job["step"]) == ("failed", 3, 1)
    assert "exit 3" in job_tool("status")["lines"][0]


# --------------------------------------------------------------------------- bad input


def test_other_settings_for_an_existing_run_are_refused(job_tool):
    job_tool("start", "--", "--max_train_steps=2")
    wait_for(job_tool, lambda s: s["state"] != "running")
    result = job_tool("start", "--", "--max_train_steps=3", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: job cpu of this run was started with another command")
    assert "new run id" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_output_dir_is_the_tools_choice(job_tool):
    result = job_tool("start", "--", "--output_dir=/tmp/x", check=False)
    assert result.returncode == 2 and "--output_dir is chosen per job" in result.stderr


def test_runs_dir_comes_from_the_env_file(job_tool):
    """Without --runs-dir (the playbook passes it; people on the host do not) runs are under SOPHON_SD_STATE_DIR."""
    job_tool("start", "--", "--max_train_steps=2")
    wait_for(job_tool, lambda s: s["state"] != "running")
    result = subprocess.run([sys.executable, str(JOB_TOOL), "status", "--run-id", "r1", "--user", "", "--env-file",
                             str(job_tool.env_file)], capture_output=True, text=True, check=True, env=job_tool.env)
    assert result.stdout.startswith("cpu: finished, step 2/2")


def test_env_file_without_state_dir_says_how_to_fix(tmp_path, capsys):
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_ROOT=/srv/kit\n")
    assert sdkit_job.main(["status", "--run-id", "r", "--env-file", str(env_file)]) == 2
    assert capsys.readouterr().err == (f"error: {env_file} has no SOPHON_SD_STATE_DIR: "
                                       "rerun the kit's site.yml (role sophon_host_env)\n")


def test_missing_env_file_says_how_to_fix(tmp_path, capsys):
    code = sdkit_job.main(["start", "--run-id", "r", "--runs-dir", str(tmp_path), "--env-file",
                           str(tmp_path / "nope"), "--user", ""])
    assert code == 2
    assert "not found: rerun the kit's site.yml (role sophon_host_env), or pass --env-file" in capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["../x", "r1\n", "a" * 65, "-x", "a b", "x;id", "x'y", ".hidden", ""])
def test_bad_run_id(tmp_path, capsys, run_id):
    """Issue 9 item 7 (quoting): a run id becomes a folder and reaches playbooks; "r1\\n" used to pass ('$')."""
    assert sdkit_job.main(["status", f"--run-id={run_id}", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not usable as a folder name: use 1 to 64 letters, digits" in err and len(err.splitlines()) == 1


def test_good_run_ids(tmp_path, capsys):
    for run_id in ("pokemon-fp16", "r1", "2024.06.01_a", "a" * 64):
        assert sdkit_job.main(["status", "--run-id", run_id, "--runs-dir", str(tmp_path), "--user", ""]) == 0


def test_devices_that_make_no_job_name_are_refused(tmp_path):
    """Issue 9 item 7: job names come from SOPHON_SD_DEVICES and become folders too."""
    with pytest.raises(JobError, match="device '../../etc' .* does not give a usable job name"):
        sdkit_job.plan_jobs(tmp_path, "per_chip", ["tpu:0", "../../etc"], "python", "train.py", [])
    # A '-' would make two (run id, job) pairs share a unit: sdkit-train-a-b-c is run a-b job c, or run a job b-c.
    with pytest.raises(JobError, match="device 'b-c'"):
        sdkit_job.plan_jobs(tmp_path, "per_chip", ["b-c"], "python", "train.py", [])


def test_unit_names_come_from_the_run_and_job():
    assert sdkit_job.unit_name(Path("/var/lib/sophon-sd/runs/pokemon-fp16/tpu1")) == \
        "sdkit-train-pokemon-fp16-tpu1.service"


# --------------------------------------------------------------------------- argument passing (issue 9, item 7)


def test_model_and_dataset_replace_the_tutorials():
    flags = ["--mixed_precision=fp16", "--pretrained_model_name_or_path=CompVis/sd", "--dataset_name", "lambdalabs/p",
             "--seed=42"]
    assert sdkit_job.with_sources(flags, {"model": "/srv/models/my sd", "dataset": "owner/set.v2"}) == [
        "--mixed_precision=fp16", "--seed=42", "--pretrained_model_name_or_path=/srv/models/my sd",
        "--dataset_name=owner/set.v2"]
    assert sdkit_job.with_sources(flags, {"model": None, "dataset": None}) == flags


@pytest.mark.parametrize("value", ["$(touch /tmp/x)", "`id`", "relative/../path/x", "a b", "/srv/x\nid",
                                   "-x", "owner/name/extra", ""])
def test_a_model_that_is_neither_a_hub_id_nor_an_absolute_path_is_refused(job_tool, value):
    """MODEL / DATASET used to reach a bash recipe run as root, inside double quotes: $(...) ran as root."""
    result = job_tool("start", f"--model={value}", "--", "--max_train_steps=2", check=False)
    assert result.returncode == 2
    assert "error: --model " in result.stderr and "is not usable: give a hub id such as owner/name" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not job_tool.job_dir.exists()


def test_a_control_character_in_train_args_is_refused(job_tool):
    result = job_tool("start", "--", "--validation_prompt=a\x1b[2Jb", check=False)
    assert result.returncode == 2 and "contains a control character" in result.stderr


def test_cpu_threads_reach_the_trainer_and_a_bad_count_is_one_line(job_tool):
    assert job_tool("start", "--cpu-threads=3")["jobs"][0]["action"] == "started"
    assert json.loads((job_tool.job_dir / "job.json").read_text())["env"]["OMP_NUM_THREADS"] == "3"
    wait_for(job_tool, lambda status: status["state"] == "finished")
    assert "threads 3" in (job_tool.job_dir / "train.log").read_text()
    result = job_tool("start", "--cpu-threads=0", check=False)
    assert result.returncode == 2 and "--cpu-threads: must be a whole number of at least 1" in result.stderr


def test_bad_extra_args_quoting_is_one_line(job_tool):
    result = job_tool("start", "--extra-args=--seed '1", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: --extra-args is not valid shell quoting")


@pytest.mark.parametrize("where", [
    ["--extra-args=--hub_token SECRET"], ["--extra-args=--seed 1 --hub_tok=SECRET"], ["--", "--hub_t", "SECRET"],
    ["--", "--hub_token=SECRET"], ["--extra-args=--hub_to'k'en SECRET"],
])
def test_a_hub_token_among_the_trainers_flags_is_refused(job_tool, where):
    """Issue 21 item 4: a --hub_token in TRAIN_ARGS was in root's argv (and the supervisor's file); now the
    job tool refuses it in every form argparse would take, names the token file instead, and starts nothing."""
    result = job_tool("start", *where, check=False)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("error: --hub_token in the trainer's flags (TRAIN_ARGS) would be in every "
                                    "process list") and "SOPHON_SD_HUB_TOKEN_FILE" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout and len(result.stderr.splitlines()) == 1
    assert not job_tool.job_dir.exists()


def test_hub_model_id_is_not_taken_for_a_token(job_tool):
    assert job_tool("start", "--extra-args=--hub_model_id=x --max_train_steps=2")["jobs"][0]["action"] == "started"
    wait_for(job_tool, lambda status: status["state"] != "running")


def test_a_resumed_attempt_does_not_start_over():
    """--overwrite_output_dir belongs to the first attempt; later ones resume from its checkpoints."""
    argv = ["python", "train.py", "--overwrite_output_dir", "--seed", "1"]
    assert sdkit_job.attempt_argv(argv, resuming=False) == argv
    assert sdkit_job.attempt_argv(argv, resuming=True) == ["python", "train.py", "--seed", "1",
                                                           "--resume_from_checkpoint", "latest"]
    given = ["python", "train.py", "--resume_from_checkpoint=checkpoint-4"]
    assert sdkit_job.attempt_argv(given, resuming=True) == given


def test_total_steps_come_from_run_json(tmp_path):
    """Issue 9 (polling): the step count is read from what the trainer records, not from its log text."""
    job_dir = tmp_path / "r1" / "tpu0"
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"attempts": [{"started": time.time(), "pid": 0}]}))
    (job_dir / "output" / "run.json").write_text(json.dumps({"total_steps": 8330, "seed": 42}))
    (job_dir / "train.log").write_text("total optimization steps = 12\n")
    ended = {"state": "gone"}
    assert sdkit_job.job_status(job_dir, ended)["total_steps"] == 8330
    (job_dir / "output" / "run.json").unlink()
    assert sdkit_job.job_status(job_dir, ended)["total_steps"] == 12


# --------------------------------------------------------------------------- the runner user (issue 9, item 1)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_root_works_on_the_runs_folder_only_as_the_runner_user(tmp_path):
    """start's file work happens in a child that has become the runner user: here nobody, who cannot
    write into a root-owned folder, so neither can a link it planted make root write there."""
    nobody = sdkit_job.runner_account("nobody")
    assert sdkit_job.as_user(nobody, os.geteuid) == nobody.pw_uid
    assert sdkit_job.as_user(nobody, os.getgroups) == [g for g in os.getgrouplist("nobody", nobody.pw_gid)]
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o755)
    jobs = sdkit_job.plan_jobs(root_only / "r1", "per_chip", [], "python", "train.py", [])
    with pytest.raises(JobError, match=r"cannot create .*/root-only/r1 as nobody \(Permission denied\): its runs "
                                       r"folder must exist and belong to that user"):
        sdkit_job.as_user(nobody, sdkit_job.prepare_run, root_only / "r1", jobs, None)
    assert list(root_only.iterdir()) == []


# --------------------------------------------------------------------------- the runner user's files (issue 21 item 9)


def forged_job(job_dir, metrics=None, attempt=None):
    """A job folder as the runner user could leave it: job.json, exit_status and metrics of its choosing."""
    (job_dir / "output").mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"job": job_dir.name, "device": "cpu", "argv": ["x"], "env": {},
                                                  "attempts": [attempt or {"started": time.time() - 5}]}))
    (job_dir / "exit_status").write_text("0\n")
    if metrics is not None:
        (job_dir / "output" / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")


def status_within(job_tool, seconds=15):
    """status as the playbook runs it, failing the test (not hanging it) when it blocks."""
    runs = job_tool.job_dir.parent.parent
    result = subprocess.run([sys.executable, str(JOB_TOOL), "status", "--run-id", "r1", "--runs-dir", str(runs),
                             "--json", "--user", ""], capture_output=True, text=True, timeout=seconds,
                            env=job_tool.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_fifos_in_a_job_folder_do_not_block_status(job_tool):
    """A FIFO without a writer blocks open() for ever: root's status poll hung on one named metrics.jsonl,
    run.json, train.log or pid (and on job.json swapped in after the is_file check)."""
    forged_job(job_tool.job_dir)
    for name in ("output/metrics.jsonl", "output/run.json", "train.log", "pid", "slurm_job"):
        os.mkfifo(job_tool.job_dir / name)
    job = only_job(status_within(job_tool))
    assert job["state"] == "finished" and job["step"] is None and job["total_steps"] is None


def test_job_json_that_is_a_fifo_is_no_job(tmp_path):
    os.mkfifo(tmp_path / "job.json")
    assert sdkit_job.read_json(tmp_path / "job.json") is None


def test_escape_sequences_in_a_job_folder_and_its_metrics_do_not_reach_the_terminal(job_tool):
    """An OSC sequence sets the terminal's title or writes its clipboard; CSI moves the cursor to fake a line."""
    forged_job(job_tool.job_dir, {"step": 3, "loss": 0.5})
    forged_job(job_tool.job_dir.with_name("cpu\x1b]52;c;cm0gLXJmIH4=\x07"), {"step": 1, "loss": 0.1})
    status = status_within(job_tool)
    assert status["lines"] == [f"cpu: finished, step 3/?, loss 0.5000, {status['jobs'][0]['elapsed_s']:.0f} s"]


@pytest.mark.parametrize("metrics", [
    {"step": "3\x1b[2K\x1b[1Afinished", "loss": "0.1\x1b]0;owned\x07"}, {"step": True, "loss": float("nan")},
    {"step": [1], "loss": {"a": 1}}, ["not", "an", "object"],
])
def test_metrics_of_the_wrong_type_show_as_unknown(job_tool, metrics):
    """A string loss used to crash describe() (format ':.4f'), and its escapes reached the terminal."""
    forged_job(job_tool.job_dir, metrics, attempt={"started": "yesterday"})
    (job_tool.job_dir / "output" / "run.json").write_text(json.dumps({"total_steps": "10\x1b[31m"}))
    [line] = status_within(job_tool)["lines"]
    assert line == "cpu: finished, step ?/?, ? s"


def test_describe_takes_any_type_without_crashing():
    line = sdkit_job.describe({"job": "cpu\x9b31m", "state": "running", "step": "3", "total_steps": "10",
                               "loss": "0.5", "elapsed_s": "12", "attempts": "2"})
    assert line == "cpu31m: running, step ?/?, ? s"


def test_a_huge_metrics_file_is_read_from_its_end_only(job_tool):
    forged_job(job_tool.job_dir)
    with open(job_tool.job_dir / "output" / "metrics.jsonl", "w") as handle:
        handle.write("x" * (64 << 20) + "\n" + json.dumps({"step": 7, "loss": 0.25}) + "\n")
    job = only_job(status_within(job_tool, seconds=10))
    assert (job["step"], job["loss"]) == (7, 0.25)


def test_a_slurm_record_without_its_name_does_not_crash_status(job_tool):
    forged_job(job_tool.job_dir)
    record = json.loads((job_tool.job_dir / "job.json").read_text())
    (job_tool.job_dir / "job.json").write_text(json.dumps({**record, "scheduler": "slurm", "slurm_name": ["x"]}))
    assert only_job(status_within(job_tool))["state"] == "finished"


def test_last_metrics_skips_a_line_nested_too_deep_for_the_parser(tmp_path):
    """json.loads raises RecursionError, no ValueError, on a line of 4000 "[": the status of the job crashed."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 3, "loss": 0.5}\n' + "[" * 4000 + "\n")
    assert sdkit_job.last_metrics(metrics) == {"step": 3, "loss": 0.5}


def test_runner_user_comes_from_the_env_file(tmp_path, capsys):
    """Issue 22: the runner user is the inventory's sophon_sd_user, which the env file records as SOPHON_SD_USER;
    a constant in the tool (sophon-sd) left hosts with another runner user managing jobs as the wrong one."""
    env_file = tmp_path / "env"
    env_file.write_text(f"SOPHON_SD_STATE_DIR={tmp_path}\nSOPHON_SD_USER=sdkit-nosuch-runner\n")
    assert sdkit_job.main(["status", "--run-id", "r", "--env-file", str(env_file)]) == 2
    assert "user 'sdkit-nosuch-runner' does not exist" in capsys.readouterr().err


def test_env_file_without_runner_user_says_how_to_fix(tmp_path, capsys):
    env_file = tmp_path / "env"
    env_file.write_text(f"SOPHON_SD_STATE_DIR={tmp_path}\n")
    assert sdkit_job.main(["status", "--run-id", "r", "--env-file", str(env_file)]) == 2
    assert capsys.readouterr().err == (f"error: {env_file} has no SOPHON_SD_USER: "
                                       "rerun the kit's site.yml (role sophon_host_env)\n")
