#!/usr/bin/env python3
"""Start, watch and stop LoRA training jobs on this host, detached from whoever started them.

``playbooks/train.yml`` drives this over SSH: a fine-tune runs for hours, and the SSH
connection (or the control node) must be free to go away meanwhile. So ``start`` double-forks
into a new session, and a small supervisor process runs the trainer as the runner user and
records how it ended. Everything about a run lives on the host, under
``<runs-dir>/<run-id>/<job>/``:

    job.json      the command, its environment overrides and every attempt (pid, start time)
    pid           the trainer's pid (``kill -INT $(cat pid)`` = Ctrl-C, or -TERM: checkpoint, then exit)
    train.log     the trainer's output, every attempt appended
    exit_status   the trainer's exit code, written when it ends (negative: killed by that signal)
    output/       the trainer's --output_dir (run.json, metrics.jsonl, checkpoint-N, LoRA weights)

A run has one job per chip (``per_chip``: tpu0, tpu1, ...) or one ``accelerate launch`` job over
all chips (``data_parallel``); the chips are SOPHON_SD_DEVICES from /etc/sophon-sd/env, and a
host without chips gets one job on the CPU. The runs live under SOPHON_SD_STATE_DIR/runs (from the
same file) unless --runs-dir says otherwise. Both commands are idempotent: ``start`` leaves a
running or finished job alone and restarts a dead or stopped one with
``--resume_from_checkpoint latest``, so rerunning the playbook resumes rather than starts over.

This tool is standard-library only and does not import sdkit_env: that module loads torch,
which would add seconds to every status poll of every host. It shares sdkit_files (env file,
JSON state) with the doctor.

Values reach the trainer as argv, never through a shell. A ``--hub_token`` among the trainer's
flags is taken out of its command line (which every local user can read in the process list)
and out of everything this tool writes or prints; the trainer gets it as HF_TOKEN in its
environment, unless the env file names a token file (SOPHON_SD_HUB_TOKEN_FILE), which wins.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sdkit_files import (DEFAULT_ENV_FILE, HUB_TOKEN_FILE_KEY, STATE_DIR_KEY, EnvFile, EnvFileError, read_json,
                         write_json_atomic, write_text_atomic)

RUNS_SUBDIR = "runs"  # under SOPHON_SD_STATE_DIR
RUNNER_USER = "sophon-sd"
RESUME_ARGS = ["--resume_from_checkpoint", "latest"]
# A resumed attempt continues the job's own output: starting over again would throw away its steps.
FIRST_ATTEMPT_ONLY = ("--overwrite_output_dir",)
MODES = ("per_chip", "data_parallel")
INTERRUPTED = 130  # the trainer's exit code after Ctrl-C: it saved a checkpoint first
# Run ids and job names become folder names and reach playbooks and logs: no '/', no '..', no
# spaces, quotes or newlines, and short. Matched with fullmatch (a '$' would let "id\n" through).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# argparse accepts any unambiguous prefix of a flag (--hub_t, --hub_tok, ...); --hub_ alone is ambiguous.
HUB_TOKEN_FLAGS = tuple("--hub_token"[:n] for n in range(len("--hub_t"), len("--hub_token") + 1))
HUB_TOKEN_TEXT = re.compile(r"(--hub_t(?:o(?:k(?:en?)?)?)?(?:=|\s+))('[^']*'|\"[^\"]*\"|\S+)")
REDACTED = "<redacted>"
# The trainer records the step count in run.json once it is known (it follows from
# --num_train_epochs and the dataset size); before that, and for trainers that do not, its log
# line at start-up is read.
TOTAL_STEPS_PATTERN = re.compile(rb"total optimization steps = (\d+)")


class JobError(Exception):
    """Something the operator can fix: printed as one line, exit code 2 (as the runners do)."""


# --------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One trainer process (or one ``accelerate launch`` of several) and where it keeps its state."""

    name: str
    device: str
    argv: List[str]
    env: Dict[str, str]
    dir: Path

    @property
    def output_dir(self) -> Path:
        return self.dir / "output"


