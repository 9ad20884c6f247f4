#!/usr/bin/env python3
"""Start, watch and stop LoRA training jobs on this host as systemd services of the runner user.

``playbooks/train.yml`` drives this over SSH: a fine-tune runs for hours, and the SSH connection
(or the control node) must be free to go away meanwhile. So ``start`` hands each job to systemd: a
service ``sdkit-train-<run-id>-<job>.service`` that runs as the runner user with the kit's env file
(EnvironmentFile=), outside any login session, so that ``systemctl status``, ``systemctl stop`` and
``journalctl -u`` work and the job outlives the operator's logout. The service runs this tool's
``supervise`` command, which runs the trainer and records how it ended. Its unit file is written by
root into /etc/systemd/system (from validated paths only) and enabled for boot: a host that reboots
mid-run starts the job again by itself, and ``supervise`` resumes it from its latest checkpoint (a
transient unit of systemd-run would be gone after the reboot). ``stop`` disables the unit, so a
cancelled job stays stopped; the next ``start`` disables the units of finished jobs. Everything about
a run lives on the host, under ``<runs-dir>/<run-id>/<job>/``:

    job.json      the command, its environment overrides and every attempt (unit, start time)
    pid           the trainer's pid (the unit's main process is the supervisor)
    train.log     the trainer's output, every attempt appended
    exit_status   the trainer's exit code, written when it ends (negative: killed by that signal)
    output/       the trainer's --output_dir (run.json, metrics.jsonl, checkpoint-N, LoRA weights)

``stop`` is ``systemctl stop``: systemd sends SIGTERM to the supervisor only (KillMode=mixed),
which passes it on to the trainer once; the trainer saves a checkpoint at the next step and exits
130 (a shutdown does the same). systemd waits --stop-timeout seconds (TimeoutStopSec) for that
before it kills the job.

The runner user loads untrusted model files, so root never works on its files: everything this
tool reads or writes under the runs folder is done by a process that has become the runner user
first (setgroups, setgid, setuid). Root only reads the env file and asks systemd to start, stop or
describe units.

A run has one job per chip (``per_chip``: tpu0, tpu1, ...) or one ``accelerate launch`` job over
all chips (``data_parallel``); the chips are SOPHON_SD_DEVICES from /etc/sophon-sd/env, and a
host without chips gets one job on the CPU. The runs live under SOPHON_SD_STATE_DIR/runs (from the
same file) unless --runs-dir says otherwise. Both commands are idempotent: ``start`` leaves a
running or finished job alone and restarts a dead or stopped one with
``--resume_from_checkpoint latest``, so rerunning the playbook resumes rather than starts over.
A job is running while systemd says its unit is active; after it, exit_status tells how it ended.

With ``start --scheduler slurm`` the jobs queue in the Slurm cluster of role sophon_slurm instead
(sdkit_slurm.py): the same folders and states, plus ``queued``; ``stop`` is scancel, and each task
runs ``slurm-task``, which reads the env file and the chip Slurm gave it, then supervises the
trainer as a unit does. A run keeps the scheduler it was started with.

This tool is standard-library only and does not import sdkit_env: that module loads torch,
which would add seconds to every status poll of every host. It shares sdkit_files (env file,
JSON state) with the doctor.

Values reach the trainer as argv, never through a shell: the trainer's command is stored in
job.json and read back by the supervisor (not put into the unit's ExecStart, where systemd would
expand $VARIABLES). --model and --dataset must be a hub id or an absolute path. A ``--hub_token``
among the trainer's flags is refused: by the time this tool sees it, it is already in this tool's
own command line, which every local user can read in the process list and execve audit logs keep.
The token reaches the trainer from the file the env file names (SOPHON_SD_HUB_TOKEN_FILE, role
sophon_host_env's sophon_host_env_hub_token), which train_lora.py reads itself.

Everything read back from a run folder is the runner user's to write: it is read with
sdkit_files.read_limited (regular files only, no blocking, bounded), values of the wrong type count
as unknown, and every line printed goes through sdkit_files.printable.
"""

from __future__ import annotations

import argparse
import grp
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
from typing import Any, Callable, Dict, List, Optional, Tuple

import sdkit_slurm
from sdkit_files import (DEFAULT_ENV_FILE, HUB_TOKEN_FILE_KEY, STATE_DIR_KEY, USER_KEY, EnvFile, EnvFileError, count,
                         number, printable, read_json, read_limited, write_json_atomic, write_text_atomic)
from sdkit_slurm import SlurmError

RUNS_SUBDIR = "runs"  # under SOPHON_SD_STATE_DIR
RESUME_ARGS = ["--resume_from_checkpoint", "latest"]
# A resumed attempt continues the job's own output: starting over again would throw away its steps.
FIRST_ATTEMPT_ONLY = ("--overwrite_output_dir",)
MODES = ("per_chip", "data_parallel")
# systemd: the host runs its jobs itself (the default, no controller needed); slurm: they queue in
# the cluster of role sophon_slurm (sdkit_slurm.py).
SCHEDULERS = ("systemd", "slurm")
INTERRUPTED = 130  # the trainer's exit code after Ctrl-C or SIGTERM: it saved a checkpoint first
# Run ids and job names become folder names and reach playbooks and logs: no '/', no '..', no
# spaces, quotes or newlines, and short. Matched with fullmatch (a '$' would let "id\n" through).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Job names also end a unit name, sdkit-train-<run-id>-<job>: without '-' in them, no two
# (run id, job) pairs give the same unit.
JOB_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,63}")
UNIT_PREFIX = "sdkit-train"
# systemd's ActiveState values while the job's process may still run.
ACTIVE_STATES = ("active", "activating", "deactivating", "reloading")
# Time for the step in progress and a checkpoint after SIGTERM, before systemd kills the job.
STOP_TIMEOUT_S = 900
# How often `status --wait` looks while the jobs run: each look asks systemd, or slurmctld (squeue,
# scontrol) on behalf of every host of the fleet at once, so not every second; a run that ends is
# seen within this many seconds.
STATUS_PAUSE_S = 3.0
# --model and --dataset: a hub id (owner/name, or a download-share folder name) or an absolute path.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# What root writes into a unit file as a path: nothing that systemd would read as quoting, a specifier
# (%), a variable ($) or a new setting (newline).
UNIT_VALUE = re.compile(r"/[A-Za-z0-9/._+-]*")
# The job units' folder: files written here by root, from validated values only.
UNIT_DIR = "/etc/systemd/system"
SOURCE_FLAGS = {"model": "--pretrained_model_name_or_path", "dataset": "--dataset_name"}
# argparse accepts any unambiguous prefix of a flag (--hub_t, --hub_tok, ...); --hub_ alone is ambiguous.
HUB_TOKEN_FLAGS = tuple("--hub_token"[:n] for n in range(len("--hub_t"), len("--hub_token") + 1))
# How much of a job's files status reads: metrics.jsonl from its end (its last line is wanted), the
# start of train.log (where the step count is logged), and the small files (pid, exit_status).
METRICS_TAIL = 4096
LOG_HEAD = 1 << 18
SMALL_FILE = 64
# The trainer records the step count in run.json once it is known (it follows from
# --num_train_epochs and the dataset size); before that, and for trainers that do not, its log
# line at start-up is read.
TOTAL_STEPS_PATTERN = re.compile(rb"total optimization steps = (\d+)")