def job_name(device: str) -> str:
    """'tpu:1' -> 'tpu1': a folder name that says which chip the job had."""
    name = device.replace(":", "")
    if not NAME_PATTERN.fullmatch(name):
        raise JobError(f"device '{device}' (SOPHON_SD_DEVICES or --devices) does not give a usable job name: use "
                       "devices such as tpu:0,tpu:1 or cpu")
    return name


def check_run_id(run_id: str) -> None:
    if not NAME_PATTERN.fullmatch(run_id):
        raise JobError(f"run id {run_id!r} is not usable as a folder name: use {NAME_RULE}")


def split_hub_token(train_args: List[str]) -> Tuple[List[str], Optional[str]]:
    """The trainer's flags without any --hub_token (``--hub_token X`` or ``--hub_token=X``), and the token."""
    kept: List[str] = []
    token: Optional[str] = None
    args = iter(train_args)
    for arg in args:
        flag, equals, value = arg.partition("=")
        if flag in HUB_TOKEN_FLAGS:
            token = value if equals else next(args, "")
        else:
            kept.append(arg)
    return kept, token


def redact(text: str) -> str:
    """``text`` with the value of every --hub_token flag in it replaced, for whatever is written or printed."""
    return HUB_TOKEN_TEXT.sub(lambda found: found.group(1) + REDACTED, text)


def attempt_argv(argv: List[str], resuming: bool) -> List[str]:
    """The command of one attempt: a later attempt resumes from the latest checkpoint."""
    if not resuming:
        return argv
    argv = [a for a in argv if a not in FIRST_ATTEMPT_ONLY]
    return argv if any(a.split("=")[0] == RESUME_ARGS[0] for a in argv) else argv + RESUME_ARGS


def plan_jobs(run_dir: Path, mode: str, devices: List[str], python: str, trainer: str,
              train_args: List[str]) -> List[Job]:
    """The jobs of a run: their names, commands and device environment.

    ``per_chip`` runs an independent training per chip (e.g. different seeds or datasets on one
    server; each chip's result stands alone). ``data_parallel`` runs one training over all chips
    with ``accelerate launch``: the trainer picks its chip from LOCAL_RANK when
    ACCELERATE_TORCH_DEVICE names the kind without an index, which is why the chips must be
    tpu:0..tpu:N-1. With one device (or the CPU) both modes are the same single job.
    """
    if mode not in MODES:
        raise JobError(f"mode '{mode}' is not known: use {' or '.join(MODES)}")
    devices = devices or ["cpu"]
    if mode == "data_parallel" and len(devices) > 1:
        kind = devices[0].partition(":")[0]
        expected = [f"{kind}:{i}" for i in range(len(devices))]
        if devices != expected:
            raise JobError(f"data_parallel needs the chips {','.join(expected)} (each process takes the chip of its "
                           f"LOCAL_RANK), but SOPHON_SD_DEVICES is {','.join(devices)}; use mode per_chip, "
                           "or list the chips from 0 upwards")
        name = f"dp{len(devices)}"
        launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(len(devices)),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
        argv = [*launch, trainer, *train_args, "--output_dir", str(run_dir / name / "output")]
        return [Job(name, kind, argv, {"ACCELERATE_TORCH_DEVICE": kind}, run_dir / name)]
    jobs = []
    for device in devices:
        name = job_name(device)
        argv = [python, trainer, *train_args, "--output_dir", str(run_dir / name / "output")]
        jobs.append(Job(name, device, argv, {"ACCELERATE_TORCH_DEVICE": device}, run_dir / name))
    return jobs


# --------------------------------------------------------------------------- state on disk


def process_start_ticks(pid: int) -> Optional[int]:
    """The start time of a live process (field 22 of /proc/PID/stat), None when it is gone.

    Stored with each pid so that a pid reused by another process after a reboot or a long
    time is not mistaken for our trainer.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and ')'
    if fields[0] == "Z":  # a zombie has ended; only its parent has not collected it yet
        return None
    return int(fields[19])


def alive(pid: Optional[int], ticks: Optional[int]) -> bool:
    return bool(pid) and ticks is not None and process_start_ticks(pid) == ticks


def last_metrics(path: Path) -> Optional[dict]:
    """The last line of metrics.jsonl, read from the end (the file grows by one line per step)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue  # the first line of the window may be cut, the last one half-written
    return None


def total_steps(log: Path) -> Optional[int]:
    try:
        with log.open("rb") as handle:
            found = TOTAL_STEPS_PATTERN.search(handle.read(1 << 18))
    except OSError:
        return None
    return int(found.group(1)) if found else None


def latest_checkpoint(output_dir: Path) -> Optional[str]:
    steps = [int(p.name[11:]) for p in output_dir.glob("checkpoint-*") if p.name[11:].isdigit()]
    return f"checkpoint-{max(steps)}" if steps else None


def job_status(job_dir: Path) -> dict:
    """What one job is doing: state, step, total steps, last loss, elapsed seconds of this attempt.

    States: absent (never started), running, finished (exit 0), stopped (interrupted, a
    checkpoint was saved), failed (any other exit, or the process vanished without one, as
    after a reboot or a kill -9 of the whole session).
    """
    job = read_json(job_dir / "job.json")
    status = {"job": job_dir.name, "dir": str(job_dir), "output_dir": str(job_dir / "output"),
              "log": str(job_dir / "train.log"), "state": "absent", "step": None, "total_steps": None,
              "loss": None, "elapsed_s": None, "exit_status": None, "attempts": 0, "checkpoint": None}
    if not job or not job.get("attempts"):
        return status
    attempt = job["attempts"][-1]
    status.update(device=job.get("device"), attempts=len(job["attempts"]), pid=attempt.get("pid"))
    exit_file = job_dir / "exit_status"
    ended_at = None
    if exit_file.is_file():
        code = int(exit_file.read_text().strip() or 1)
        ended_at = exit_file.stat().st_mtime
        status["exit_status"] = code
        status["state"] = "finished" if code == 0 else "stopped" if code == INTERRUPTED else "failed"
    elif alive(attempt.get("pid"), attempt.get("pid_ticks")) or alive(attempt.get("supervisor_pid"),
                                                                        attempt.get("supervisor_ticks")):
        status["state"] = "running"
    else:
        status["state"] = "failed"  # gone without a word: killed together with its supervisor, or a reboot
    metrics = last_metrics(job_dir / "output" / "metrics.jsonl")
    if metrics:
        status.update(step=metrics.get("step"), loss=metrics.get("loss"))
    run = read_json(job_dir / "output" / "run.json") or {}
    status["total_steps"] = run.get("total_steps") or total_steps(job_dir / "train.log")
    status["checkpoint"] = latest_checkpoint(job_dir / "output")
    status["elapsed_s"] = round((ended_at or time.time()) - attempt["started"], 1)
    return status


def describe(status: dict) -> str:
    """One line per job for people: what the playbook prints at each poll."""
    parts = [f"{status['job']}: {status['state']}"]
    if status["state"] != "absent":
        parts.append(f"step {status['step'] or 0}/{status['total_steps'] or '?'}")
        if status["loss"] is not None:
            parts.append(f"loss {status['loss']:.4f}")
        parts.append(f"{status['elapsed_s']:.0f} s")
        if status["attempts"] > 1:
            parts.append(f"attempt {status['attempts']}")
        if status["state"] in ("failed", "stopped"):
            parts.append(f"exit {status['exit_status']}, log {status['log']}"
                         if status["exit_status"] is not None else f"no exit status recorded, log {status['log']}")
    return ", ".join(parts)