# torch gives each process one thread per CPU: N trainers on one host would keep N times as many
# threads busy as it has CPUs, and idle OpenMP threads spin while they wait for their share.
THREADS_KEY = "OMP_NUM_THREADS"


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

    @property
    def unit(self) -> str:
        return unit_name(self.dir)


def unit_name(job_dir: Path) -> str:
    """The systemd service of the job in ``<runs-dir>/<run-id>/<job>``: sdkit-train-<run-id>-<job>.service."""
    return f"{UNIT_PREFIX}-{job_dir.parent.name}-{job_dir.name}.service"


def job_name(device: str) -> str:
    """'tpu:1' -> 'tpu1': a folder name that says which chip the job had."""
    name = device.replace(":", "")
    if not JOB_NAME_PATTERN.fullmatch(name):
        raise JobError(f"device '{device}' (SOPHON_SD_DEVICES or --devices) does not give a usable job name: use "
                       "devices such as tpu:0,tpu:1 or cpu")
    return name


def check_run_id(run_id: str) -> None:
    if not NAME_PATTERN.fullmatch(run_id):
        raise JobError(f"run id {run_id!r} is not usable as a folder name: use {NAME_RULE}")


def check_source(what: str, value: str) -> None:
    """A model or dataset must name a hub id or an absolute path on the host, nothing else."""
    if CONTROL_CHARACTERS.search(value) or not (HUB_ID.fullmatch(value) or value.startswith("/")):
        raise JobError(f"--{what} {value!r} (make train {what.upper()}=...) is not usable: give a hub id such as "
                       f"owner/name, a download-share name, or an absolute path on the host, without control "
                       f"characters")


def with_sources(train_args: List[str], sources: Dict[str, Optional[str]]) -> List[str]:
    """The trainer's flags with --pretrained_model_name_or_path / --dataset_name set to the given model
    and dataset (replacing the tutorial's), checked first."""
    for what, value in sources.items():
        if value is None:
            continue
        check_source(what, value)
        flag = SOURCE_FLAGS[what]
        kept: List[str] = []
        args = iter(train_args)
        for arg in args:
            if arg == flag:
                next(args, None)
            elif not arg.startswith(flag + "="):
                kept.append(arg)
        train_args = kept + [f"{flag}={value}"]
    return train_args


def check_train_args(train_args: List[str]) -> None:
    for arg in train_args:
        if arg.partition("=")[0] in HUB_TOKEN_FLAGS:
            raise JobError(f"--hub_token in the trainer's flags (TRAIN_ARGS) would be in every process list: take "
                           f"it out, and give the token to the role sophon_host_env as sophon_host_env_hub_token "
                           f"(it writes the file the env file names as {HUB_TOKEN_FILE_KEY})")
        if CONTROL_CHARACTERS.search(arg):
            raise JobError(f"trainer flag {printable(arg)!r} (TRAIN_ARGS) contains a control character: "
                           "give each flag on one line, without tabs or escapes")


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