def run_status(run_dir: Path) -> dict:
    """All jobs of a run, and the run's state: running while any job runs, else the worst outcome."""
    jobs = [job_status(d) for d in sorted(run_dir.iterdir()) if (d / "job.json").is_file()] \
        if run_dir.is_dir() else []
    states = {j["state"] for j in jobs}
    state = next((s for s in ("running", "failed", "stopped", "finished") if s in states), "absent")
    return {"run_id": run_dir.name, "run_dir": str(run_dir), "state": state, "jobs": jobs,
            "lines": [describe(j) for j in jobs] or [f"{run_dir.name}: no jobs on this host"]}


# --------------------------------------------------------------------------- detached start


def runner_account(user: Optional[str]) -> Optional[pwd.struct_passwd]:
    """The account to run as: None means "as I am" (not root, or no user asked for)."""
    if not user:
        return None
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise JobError(f"user '{user}' does not exist: provision this host with playbooks/site.yml "
                       "(role sophon_host_env creates it), or pass --user") from None
    if os.geteuid() == account.pw_uid:
        return None
    if os.geteuid() != 0:
        raise JobError(f"only root or '{user}' itself can start jobs as '{user}'; run with sudo or pass --user")
    return account


def own(path: Path, account: Optional[pwd.struct_passwd]) -> None:
    if account:
        os.chown(path, account.pw_uid, account.pw_gid)


def spawn_detached(job: Job, argv: List[str], env: Dict[str, str], account: Optional[pwd.struct_passwd]) -> dict:
    """Run ``argv`` under a supervisor in its own session; return the pids once it runs.

    Double fork + setsid: the supervisor is re-parented to init and has no controlling
    terminal, so the end of the SSH session (SIGHUP, closed pipes) does not reach it. Its
    standard streams are the log, not the caller's pipes, or Ansible would wait for it.
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                supervise(job, argv, env, account, write_end)  # does not return
            os._exit(0)
        finally:
            os._exit(1)
    os.close(write_end)
    os.waitpid(first, 0)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    try:
        return json.loads(answer)
    except ValueError:
        raise JobError(f"job {job.name} did not start: {answer.strip() or 'the supervisor died'}; "
                       f"see {job.dir / 'train.log'}") from None


def supervise(job: Job, argv: List[str], env: Dict[str, str], account: Optional[pwd.struct_passwd],
              report_fd: int) -> None:
    """The detached process: become the runner user, run the trainer, record its exit status."""
    code = 1
    try:
        if account:
            os.setgid(account.pw_gid)
            os.initgroups(account.pw_name, account.pw_gid)
            os.setuid(account.pw_uid)
            env = dict(env, HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        os.umask(0o022)
        os.chdir(job.dir)
        log = os.open(job.dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (log, 1), (log, 2)):
            os.dup2(fd, target)
        os.closerange(3, report_fd)
        os.closerange(report_fd + 1, 1024)
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name}: {redact(shlex.join(argv))}", flush=True)
        try:
            trainer = subprocess.Popen(argv, env=env)
        except OSError as exc:
            os.write(report_fd, f"cannot run {argv[0]}: {exc}".encode())
            raise
        # A shutdown sends SIGTERM to every process at once: the trainer checkpoints and exits 130,
        # and this process must live to record that, not die first and leave a "failed" job.
        # Not passed on: the trainer has its own, and a second SIGTERM would make it abort.
        signal.signal(signal.SIGTERM, lambda *_: None)
        ticks = process_start_ticks(trainer.pid)
        (job.dir / "pid").write_text(f"{trainer.pid}\n")
        os.write(report_fd, json.dumps({"pid": trainer.pid, "pid_ticks": ticks, "supervisor_pid": os.getpid(),
                                        "supervisor_ticks": process_start_ticks(os.getpid())}).encode())
        os.close(report_fd)
        code = trainer.wait()
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job.name}: exit status {code}", flush=True)
    finally:
        try:
            write_text_atomic(job.dir / "exit_status", f"{code}\n")
        finally:
            os._exit(0)


def start_job(job: Job, account: Optional[pwd.struct_passwd], base_env: Dict[str, str]) -> dict:
    """Start, resume or leave alone one job; returns what was done (action) and its status."""
    record = read_json(job.dir / "job.json") or {"job": job.name, "device": job.device, "argv": job.argv,
                                                "env": job.env, "attempts": []}
    if record["argv"] != job.argv:
        raise JobError(f"job {job.name} of this run was started with another command:\n  {shlex.join(record['argv'])}\n"
                       f"not\n  {shlex.join(job.argv)}\nchoose a new run id, or rerun with the same settings to resume")
    current = job_status(job.dir)
    if current["state"] in ("running", "finished"):
        return {"job": job.name, "action": f"already {current['state']}", "status": current}
    resuming = bool(record["attempts"])
    argv = attempt_argv(job.argv, resuming)
    job.dir.mkdir(parents=True, exist_ok=True)
    own(job.dir, account)
    (job.dir / "exit_status").unlink(missing_ok=True)  # the previous attempt's
    started = time.time()
    pids = spawn_detached(job, argv, {**base_env, **job.env, "PYTHONUNBUFFERED": "1"}, account)
    record["attempts"].append({"started": started, "argv": argv, **pids})
    # Atomic: a status poll must never read half a file.
    write_json_atomic(job.dir / "job.json", record)
    action = f"resumed from {current['checkpoint'] or 'the start (no checkpoint yet)'}" if resuming else "started"
    return {"job": job.name, "action": action, "status": job_status(job.dir)}


# --------------------------------------------------------------------------- commands


def run_dir_of(args: argparse.Namespace) -> Path:
    """<runs-dir>/<run-id>; the env file is read only when --runs-dir is not given (the playbook gives it)."""
    check_run_id(args.run_id)
    runs_dir = args.runs_dir or f"{EnvFile.read(args.env_file).require(STATE_DIR_KEY)}/{RUNS_SUBDIR}"
    return Path(runs_dir) / args.run_id


def cmd_start(args: argparse.Namespace) -> int:
    env_file = EnvFile.read(args.env_file)
    devices = [d for d in (args.devices if args.devices is not None
                           else env_file.get("SOPHON_SD_DEVICES", "")).split(",") if d]
    venv = env_file.get("SOPHON_SD_VENV")
    python = args.python or (f"{venv}/bin/python" if venv else sys.executable)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        train_args = train_args + shlex.split(args.extra_args)
    except ValueError as exc:
        raise JobError(f"--extra-args is not valid shell quoting ({exc})") from None
    train_args, cli_token = split_hub_token(train_args)
    if "--output_dir" in train_args or any(a.startswith("--output_dir=") for a in train_args):
        raise JobError("--output_dir is chosen per job (<runs-dir>/<run-id>/<job>/output); leave it out")
    run_dir = run_dir_of(args)
    account = runner_account(args.user)
    if not run_dir.is_dir():
        run_dir.mkdir(parents=True)
        own(run_dir, account)
    jobs = plan_jobs(run_dir, args.mode, devices, python, args.trainer, train_args)
    planned = {j.name for j in jobs}
    existing = {d.name for d in run_dir.iterdir() if (d / "job.json").is_file()}
    if existing and existing != planned:
        raise JobError(f"run '{args.run_id}' has jobs {', '.join(sorted(existing))}, but these settings make "
                       f"{', '.join(sorted(planned))} (another mode or other chips); choose a new run id")
    base_env = {**os.environ, **env_file.values}
    notes = []
    if cli_token and env_file.get(HUB_TOKEN_FILE_KEY):
        notes.append(f"--hub_token ignored: the token file named by {HUB_TOKEN_FILE_KEY} is used")
    elif cli_token:
        base_env["HF_TOKEN"] = cli_token  # the environment is readable by the runner account and root only
    results = [start_job(job, account, base_env) for job in jobs]
    lines = notes + [f"{result['job']}: {result['action']}" for result in results]
    print(json.dumps({"run_id": args.run_id, "jobs": results, "lines": lines}, sort_keys=True) if args.json
          else "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    deadline = time.monotonic() + args.wait
    status = run_status(run_dir)
    # --wait lets one poll cover a stretch of time, so that a playbook printing each poll
    # prints a line every --wait seconds rather than every second.
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        status = run_status(run_dir)
    print(json.dumps(status, sort_keys=True) if args.json else "\n".join(status["lines"]))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Ctrl-C for a detached job: the trainer saves a checkpoint at the next step and exits 130.

    Only the trainer (or the ``accelerate launch`` parent) gets SIGINT: the launcher passes it
    on to its workers once; signalling them too would count as the second, abort-now Ctrl-C.
    """
    run_dir = run_dir_of(args)
    for job in run_status(run_dir)["jobs"]:
        if job["state"] == "running":
            os.kill(job["pid"], signal.SIGINT)
            print(f"{job['job']}: asked to stop (SIGINT to pid {job['pid']})")
    deadline = time.monotonic() + args.wait
    while run_status(run_dir)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    print("\n".join(run_status(run_dir)["lines"]))
    return 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start, watch and stop detached LoRA training jobs on this host (used by playbooks/train.yml). "
                    "State lives in <runs-dir>/<run-id>/<job>/: job.json, pid, train.log, exit_status, output/.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-id", required=True,
                        help=f"Name of the run ({NAME_RULE}); the same id resumes or watches that run.")
    common.add_argument("--runs-dir", default=None,
                        help=f"Where runs keep their state (default: {STATE_DIR_KEY}/{RUNS_SUBDIR} from the env file).")
    common.add_argument("--env-file", default=DEFAULT_ENV_FILE,
                        help=f"The kit's environment file (role sophon_host_env), for {STATE_DIR_KEY} and, when "
                             f"starting, SOPHON_SD_DEVICES, SOPHON_SD_VENV and the trainer's environment "
                             f"(default {DEFAULT_ENV_FILE}).")
    common.add_argument("--json", action="store_true", help="Print JSON (for Ansible) instead of one line per job.")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser(
        "start", parents=[common],
        help="Start the run's jobs; leave running or finished ones alone; resume dead or stopped ones "
             "with --resume_from_checkpoint latest.",
        description="Everything after -- goes to the trainer (train_lora.py flags), except --output_dir, "
                    "which is <runs-dir>/<run-id>/<job>/output, and --hub_token, which reaches the trainer as "
                    f"HF_TOKEN in its environment and is written nowhere (a token file named by {HUB_TOKEN_FILE_KEY} "
                    "in the env file wins over it).")
    start.add_argument("--mode", default="per_chip", choices=MODES,
                       help="per_chip: one independent training per chip; data_parallel: one accelerate launch "
                            "over all chips. A host without chips has one CPU job either way.")
    start.add_argument("--devices", default=None,
                       help="Comma-separated devices instead of SOPHON_SD_DEVICES (empty: the CPU).")
    start.add_argument("--user", default=RUNNER_USER,
                       help=f"Run the trainer as this user when started by root (default {RUNNER_USER}).")
    start.add_argument("--python", default=None, help="Python for the trainer (default: SOPHON_SD_VENV's).")
    start.add_argument("--trainer", default=str(Path(__file__).resolve().with_name("train_lora.py")),
                       help="The training script (default: train_lora.py next to this file).")
    start.add_argument("--extra-args", default="",
                       help="More trainer flags as one shell-quoted string, after those following --; "
                            "a flag given twice takes the last value.")
    start.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the trainer's flags.")
    start.set_defaults(func=cmd_start)

    status = commands.add_parser("status", parents=[common],
                                 help="Each job's state, step/total, last loss and elapsed time.")
    status.add_argument("--wait", type=float, default=0,
                        help="Wait up to this many seconds, or until no job is running, before answering.")
    status.set_defaults(func=cmd_status)

    stop = commands.add_parser("stop", parents=[common],
                               help="Interrupt running jobs as Ctrl-C does: checkpoint, then exit; start resumes.")
    stop.add_argument("--wait", type=float, default=60, help="Seconds to wait for the jobs to end (default 60).")
    stop.set_defaults(func=cmd_stop)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (JobError, EnvFileError) as exc:
        print(f"error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