def cpu_share(processes: int) -> int:
    """Threads for each of PROCESSES trainer processes on this host: an equal share of the CPUs this
    tool may use, at least one."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, processes))


def share_cpus(jobs: List[Job], processes: int, threads: Optional[int], env_file: EnvFile) -> int:
    """Give every job's processes THREADS threads (--cpu-threads), else the env file's OMP_NUM_THREADS
    (an operator's setting for the host, which the unit already has), else an equal share of the CPUs.
    Returns the threads each process gets: what a Slurm task asks for as its CPUs."""
    if threads is None and env_file.get(THREADS_KEY):
        value = env_file.get(THREADS_KEY)
        if not value.isdigit() or int(value) < 1:
            raise JobError(f"{THREADS_KEY}={value} in {env_file.path} is not a whole number of at least 1: "
                           "fix it in sophon_host_env_extra_env and rerun the role, or pass THREADS=n")
        return int(value)
    threads = threads or cpu_share(processes)
    for job in jobs:
        job.env[THREADS_KEY] = str(threads)
    return threads


# --------------------------------------------------------------------------- the runner user


def runner_user(args: argparse.Namespace) -> str:
    """--user, else the env file's SOPHON_SD_USER: the name the inventory chose (sophon_sd_user), which
    no constant here could know."""
    if args.user is not None:
        return args.user
    return EnvFile.read(args.env_file).require(USER_KEY)


def runner_account(user: Optional[str]) -> Optional[pwd.struct_passwd]:
    """The account to work as: None means "as I am" (already that user, or no user asked for)."""
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
        raise JobError(f"only root or '{user}' itself can manage jobs as '{user}'; run with sudo or pass --user")
    return account


def become(account: pwd.struct_passwd) -> None:
    """Drop root for good: the runner's groups, group and user (in that order: setuid comes last)."""
    os.initgroups(account.pw_name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    os.umask(0o022)


def as_user(account: Optional[pwd.struct_passwd], work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` run by a child that has become ``account`` (in this process when None).

    Root keeps its privileges for systemd and hands every file of the runs folder to the child, so a
    link planted there is only ever followed with the runner user's rights. The result (JSON) and a
    JobError's message come back through a pipe.
    """
    if account is None:
        return work(*args)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            try:
                become(account)
                answer = {"result": work(*args)}
            except JobError as exc:
                answer = {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    try:
        answer = json.loads(text)
    except ValueError:
        raise JobError(f"the child working as '{account.pw_name}' died without an answer") from None
    if "error" in answer:
        raise JobError(answer["error"])
    return answer["result"]


# --------------------------------------------------------------------------- systemd


def systemd(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise JobError(f"{args[0]} not found: jobs run as systemd services, so this host needs systemd "
                       "running as its init") from None


def unit_states(units: List[str]) -> Dict[str, Dict[str, str]]:
    """ActiveState, Result, ExecMainCode and ExecMainStatus of each unit (unknown units are inactive)."""
    if not units:
        return {}
    result = systemd("systemctl", "show", "--property=Id,ActiveState,Result,ExecMainCode,ExecMainStatus",
                     "--", *units)
    if result.returncode != 0:
        raise JobError(f"systemctl show failed: {' '.join(result.stderr.split())}")
    states = {}
    for block in result.stdout.strip().split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        states[values.get("Id", "")] = values
    return {unit: states.get(unit, {"ActiveState": "inactive"}) for unit in units}


def unit_value(what: str, value: str) -> str:
    """A path as root writes it into a unit file: only characters that systemd takes literally (no spaces,
    quotes, '%' specifiers, '$' or newlines, which would add settings of their own)."""
    if not UNIT_VALUE.fullmatch(value):
        raise JobError(f"{what} {value!r} cannot go into a systemd unit: use an absolute path of letters, digits, "
                       "'/', '.', '_', '+' or '-'")
    return value


def unit_text(job: Job, account: Optional[pwd.struct_passwd], env_file: str, stop_timeout: int) -> str:
    """The job's service: ``supervise`` of its folder as the runner user, enabled for boot, so that a job
    that a reboot cut short comes back by itself and resumes from its latest checkpoint (supervise adds
    the resumed attempt). A unit of systemd-run would be transient: gone after the reboot."""
    lines = ["[Unit]", f"Description=sophon-sd-kit training job {unit_value('job folder', str(job.dir))}",
             # sshd waits for the job to be started: once a host answers again after a reboot, the playbook's
             # poll sees the job running, not ended.
             "Before=ssh.service sshd.service",
             "", "[Service]", "Type=exec", f"EnvironmentFile={unit_value('--env-file', env_file)}",
             # SIGTERM to the supervisor only, which passes it to the trainer once (a second one aborts).
             "KillMode=mixed", "KillSignal=SIGTERM", f"TimeoutStopSec={int(stop_timeout)}",
             f"SuccessExitStatus={INTERRUPTED}"]
    if account:
        lines += [f"User={account.pw_name}", f"Group={grp.getgrgid(account.pw_gid).gr_name}"]
    tool = [unit_value("python", sys.executable), unit_value("job tool", str(Path(__file__).resolve()))]
    lines += [f"ExecStart={' '.join(tool)} supervise --job-dir {job.dir}", "", "[Install]",
              "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def write_unit(unit_dir: Path, unit: str, text: str) -> None:
    """Root writes the unit file in systemd's root-owned folder, atomically (a new file renamed over the old)."""
    path = unit_dir / unit
    temporary = unit_dir / f".{unit}.{os.getpid()}"
    temporary.unlink(missing_ok=True)  # left by an earlier process of the same pid that died mid-write
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def launch_unit(job: Job, account: Optional[pwd.struct_passwd], env_file: str, stop_timeout: int,
                unit_dir: Path) -> None:
    """Write the job's unit, enable it for boot and start it."""
    write_unit(unit_dir, job.unit, unit_text(job, account, env_file, stop_timeout))
    systemd("systemctl", "reset-failed", "--", job.unit)  # the previous attempt's failed unit, if any
    for command in (["daemon-reload"], ["enable", "--now", "--", job.unit]):
        result = systemd("systemctl", *command)
        if result.returncode != 0:
            raise JobError(f"job {job.name} did not start: systemctl {command[0]}: {' '.join(result.stderr.split())}; "
                           f"see journalctl -u {job.unit}")


def disable_units(units: List[str]) -> None:
    """Keep the units of stopped or finished jobs from starting at boot (start enables them again)."""
    if units:
        result = systemd("systemctl", "disable", "--", *units)
        if result.returncode != 0:
            raise JobError(f"systemctl disable failed: {' '.join(result.stderr.split())}")


# --------------------------------------------------------------------------- state on disk


def process_start_ticks(pid: int) -> Optional[int]:
    """The start time of a live process (field 22 of /proc/PID/stat), None when it is gone."""
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
    for line in reversed((read_limited(path, METRICS_TAIL, tail=True) or b"").splitlines()):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a RecursionError: a line of thousands of "[", the runner user's
            continue  # the first line of the window may be cut, the last one half-written
        return record if isinstance(record, dict) else None
    return None


def total_steps(log: Path) -> Optional[int]:
    found = TOTAL_STEPS_PATTERN.search(read_limited(log, LOG_HEAD) or b"")
    return int(found.group(1)) if found else None


def read_small_int(path: Path) -> Optional[int]:
    """The whole number in a file of a few bytes (pid, exit_status); None when absent or not a number."""
    text = (read_limited(path, SMALL_FILE) or b"").strip()
    return int(text) if re.fullmatch(rb"-?[0-9]{1,12}", text) else None




def latest_checkpoint(output_dir: Path) -> Optional[str]:
    steps = [int(p.name[11:]) for p in output_dir.glob("checkpoint-*") if p.name[11:].isdigit()]
    return f"checkpoint-{max(steps)}" if steps else None


def read_pid(job_dir: Path) -> Optional[int]:
    return read_small_int(job_dir / "pid")


def systemd_live(unit: Dict[str, str]) -> dict:
    """A unit's state as job_status reads it: running, or gone (with the signal that killed it, if any)."""
    if unit.get("ActiveState") in ACTIVE_STATES:
        return {"state": "running"}
    killed = unit.get("ActiveState") == "failed" and unit.get("ExecMainCode") in ("2", "3")  # CLD_KILLED, CLD_DUMPED
    return {"state": "gone", "signal": int(unit.get("ExecMainStatus") or 0) if killed else None}


def slurm_live(records: Dict[Path, dict], given: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None
               ) -> Dict[Path, dict]:
    """Each Slurm job's state in the queue: queued (with Slurm's reason), running, or gone (ended).
    ``given``: the queue of these names as the playbook's one squeue of the round found it."""
    queues: Dict[str, Dict[str, Dict[str, str]]] = dict(given or {})
    live = {}
    for job_dir, record in records.items():
        name = record["slurm_name"]
        if name not in queues:
            queues[name] = sdkit_slurm.queue(name)
        entry = queues[name].get(slurm_job_of(job_dir), {})
        state = entry.get("state", "")
        live[job_dir] = ({"state": "queued", "reason": entry["reason"]} if state in sdkit_slurm.QUEUED_STATES
                         else {"state": "running"} if state in sdkit_slurm.RUNNING_STATES else {"state": "gone"})
    return live


def live_states(job_dirs: List[Path], slurm_queue: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None
                ) -> Dict[Path, dict]:
    """What each job's scheduler says of it (systemd's unit, or Slurm's queue), asked once per run."""
    records = {d: read_json(d / "job.json") or {} for d in job_dirs}
    queued = {d: r for d, r in records.items()
              if r.get("scheduler") == "slurm" and r.get("attempts") and isinstance(r.get("slurm_name"), str)}
    units = unit_states([unit_name(d) for d in job_dirs if d not in queued])
    live = {d: systemd_live(units[unit_name(d)]) for d in job_dirs if d not in queued}
    try:
        live.update(slurm_live(queued, slurm_queue))
    except SlurmError as exc:
        raise JobError(str(exc)) from None
    return live


def job_status(job_dir: Path, live: Optional[dict] = None) -> dict:
    """What one job is doing: state, step, total steps, last loss, elapsed seconds of this attempt.

    States: absent (never started), queued (waiting in Slurm's queue), running (its unit is active,
    or Slurm runs it), finished (exit 0), stopped (interrupted, a checkpoint was saved; or cancelled
    while queued), failed (any other exit, or the job ended without the supervisor recording one,
    as after a reboot or a kill of the whole unit). ``live`` is the scheduler's word on the job
    (live_states; asked for here when not given).
    """
    job = read_json(job_dir / "job.json")
    status = {"job": job_dir.name, "dir": str(job_dir), "output_dir": str(job_dir / "output"),
              "log": str(job_dir / "train.log"), "unit": unit_name(job_dir), "state": "absent", "step": None,
              "total_steps": None, "loss": None, "elapsed_s": None, "exit_status": None, "attempts": 0,
              "checkpoint": None}
    attempts = job.get("attempts") if job else None
    if not isinstance(attempts, list) or not attempts or not isinstance(attempts[-1], dict):
        return status
    attempt = attempts[-1]
    live = live or live_states([job_dir])[job_dir]
    status.update(device=attempt.get("device", job.get("device")), attempts=len(job["attempts"]),
                  pid=read_pid(job_dir), scheduler=job.get("scheduler", "systemd"))
    if status["scheduler"] == "slurm" and isinstance(job.get("slurm_name"), str):
        status["slurm_name"] = printable(job["slurm_name"])  # the playbook's one squeue of a round asks for it
    if status["scheduler"] == "slurm":
        status["unit"] = f"slurm job {slurm_job_of(job_dir)}"
    exit_file = job_dir / "exit_status"
    ended_at = None
    # The supervisor's pid, where the scheduler may no longer know the job while it still runs: a Slurm
    # task winding down after scancel, or a job the kit started before its jobs were systemd units.
    supervisor_running = alive(count(attempt.get("supervisor_pid")), count(attempt.get("supervisor_ticks")))
    if live["state"] in ("running", "queued") or supervisor_running:
        status["state"] = "running" if supervisor_running else live["state"]
        status["reason"] = live.get("reason")
    elif exit_file.is_file():
        code = read_small_int(exit_file)
        code = 1 if code is None else code  # empty or garbled: the supervisor did not finish writing it
        ended_at = exit_file.stat().st_mtime
        status["exit_status"] = code
        status["state"] = "finished" if code == 0 else "stopped" if code == INTERRUPTED else "failed"
    elif status["scheduler"] == "slurm" and "ran_at" not in attempt:
        status["state"] = "stopped"  # cancelled before it ever ran: nothing lost
    else:
        status["state"] = "failed"  # gone without a word: the whole unit killed, or a reboot
        if live.get("signal"):
            status["exit_status"] = -live["signal"]
    metrics = last_metrics(job_dir / "output" / "metrics.jsonl")
    if metrics:  # the trainer's to write, the runner user's to forge: of the wrong type, unknown
        status.update(step=count(metrics.get("step")), loss=number(metrics.get("loss")))
    run = read_json(job_dir / "output" / "run.json") or {}
    status["total_steps"] = count(run.get("total_steps")) or total_steps(job_dir / "train.log")
    status["checkpoint"] = latest_checkpoint(job_dir / "output")
    started = number(attempt.get("ran_at")) or number(attempt.get("started"))
    status["elapsed_s"] = round((ended_at or time.time()) - started, 1) if started else None
    return status


def describe(status: dict) -> str:
    """One line per job for people: what the playbook prints at each poll.

    The job's name is a folder name the runner user chose and the numbers come from its files:
    the line is made printable, and a number of the wrong type shows as '?'."""
    parts = [f"{status['job']}: {status['state']}"]
    if status["state"] == "queued":
        return printable(f"{parts[0]} in Slurm ({status.get('reason') or 'waiting'}), {status['unit']}")
    if status["state"] != "absent":
        step, total = count(status.get("step")), count(status.get("total_steps"))
        parts.append(f"step {'?' if step is None else step}/{total or '?'}")
        loss, elapsed = number(status.get("loss")), number(status.get("elapsed_s"))
        attempts = count(status.get("attempts"))
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts.append(f"{elapsed:.0f} s" if elapsed is not None else "? s")
        if attempts and attempts > 1:
            parts.append(f"attempt {attempts}")
        if status["state"] in ("failed", "stopped"):
            parts.append(f"exit {status['exit_status']}, log {status['log']}"
                         if status["exit_status"] is not None else f"no exit status recorded, log {status['log']}")
    return printable(", ".join(parts))


def run_job_dirs(run_dir: Path) -> List[Path]:
    """The folders of a run's jobs: those with a job.json and a name this tool gives a job (another
    name, such as one holding escape sequences, was not made by it and is no job of the run)."""
    if not run_dir.is_dir():
        return []
    return [d for d in sorted(run_dir.iterdir()) if JOB_NAME_PATTERN.fullmatch(d.name) and (d / "job.json").is_file()]


def run_status(run_dir: Path, slurm_queue: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None) -> dict:
    """All jobs of a run, and the run's state: running while any job runs or waits, else the worst outcome."""
    job_dirs = run_job_dirs(run_dir)
    live = live_states(job_dirs, slurm_queue)
    jobs = [job_status(d, live[d]) for d in job_dirs]
    states = {j["state"] for j in jobs}
    # A queued job counts as running: it will run, and polling must go on.
    state = "running" if "queued" in states else next(
        (s for s in ("running", "failed", "stopped", "finished") if s in states), "absent")
    return {"run_id": run_dir.name, "run_dir": str(run_dir), "state": state, "jobs": jobs,
            "lines": [describe(j) for j in jobs] or [printable(f"{run_dir.name}: no jobs on this host")]}


# --------------------------------------------------------------------------- start, as the runner user


def prepare_run(run_dir: Path, jobs: List[Job], scheduler: Optional[Dict[str, str]] = None) -> List[dict]:
    """Record a new attempt of each job that must (re)start; say what happens to each (runner user).

    ``scheduler``: what a new job's record keeps of its scheduler (default: a systemd unit)."""
    scheduler = scheduler or {"scheduler": "systemd"}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create {run_dir} as {pwd.getpwuid(os.geteuid()).pw_name} ({exc.strerror}): its runs "
                       "folder must exist and belong to that user; rerun the kit's site.yml "
                       "(role sophon_host_env)") from None
    planned = {j.name for j in jobs}
    existing = {d.name for d in run_dir.iterdir() if (d / "job.json").is_file()}
    for name in sorted(existing):
        used = (read_json(run_dir / name / "job.json") or {}).get("scheduler", "systemd")
        if used != scheduler["scheduler"]:
            raise JobError(f"run '{run_dir.name}' was started with SCHEDULER={used}, not {scheduler['scheduler']}: "
                           "rerun it with that scheduler, or choose a new run id")
    if existing and existing != planned:
        raise JobError(f"run '{run_dir.name}' has jobs {', '.join(sorted(existing))}, but these settings make "
                       f"{', '.join(sorted(planned))} (another mode or other chips); choose a new run id")
    records = {}
    for job in jobs:
        record = read_json(job.dir / "job.json") or {"job": job.name, "device": job.device, "argv": job.argv,
                                                    "env": job.env, "attempts": [], **scheduler}
        if record["argv"] != job.argv:
            raise JobError(f"job {job.name} of this run was started with another command:\n  "
                           f"{shlex.join(record['argv'])}\nnot\n  {shlex.join(job.argv)}\nchoose a new run id, "
                           "or rerun with the same settings to resume")
        records[job.name] = record
    plans = []
    for job in jobs:
        record = records[job.name]
        current = job_status(job.dir)
        if current["state"] in ("queued", "running", "finished"):
            plans.append({"job": job.name, "launch": False, "action": f"already {current['state']}"})
            continue
        resuming = bool(record["attempts"])
        job.dir.mkdir(exist_ok=True)
        (job.dir / "exit_status").unlink(missing_ok=True)  # the previous attempt's
        attempt = {"started": time.time(), "argv": attempt_argv(job.argv, resuming)}
        if record.get("scheduler", "systemd") == "systemd":
            attempt["unit"] = job.unit
        record["attempts"].append(attempt)
        # Atomic: a status poll must never read half a file.
        write_json_atomic(job.dir / "job.json", record)
        action = (f"resumed from {current['checkpoint'] or 'the start (no checkpoint yet)'}" if resuming
                  else "started")
        plans.append({"job": job.name, "launch": True, "action": action})
    return plans


def jobs_status(jobs: List[Job]) -> List[dict]:
    live = live_states([job.dir for job in jobs])
    return [job_status(job.dir, live[job.dir]) for job in jobs]


# --------------------------------------------------------------------------- the unit's process


def supervise(job_dir: Path, forward_sigterm: bool = True) -> int:
    """What the unit runs, as the runner user: the trainer with the log as its output, then its exit status.

    systemd sends SIGTERM here only (KillMode=mixed); it goes on to the trainer once, which saves a
    checkpoint and exits 130, and this process lives to record that, not die first and leave a
    "failed" job. The trainer's exit code becomes the unit's (a signal N as 128+N), so that
    ``systemctl status`` shows a failure too; 130 counts as success (SuccessExitStatus).

    Under Slurm (``forward_sigterm`` false) every process of the task gets Slurm's SIGTERM itself,
    the trainer included: passing it on would be the second one, which aborts the trainer.
    """
    os.umask(0o022)
    os.chdir(job_dir)
    record = read_json(job_dir / "job.json")
    if not record or not record.get("attempts"):
        print(f"error: {job_dir / 'job.json'} has no attempt to run", file=sys.stderr)
        return 2
    attempt = record["attempts"][-1]
    argv = attempt["argv"]
    env = {**os.environ, **record.get("env", {}), **attempt.get("env", {}), "PYTHONUNBUFFERED": "1"}
    log = os.open(job_dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    trainer: List[subprocess.Popen] = []
    asked_to_stop: List[int] = []

    def pass_on(signum: int, _frame: Any) -> None:
        if not asked_to_stop:
            asked_to_stop.append(signum)
            if trainer and forward_sigterm:
                trainer[0].send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, pass_on)
    code = 1
    try:
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job_dir.name}: {shlex.join(argv)}", flush=True)
        try:
            trainer.append(subprocess.Popen(argv, env=env))
        except OSError as exc:
            print(f"=== cannot run {argv[0]}: {exc}", flush=True)
            return 1
        if asked_to_stop:  # SIGTERM came while the trainer was starting: it may have missed it
            trainer[0].send_signal(signal.SIGTERM)
        write_text_atomic(job_dir / "pid", f"{trainer[0].pid}\n")
        code = trainer[0].wait()
        print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job_dir.name}: exit status {code}", flush=True)
    finally:
        write_text_atomic(job_dir / "exit_status", f"{code}\n")
    return code if code >= 0 else 128 - code


# --------------------------------------------------------------------------- Slurm


SLURM_JOB_FILE = "slurm_job"  # the job's id in Slurm's queue (123_0 for task 0 of array 123)


def plan_slurm_jobs(run_dir: Path, mode: str, devices: List[str], chips: int, python: str, trainer: str,
                    train_args: List[str]) -> Tuple[List[Job], int]:
    """The jobs of a run under Slurm, and how many chips each asks for.

    per_chip: one array task per chip Slurm counts on this node (task0, task1, ...); which chip a
    task gets is Slurm's choice, made when it starts (slurm-task). data_parallel: one job over all
    of them, planned as plan_jobs does. On a host without a Sophgo runtime the tasks train on its
    CPU (or SOPHON_SD_DEVICES' kind of device) while Slurm still counts out chips.
    """
    kind = devices[0].partition(":")[0] if devices else "cpu"
    if mode == "data_parallel":
        return plan_jobs(run_dir, mode, [f"{kind}:{i}" for i in range(chips)] if kind == "tpu" else [kind],
                         python, trainer, train_args), chips
    return [Job(f"task{i}", kind, [python, trainer, *train_args, "--output_dir", str(run_dir / f"task{i}" / "output")],
                {"ACCELERATE_TORCH_DEVICE": kind}, run_dir / f"task{i}") for i in range(chips)], 1


def submit_to_slurm(run_dir: Path, jobs: List[Job], chips_per_job: int, threads: int, name: str, node: str,
                    gres: str, env_file: str, site: List[str]) -> None:
    """One sbatch for the jobs to (re)start: an array of the per-chip tasks, or the data-parallel job.
    Each task asks for the CPUs its processes' threads use, so that Slurm's accounting (and cgroup's
    ConstrainCores, where a site turns it on) matches what the trainers run."""
    task = [sys.executable, str(Path(__file__).resolve()), "slurm-task", "--run-dir", str(run_dir),
            "--env-file", env_file, "--gres", gres]
    per_chip = all(job.name.startswith("task") for job in jobs)
    if per_chip:
        argv = sdkit_slurm.submit_argv(name=name, node=node, gres=gres, chips_per_task=1, cpus_per_task=threads,
                                       array=[int(job.name[len("task"):]) for job in jobs],
                                       output=f"{run_dir}/task%a/slurm.log", command=shlex.join(task), site=site)
    else:
        [job] = jobs
        argv = sdkit_slurm.submit_argv(name=name, node=node, gres=gres, chips_per_task=chips_per_job,
                                       cpus_per_task=threads * chips_per_job, array=None,
                                       output=f"{job.dir}/slurm.log", command=shlex.join(task + ["--job", job.name]),
                                       site=site)
    job_id = sdkit_slurm.submit(argv)
    for job in jobs:
        write_text_atomic(job.dir / SLURM_JOB_FILE, f"{job_id}_{job.name[len('task'):]}\n" if per_chip else f"{job_id}\n")


def slurm_job_of(job_dir: Path) -> str:
    return (read_limited(job_dir / SLURM_JOB_FILE, SMALL_FILE) or b"").decode(errors="replace").strip()


def start_in_slurm(args: argparse.Namespace, env_file: EnvFile, run_dir: Path, devices: List[str], python: str,
                   train_args: List[str]) -> Tuple[List[Job], List[dict]]:
    """Queue the run's jobs that must (re)start, as the runner user (whom Slurm then runs them as)."""
    site = sdkit_slurm.site_args(args.slurm_args)
    node = sdkit_slurm.node_name()
    chips = sdkit_slurm.node_chips(node, args.slurm_gres)
    if chips < 1:
        raise JobError(f"Slurm counts no '{args.slurm_gres}' chips on node {node} (scontrol show node {node}): "
                       "check its Gres= in slurm.conf (role sophon_slurm, from the host's chip fact)")
    jobs, chips_per_job = plan_slurm_jobs(run_dir, args.mode, devices, chips, python, args.trainer, train_args)
    threads = share_cpus(jobs, chips, args.cpu_threads, env_file)
    name = sdkit_slurm.job_name(run_dir.name, node)
    plans = prepare_run(run_dir, jobs, {"scheduler": "slurm", "slurm_name": name})
    queued = [job for job, plan in zip(jobs, plans) if plan["launch"]]
    if queued:
        submit_to_slurm(run_dir, queued, chips_per_job, threads, name, node, args.slurm_gres,
                        str(Path(args.env_file).resolve()), site)
    return jobs, plans


def cmd_slurm_task(args: argparse.Namespace) -> int:
    """What a Slurm task runs, as the runner user: the env file, the chip Slurm gave it, then supervise."""
    run_dir = Path(args.run_dir)
    job_dir = run_dir / (args.job or f"task{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    record = read_json(job_dir / "job.json")
    if not record or not record.get("attempts"):
        raise JobError(f"{job_dir / 'job.json'} has no attempt to run")
    # As systemd's EnvironmentFile= gives a unit the env file (sbatch --export=NIL gave nothing).
    os.environ.update(EnvFile.read(args.env_file).values)
    account = pwd.getpwuid(os.getuid())
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    now = time.time()
    attempt = record["attempts"][-1]
    if "ran_at" in attempt:  # Slurm queued it again (its node failed, or it was requeued): resume
        attempt = {"started": now, "argv": attempt_argv(record["argv"], resuming=True)}
        record["attempts"].append(attempt)
    # Slurm drops a cancelled task from its queue at once, while the trainer still saves its checkpoint:
    # the job runs as long as this process does.
    attempt.update(ran_at=now, slurm_job=slurm_job_of(job_dir), supervisor_pid=os.getpid(),
                   supervisor_ticks=process_start_ticks(os.getpid()))
    (job_dir / "exit_status").unlink(missing_ok=True)
    try:
        chips = sdkit_slurm.job_chips(sdkit_slurm.this_task(), args.gres)
    except (SlurmError, KeyError) as exc:
        write_json_atomic(job_dir / "job.json", record)
        write_text_atomic(job_dir / "exit_status", "2\n")
        raise JobError(f"cannot tell which chip Slurm gave this task: {exc}") from None
    device = record["device"]
    if device == "tpu" and args.job is None:
        device = f"tpu:{chips[0]}"  # tpu:N is chip N as bm-smi numbers it, as gres.conf's File= does
    attempt.update(device=device, chips=chips, env={"ACCELERATE_TORCH_DEVICE": device})
    write_json_atomic(job_dir / "job.json", record)
    return supervise(job_dir, forward_sigterm=False)


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
    check_train_args(train_args)
    train_args = with_sources(train_args, {"model": args.model, "dataset": args.dataset})
    if "--output_dir" in train_args or any(a.startswith("--output_dir=") for a in train_args):
        raise JobError("--output_dir is chosen per job (<runs-dir>/<run-id>/<job>/output); leave it out")
    run_dir = run_dir_of(args)
    account = runner_account(runner_user(args))
    if args.scheduler == "slurm":
        if account:
            become(account)  # Slurm runs a task as whoever queued it: the runner user, never root
        try:
            jobs, plans = start_in_slurm(args, env_file, run_dir, devices, python, train_args)
        except SlurmError as exc:
            raise JobError(str(exc)) from None
        statuses = jobs_status(jobs)
    else:
        jobs = plan_jobs(run_dir, args.mode, devices, python, args.trainer, train_args)
        share_cpus(jobs, max(1, len(devices)), args.cpu_threads, env_file)
        plans = as_user(account, prepare_run, run_dir, jobs)
        for job, plan in zip(jobs, plans):
            if plan["launch"]:
                launch_unit(job, account, str(Path(args.env_file).resolve()), args.stop_timeout, Path(args.unit_dir))
        disable_units([job.unit for job, plan in zip(jobs, plans) if plan["action"] == "already finished"])
        statuses = as_user(account, jobs_status, jobs)
    results = [{"job": plan["job"], "action": plan["action"], "status": status}
               for plan, status in zip(plans, statuses)]
    lines = [f"{result['job']}: {result['action']}" for result in results]
    print(json.dumps({"run_id": args.run_id, "jobs": results, "lines": lines}, sort_keys=True) if args.json
          else "\n".join(lines))
    return 0


def given_queue(names: str, lines: List[str]) -> Optional[Dict[str, Dict[str, Dict[str, str]]]]:
    """--slurm-queue-names and --slurm-queue: each named job's tasks from the playbook's squeue lines
    (name|id|state|reason[|user]); a name without lines has none left in the queue."""
    if not names:
        return None
    queue: Dict[str, Dict[str, Dict[str, str]]] = {name: {} for name in names.split(",") if name}
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) >= 4 and fields[0] in queue:
            queue[fields[0]][fields[1]] = {"state": fields[2], "reason": fields[3]}
    return queue


def wait_while_running(run_dir: Path, seconds: float, pause: float,
                       slurm_queue: Optional[Dict[str, Dict[str, Dict[str, str]]]] = None) -> dict:
    deadline = time.monotonic() + seconds
    status = run_status(run_dir, slurm_queue)
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        status = run_status(run_dir)
    return status


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    account = runner_account(runner_user(args))
    if account:
        become(account)  # status needs no root at all: systemctl show works for anyone
    # --wait lets one poll cover a stretch of time, so that a playbook printing each poll
    # prints a line every --wait seconds rather than every second.
    # The queue as the playbook's one squeue of the round saw it stands for the first look only.
    queue = given_queue(args.slurm_queue_names, args.slurm_queue)
    status = wait_while_running(run_dir, args.wait, STATUS_PAUSE_S, queue)
    print(json.dumps(status, sort_keys=True) if args.json else "\n".join(status["lines"]))
    return 0


def run_units(run_id: str) -> List[str]:
    """The loaded units of a run's jobs (sdkit-train-<run-id>-<job>.service, job without '-')."""
    result = systemd("systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=service",
                     f"{UNIT_PREFIX}-{run_id}-*")
    prefix = f"{UNIT_PREFIX}-{run_id}-"
    names = [line.split()[0] for line in result.stdout.splitlines() if line.split()]
    return [n for n in names if n.startswith(prefix) and JOB_NAME_PATTERN.fullmatch(n[len(prefix):-len(".service")])]


def cmd_stop(args: argparse.Namespace) -> int:
    """``systemctl stop`` of the run's units, or scancel of its Slurm jobs: the trainer saves a checkpoint at
    the next step and exits 130."""
    run_dir = run_dir_of(args)
    account = runner_account(runner_user(args))
    units = run_units(args.run_id)
    if units:
        disable_units(units)  # a cancelled job stays stopped through a reboot
        result = systemd("systemctl", "stop", "--no-block", "--", *units)
        if result.returncode != 0:
            raise JobError(f"systemctl stop failed: {' '.join(result.stderr.split())}")
        for unit in units:
            print(f"{unit}: asked to stop (systemctl stop: SIGTERM, then a checkpoint)")
    if account:
        become(account)
    job_dirs = run_job_dirs(run_dir)
    for name in sorted({(read_json(d / "job.json") or {}).get("slurm_name") for d in job_dirs} - {None}):
        try:
            sdkit_slurm.cancel(name)
        except SlurmError as exc:
            raise JobError(str(exc)) from None
        print(f"{name}: cancelled in Slurm (running tasks get SIGTERM, then save a checkpoint)")
    status = wait_while_running(run_dir, args.wait, 0.5)
    print("\n".join(status["lines"]))
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    """What a job's unit runs. A unit that starts again after its attempt ran was started by the boot, not
    by ``start``: it adds a resumed attempt (``--resume_from_checkpoint latest``), or does nothing for a
    job that had finished."""
    job_dir = Path(args.job_dir)
    record = read_json(job_dir / "job.json")
    if record and isinstance(record.get("attempts"), list) and record["attempts"]:
        attempt = record["attempts"][-1]
        if isinstance(attempt, dict) and "ran_at" in attempt:
            if read_small_int(job_dir / "exit_status") == 0:
                return 0
            attempt = {"started": time.time(), "argv": attempt_argv(record["argv"], resuming=True),
                       "unit": unit_name(job_dir)}
            record["attempts"].append(attempt)
        if isinstance(attempt, dict):
            attempt["ran_at"] = time.time()
            write_json_atomic(job_dir / "job.json", record)
    return supervise(job_dir)


def thread_count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (make train THREADS=...), not '{value}'")
    return int(value)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start, watch and stop LoRA training jobs on this host as systemd services of the runner user "
                    "(used by playbooks/train.yml). State lives in <runs-dir>/<run-id>/<job>/: job.json, pid, "
                    "train.log, exit_status, output/; the unit is sdkit-train-<run-id>-<job>.service.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-id", required=True,
                        help=f"Name of the run ({NAME_RULE}); the same id resumes or watches that run.")
    common.add_argument("--runs-dir", default=None,
                        help=f"Where runs keep their state (default: {STATE_DIR_KEY}/{RUNS_SUBDIR} from the env file).")
    common.add_argument("--env-file", default=DEFAULT_ENV_FILE,
                        help=f"The kit's environment file (role sophon_host_env), for {STATE_DIR_KEY} and, when "
                             f"starting, SOPHON_SD_DEVICES, SOPHON_SD_VENV and the jobs' EnvironmentFile= "
                             f"(default {DEFAULT_ENV_FILE}).")
    common.add_argument("--user", default=None,
                        help=f"The runner user: the jobs run as it, and when run by root this tool works on the "
                             f"runs folder only as it (default: {USER_KEY} from the env file, the inventory's "
                             f"sophon_sd_user; empty: as I am).")
    common.add_argument("--json", action="store_true", help="Print JSON (for Ansible) instead of one line per job.")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser(
        "start", parents=[common],
        help="Start the run's jobs; leave running or finished ones alone; resume dead or stopped ones "
             "with --resume_from_checkpoint latest.",
        description="Everything after -- goes to the trainer (train_lora.py flags), except --output_dir, "
                    "which is <runs-dir>/<run-id>/<job>/output, and --hub_token, which would be in every process "
                    f"list: the trainer reads the token from the file the env file names as {HUB_TOKEN_FILE_KEY}.")
    start.add_argument("--mode", default="per_chip", choices=MODES,
                       help="per_chip: one independent training per chip; data_parallel: one accelerate launch "
                            "over all chips. A host without chips has one CPU job either way.")
    start.add_argument("--devices", default=None,
                       help="Comma-separated devices instead of SOPHON_SD_DEVICES (empty: the CPU).")
    start.add_argument("--model", default=None,
                       help="The base model (hub id, download-share name or absolute path): replaces the "
                            f"trainer's {SOURCE_FLAGS['model']}.")
    start.add_argument("--dataset", default=None,
                       help="The dataset (hub id, download-share name or absolute path): replaces the "
                            f"trainer's {SOURCE_FLAGS['dataset']}.")
    start.add_argument("--python", default=None, help="Python for the trainer (default: SOPHON_SD_VENV's).")
    start.add_argument("--trainer", default=str(Path(__file__).resolve().with_name("train_lora.py")),
                       help="The training script (default: train_lora.py next to this file).")
    start.add_argument("--stop-timeout", type=int, default=STOP_TIMEOUT_S,
                       help="Seconds systemd gives a stopped job to save its checkpoint before killing it "
                            f"(TimeoutStopSec, default {STOP_TIMEOUT_S}).")
    start.add_argument("--scheduler", default="systemd", choices=SCHEDULERS,
                       help="systemd: the jobs run here as systemd services (no controller needed); slurm: they "
                            "queue in the Slurm cluster (role sophon_slurm), one array task per chip, pinned to "
                            "this host, which keeps their checkpoints.")
    start.add_argument("--unit-dir", default=UNIT_DIR,
                       help=f"Where the jobs' units are written, enabled for boot (default {UNIT_DIR}).")
    start.add_argument("--slurm-gres", default="tpu",
                       help="The generic resource that the cluster's slurm.conf names the chips by (default tpu).")
    start.add_argument("--slurm-args", default="",
                       help="The site's sbatch options for every task (SLURM_ARGS), from a fixed list: "
                            f"{', '.join(sdkit_slurm.SITE_OPTIONS)}, each as --name=value.")
    start.add_argument("--cpu-threads", type=thread_count, default=None,
                       help=f"Threads for each trainer process ({THREADS_KEY}). Default: the env file's "
                            f"{THREADS_KEY}, else this host's CPUs shared equally among the run's processes "
                            "(one per chip), so that jobs side by side do not oversubscribe the CPUs.")
    start.add_argument("--extra-args", default="",
                       help="More trainer flags as one shell-quoted string, after those following --; "
                            "a flag given twice takes the last value.")
    start.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the trainer's flags.")
    start.set_defaults(func=cmd_start)

    status = commands.add_parser("status", parents=[common],
                                 help="Each job's state, step/total, last loss and elapsed time.")
    status.add_argument("--wait", type=float, default=0,
                        help="Wait up to this many seconds, or until no job is running, before answering.")
    status.add_argument("--slurm-queue-names", default="",
                        help="Comma-separated Slurm job names (sdkit-train-<run-id>.<node>) whose queue --slurm-queue "
                             "gives, so that this host runs no squeue of its own: train.yml asks the controller once "
                             "a round for the whole run.")
    status.add_argument("--slurm-queue", action="append", default=[],
                        help="One squeue line name|id|state|reason[|user] of those names, once per line (a name "
                             "without lines has no task left in the queue).")
    status.set_defaults(func=cmd_status)

    stop = commands.add_parser("stop", parents=[common],
                               help="systemctl stop the run's jobs: each saves a checkpoint, then exits; start resumes.")
    stop.add_argument("--wait", type=float, default=60, help="Seconds to wait for the jobs to end (default 60).")
    stop.set_defaults(func=cmd_stop)

    supervise_ = commands.add_parser("supervise", help="What a job's unit runs (as the runner user): the trainer of "
                                                       "the job's last attempt, its log and exit status.")
    supervise_.add_argument("--job-dir", required=True, help="<runs-dir>/<run-id>/<job>")
    supervise_.set_defaults(func=cmd_supervise)

    task = commands.add_parser("slurm-task", help="What a Slurm task runs (as the runner user; start --scheduler slurm "
                                                  "queues it): the env file, the chip Slurm gave, then supervise.")
    task.add_argument("--run-dir", required=True, help="<runs-dir>/<run-id>")
    task.add_argument("--job", default=None, help="The job's folder name (default: task<SLURM_ARRAY_TASK_ID>).")
    task.add_argument("--env-file", default=DEFAULT_ENV_FILE, help="The kit's environment file, applied to the task.")
    task.add_argument("--gres", default="tpu", help="The chips' generic resource name in slurm.conf.")
    task.set_defaults(func=cmd_slurm_task)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (JobError, EnvFileError) as exc:
        print(f"error: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
