#!/usr/bin/env python3
"""Plan, start, watch and stop LoRA training jobs on this host; systemd (or Slurm) runs them.

``playbooks/train.yml`` drives this over SSH. ``start`` hands each job to systemd as
``sdkit-train-<run-id>-<job>.service``, a unit file root writes into /etc/systemd/system from
validated values only and enables for boot. systemd owns the trainer: the unit runs as the runner
user (User=) with the kit's env file (EnvironmentFile=) and the hub token as the credential
``hub_token`` (LoadCredential=); ExecStart's ``launch`` execs the trainer, so systemd's SIGTERM
reaches it (it checkpoints and exits 130, SuccessExitStatus) and ExecStopPost's ``ended`` records
systemd's $EXIT_CODE in exit_status, which outlives a reboot. After a reboot the unit starts again
and ``launch`` resumes from the latest checkpoint; ``stop`` disables the units, so a cancelled job
stays stopped. ``start`` is idempotent: it leaves running or finished jobs alone and resumes dead
or stopped ones with ``--resume_from_checkpoint latest``.

With ``start --scheduler slurm`` the same jobs queue in the cluster of role sophon_slurm instead
(sdkit_slurm.py): the same folders and states, plus ``queued``. Each task runs ``slurm-task``,
which prepares the attempt as ``launch`` does and, as Slurm has no ExecStopPost, waits for the
trainer to record its exit code. With ``--slurm-shared-dir`` the run's folders are on storage every
node mounts, and Slurm may start (or requeue) a host's tasks on any node.

A run lives in ``<runs-dir>/<run-id>/<job>/``: job.json (the command, its environment, every
attempt), train.log, exit_status (negative: killed by that signal) and output/. A job folder is the
runner user's, so root never works in it: ``launch`` opens train.log itself, as that user, without
following links (systemd would open a StandardOutput=append: file as root), and root's ``start``
does its file work in a child that became that user. Everything read back from a folder is bounded
(read_limited), values of the wrong type count as unknown, and printed lines are printable().
Standard library only (sdkit_env loads torch: seconds on every status poll); values reach the
trainer as argv from job.json, never through a shell or ExecStart (which expands $VARIABLES).
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
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import sdkit_slurm
from sdkit_files import (DEFAULT_ENV_FILE, HUB_TOKEN_CREDENTIAL, HUB_TOKEN_FILE_KEY, STATE_DIR_KEY, USER_KEY, EnvFile,
                         EnvFileError, count, number, printable, read_json, read_limited, write_json_atomic,
                         write_text_atomic)
from sdkit_slurm import SlurmError

RUNS_SUBDIR = "runs"  # under SOPHON_SD_STATE_DIR
RESUME_ARGS = ["--resume_from_checkpoint", "latest"]
# A resumed attempt continues the job's own output: starting over again would throw away its steps.
FIRST_ATTEMPT_ONLY = ("--overwrite_output_dir",)
MODES = ("per_chip", "data_parallel")
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
UNIT_DIR = "/etc/systemd/system"
# systemd's ActiveState values while the job's process may still run.
ACTIVE_STATES = ("active", "activating", "deactivating", "reloading")
# Time for the step in progress and a checkpoint after SIGTERM, before systemd kills the job.
STOP_TIMEOUT_S = 900
# How often `status --wait` looks: each look asks systemd, or slurmctld for every host at once.
STATUS_PAUSE_S = 3.0
# --model and --dataset: a hub id (owner/name, or a download-share folder name) or an absolute path.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
# What root writes into a unit file as a path: nothing systemd reads as quoting, a specifier (%), a
# variable ($) or a new setting (newline).
UNIT_VALUE = re.compile(r"/[A-Za-z0-9/._+-]*")
EXIT_FILE = "exit_status"  # written by ExecStopPost or slurm-task
SOURCE_FLAGS = {"model": "--pretrained_model_name_or_path", "dataset": "--dataset_name"}
# How much of a job's files status reads: metrics.jsonl from its end (its last line is wanted), the
# start of train.log (where the step count is logged) and exit_status.
METRICS_TAIL = 4096
LOG_HEAD = 1 << 18
SMALL_FILE = 64
# For trainers that do not record total_steps in run.json (or before they know it).
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
    chips: int = 1  # what a Slurm task asks for

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


def with_sources(train_args: List[str], sources: Dict[str, Optional[str]]) -> List[str]:
    """The trainer's flags with --pretrained_model_name_or_path / --dataset_name set to the given model
    and dataset (replacing the tutorial's). Each must be a hub id or an absolute path on the host."""
    for what, value in sources.items():
        if value is None:
            continue
        if CONTROL_CHARACTERS.search(value) or not (HUB_ID.fullmatch(value) or value.startswith("/")):
            raise JobError(f"--{what} {value!r} (make train {what.upper()}=...) is not usable: give a hub id such as "
                           f"owner/name, a download-share name, or an absolute path on the host, without control "
                           f"characters")
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
        name = arg.partition("=")[0]
        # argparse takes any unambiguous prefix of a flag: --hub_t, --hub_tok, ... (--hub_ alone is ambiguous).
        if name.startswith("--hub_t") and "--hub_token".startswith(name):
            raise JobError(f"--hub_token in the trainer's flags (TRAIN_ARGS) would be in every process list: take "
                           f"it out, and give the token to the role sophon_host_env as sophon_host_env_hub_token "
                           f"(it writes the file the env file names as {HUB_TOKEN_FILE_KEY})")
        if CONTROL_CHARACTERS.search(arg):
            raise JobError(f"trainer flag {printable(arg)!r} (TRAIN_ARGS) contains a control character: "
                           "give each flag on one line, without tabs or escapes")
        if name == "--output_dir":
            raise JobError("--output_dir is chosen per job (<runs-dir>/<run-id>/<job>/output); leave it out")


def attempt_argv(argv: List[str], resuming: bool) -> List[str]:
    """The command of one attempt: a later attempt resumes from the latest checkpoint."""
    if not resuming:
        return argv
    argv = [a for a in argv if a not in FIRST_ATTEMPT_ONLY]
    return argv if any(a.split("=")[0] == RESUME_ARGS[0] for a in argv) else argv + RESUME_ARGS


def plan_jobs(run_dir: Path, mode: str, devices: List[str], python: str, trainer: str, train_args: List[str],
              slurm_chips: Optional[int] = None) -> List[Job]:
    """The jobs of a run: their names, commands and device environment.

    ``per_chip`` runs an independent training per chip (each chip's result stands alone).
    ``data_parallel`` runs one training over all chips with ``accelerate launch``: the trainer picks
    its chip from LOCAL_RANK when ACCELERATE_TORCH_DEVICE names the kind without an index, which is
    why the chips must be tpu:0..tpu:N-1. With one device (or the CPU) both modes are one job.

    Under Slurm (``slurm_chips``: the chips Slurm counts on this node) per_chip is one task per chip,
    task0, task1, ...: which chip a task gets is Slurm's choice when it starts (slurm-task). On a host
    without a Sophgo runtime the jobs train on SOPHON_SD_DEVICES' kind of device while Slurm still
    counts out chips.
    """
    if mode not in MODES:
        raise JobError(f"mode '{mode}' is not known: use {' or '.join(MODES)}")
    devices = devices or ["cpu"]
    kind = devices[0].partition(":")[0]

    def job(name: str, device: str, launcher: List[str], chips: int = 1) -> Job:
        argv = [*launcher, trainer, *train_args, "--output_dir", str(run_dir / name / "output")]
        return Job(name, device, argv, {"ACCELERATE_TORCH_DEVICE": device}, run_dir / name, chips)

    if slurm_chips is not None:
        if mode == "per_chip":
            return [job(f"task{i}", kind, [python]) for i in range(slurm_chips)]
        devices = [f"{kind}:{i}" for i in range(slurm_chips)] if kind == "tpu" else [kind]
    if mode == "data_parallel" and len(devices) > 1:
        expected = [f"{kind}:{i}" for i in range(len(devices))]
        if devices != expected:
            raise JobError(f"data_parallel needs the chips {','.join(expected)} (each process takes the chip of its "
                           f"LOCAL_RANK), but SOPHON_SD_DEVICES is {','.join(devices)}; use mode per_chip, "
                           "or list the chips from 0 upwards")
        launch = [python, "-m", "accelerate.commands.launch", "--num_processes", str(len(devices)),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
        return [job(f"dp{len(devices)}", kind, launch, len(devices))]
    chips = slurm_chips if slurm_chips and mode == "data_parallel" else 1
    return [job(job_name(device), device, [python], chips) for device in devices]


def share_cpus(jobs: List[Job], processes: int, threads: Optional[int], env_file: EnvFile) -> int:
    """Give every job's processes THREADS threads (--cpu-threads), else the env file's OMP_NUM_THREADS
    (an operator's setting for the host, which the unit already has), else an equal share of the CPUs
    this tool may use, at least one. Returns the threads each process gets: a Slurm task's CPUs."""
    if threads is None and env_file.get(THREADS_KEY):
        value = env_file.get(THREADS_KEY)
        if not value.isdigit() or int(value) < 1:
            raise JobError(f"{THREADS_KEY}={value} in {env_file.path} is not a whole number of at least 1: "
                           "fix it in sophon_host_env_extra_env and rerun the role, or pass THREADS=n")
        return int(value)
    threads = threads or max(1, len(os.sched_getaffinity(0)) // max(1, processes))
    for job in jobs:
        job.env[THREADS_KEY] = str(threads)
    return threads


# --------------------------------------------------------------------------- the runner user


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


def become(account: Optional[pwd.struct_passwd]) -> None:
    """Drop root for good: the runner's groups, group and user (in that order: setuid comes last)."""
    if account is None:
        return
    os.initgroups(account.pw_name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    os.umask(0o022)


def as_user(account: Optional[pwd.struct_passwd], work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` run by a child that has become ``account`` (in this process when None).

    Root keeps its privileges for systemd and hands every file of the runs folder to the child, so a
    link planted there is only ever followed with the runner user's rights. The result (JSON) and an
    error's message come back through a pipe.
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
            except (JobError, SlurmError) as exc:
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


# --------------------------------------------------------------------------- systemd (as root)


def systemctl(*args: str) -> str:
    """systemctl's output; a failure is one JobError line with its message."""
    try:
        result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise JobError("systemctl not found: jobs run as systemd services, so this host needs systemd "
                       "running as its init") from None
    if result.returncode != 0:
        raise JobError(f"systemctl {args[0]} failed: {' '.join(result.stderr.split())}")
    return result.stdout


def unit_value(what: str, value: str) -> str:
    """A path as root writes it into a unit file: only characters that systemd takes literally (no spaces,
    quotes, '%' specifiers, '$' or newlines, which would add settings of their own)."""
    if not UNIT_VALUE.fullmatch(value):
        raise JobError(f"{what} {value!r} cannot go into a systemd unit: use an absolute path of letters, digits, "
                       "'/', '.', '_', '+' or '-'")
    return value


def unit_text(job: Job, account: Optional[pwd.struct_passwd], env_file: str, stop_timeout: int,
              token_file: Optional[str] = None) -> str:
    """The job's service (see the module's docstring); enabled for boot, unlike a transient unit of systemd-run."""
    tool = f"{unit_value('python', sys.executable)} {unit_value('job tool', str(Path(__file__).resolve()))}"
    folder = unit_value("job folder", str(job.dir))
    lines = ["[Unit]", f"Description=sophon-sd-kit training job {folder}",
             # sshd waits for the job to be started: once a host answers again after a reboot, the playbook's
             # poll sees the job running, not ended.
             "Before=ssh.service sshd.service",
             "", "[Service]", "Type=exec", f"EnvironmentFile={unit_value('--env-file', env_file)}",
             # SIGTERM to the trainer only: a second one (or one to accelerate's workers as well) aborts it.
             "KillMode=mixed", "KillSignal=SIGTERM", f"TimeoutStopSec={int(stop_timeout)}",
             f"SuccessExitStatus={INTERRUPTED}"]
    if account:
        lines += [f"User={account.pw_name}", f"Group={grp.getgrgid(account.pw_gid).gr_name}"]
    if token_file:  # systemd reads it as root and hands this unit alone a copy ($CREDENTIALS_DIRECTORY)
        lines.append(f"LoadCredential={HUB_TOKEN_CREDENTIAL}:{unit_value(HUB_TOKEN_FILE_KEY, token_file)}")
    lines += [f"ExecStart={tool} launch --job-dir {folder}", f"ExecStopPost={tool} ended --job-dir {folder}",
              "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def credential_file(path: Optional[str]) -> Optional[str]:
    """The hub token file for LoadCredential=, which systemd reads as root: None when there is none, an error
    when anyone but me (root) could swap it or a folder above it for a link to another of root's files."""
    if not path or not os.path.isfile(path):
        return None
    for part in [Path(path), *Path(path).parents]:
        info = os.lstat(part)
        shared = part != Path(path) and info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if info.st_uid not in (0, os.geteuid()) or shared or stat.S_ISLNK(info.st_mode):
            raise JobError(f"hub token file {path} ({HUB_TOKEN_FILE_KEY}) or a folder above it can be changed by "
                           f"another user than {pwd.getpwuid(os.geteuid()).pw_name}, but systemd reads it for the "
                           "job as root: keep it where role sophon_host_env puts it (sophon_host_env_hub_token_file)")
    return path


def launch_unit(job: Job, text: str, unit_dir: Path) -> None:
    """Write the job's unit (in systemd's root-owned folder), enable it for boot and start it."""
    write_text_atomic(unit_dir / job.unit, text)
    try:
        systemctl("reset-failed", "--", job.unit)  # the previous attempt's failed unit, if any
    except JobError:
        pass  # a unit that never failed has nothing to reset
    try:
        systemctl("daemon-reload")
        systemctl("enable", "--now", "--", job.unit)
    except JobError as exc:
        raise JobError(f"job {job.name} did not start: {exc}; see journalctl -u {job.unit}") from None


def disable_units(units: List[str]) -> None:
    """Keep the units of stopped or finished jobs from starting at boot (start enables them again)."""
    if units:
        systemctl("disable", "--", *units)


def unit_states(units: List[str]) -> Dict[str, Dict[str, str]]:
    """ActiveState and MainPID of each unit (unknown units are inactive)."""
    if not units:
        return {}
    states = {}
    for block in systemctl("show", "--property=Id,ActiveState,MainPID", "--", *units).strip().split("\n\n"):
        values = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        states[values.get("Id", "")] = values
    return {unit: states.get(unit, {"ActiveState": "inactive"}) for unit in units}


def run_units(run_id: str) -> List[str]:
    """The loaded units of a run's jobs (sdkit-train-<run-id>-<job>.service, job without '-')."""
    prefix = f"{UNIT_PREFIX}-{run_id}-"
    listed = systemctl("list-units", "--all", "--plain", "--no-legend", "--type=service", f"{prefix}*")
    names = [line.split()[0] for line in listed.splitlines() if line.split()]
    return [n for n in names if n.startswith(prefix) and JOB_NAME_PATTERN.fullmatch(n[len(prefix):-len(".service")])]


# --------------------------------------------------------------------------- status (as the runner user)


def last_metrics(path: Path) -> Optional[dict]:
    """The last line of metrics.jsonl, read from the end (the file grows by one line per step)."""
    for line in reversed((read_limited(path, METRICS_TAIL, tail=True) or b"").splitlines()):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a RecursionError: a line of thousands of "[", the runner user's
            continue  # the first line of the window may be cut, the last one half-written
        return record if isinstance(record, dict) else None
    return None


def read_small_int(path: Path) -> Optional[int]:
    """The whole number in a file of a few bytes (exit_status); None when absent or not a number."""
    text = (read_limited(path, SMALL_FILE) or b"").strip()
    return int(text) if re.fullmatch(rb"-?[0-9]{1,12}", text) else None


def live_states(job_dirs: List[Path], slurm_queue: Optional[Dict[str, sdkit_slurm.Queue]] = None
                ) -> Dict[Path, dict]:
    """What each job's scheduler says of it (systemd's unit, or Slurm's queue), asked once per run.
    ``slurm_queue``: the queue as the playbook's one squeue of the round found it."""
    records = {d: read_json(d / "job.json") or {} for d in job_dirs}
    in_slurm = [d for d, r in records.items() if r.get("scheduler") == "slurm" and isinstance(r.get("slurm_name"), str)]
    units = unit_states([unit_name(d) for d in job_dirs if d not in in_slurm])
    live = {d: {"state": "running" if units[unit_name(d)].get("ActiveState") in ACTIVE_STATES else "gone",
                "pid": int(units[unit_name(d)].get("MainPID") or 0) or None}
            for d in job_dirs if d not in in_slurm}
    queues = dict(slurm_queue or {})
    for d in in_slurm:
        name = records[d]["slurm_name"]
        if name not in queues:
            queues[name] = sdkit_slurm.queue(name)
        live[d] = sdkit_slurm.task_state(queues[name].get(sdkit_slurm.job_id_of(d), {}))
    return live


def job_status(job_dir: Path, live: Optional[dict] = None, accounting: Optional[sdkit_slurm.Accounting] = None
               ) -> dict:
    """What one job is doing: state, step, total steps, last loss, elapsed seconds of this attempt.

    States: absent (never started), queued (waiting in Slurm's queue), running (its unit is active, or
    Slurm runs it), finished (exit 0), stopped (exit 130: a checkpoint was saved; or cancelled while
    queued), failed (any other exit, or gone without one recorded, as after a power loss). ``live`` is
    the scheduler's word on the job (live_states; asked for here when not given). ``accounting``: what the
    pass's one sacct recorded of the run's Slurm tasks, added to those that have ended.
    """
    job = read_json(job_dir / "job.json")
    status = {"job": job_dir.name, "dir": str(job_dir), "output_dir": str(job_dir / "output"),
              "log": str(job_dir / "train.log"), "unit": unit_name(job_dir), "state": "absent", "step": None,
              "total_steps": None, "loss": None, "elapsed_s": None, "exit_status": None, "attempts": 0,
              "checkpoint": None}
    attempts = job.get("attempts") if job else None
    if not isinstance(attempts, list):
        return status
    attempt = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}  # {}: not run yet
    live = live or live_states([job_dir])[job_dir]
    status.update(device=attempt.get("device", job.get("device")), attempts=len(attempts), pid=live.get("pid"),
                  scheduler=job.get("scheduler", "systemd"),
                  node=printable(attempt["node"]) if isinstance(attempt.get("node"), str) else None)
    if status["scheduler"] == "slurm":
        job_id = sdkit_slurm.job_id_of(job_dir)
        status["unit"] = f"slurm job {job_id}"
        # The playbook's one sacct of a pass asks for it; the file is the runner user's, so only an id's shape.
        if sdkit_slurm.TASK_ID.fullmatch(job_id):
            status["slurm_job"] = job_id
        if isinstance(job.get("slurm_name"), str):  # the playbook's one squeue of a round asks for it
            status["slurm_name"] = printable(job["slurm_name"])
    exit_file = job_dir / EXIT_FILE
    ended_at = None
    if live["state"] in ("running", "queued"):
        status.update(state=live["state"], reason=live.get("reason"))
    elif exit_file.is_file():
        code = read_small_int(exit_file)
        code = 1 if code is None else code  # empty or garbled: not written by ExecStopPost or slurm-task
        ended_at = exit_file.stat().st_mtime
        status["exit_status"] = code
        status["state"] = "finished" if code == 0 else "stopped" if code == INTERRUPTED else "failed"
    else:  # a Slurm task cancelled before it ever ran lost nothing; else gone without a word (a power loss)
        status["state"] = "stopped" if status["scheduler"] == "slurm" and "ran_at" not in attempt else "failed"
    # Slurm's own record of a task that ended: its state (NODE_FAIL, TIMEOUT... say why one failed without an
    # exit status), the node and chips it had, how long it ran. Not of one still queued or running: sacct
    # then tells of an attempt before a requeue.
    if status["state"] not in ("running", "queued") and status.get("slurm_job") in (accounting or {}):
        status["accounting"] = (accounting or {})[status["slurm_job"]]
    metrics = last_metrics(job_dir / "output" / "metrics.jsonl")
    if metrics:  # the trainer's to write, the runner user's to forge: of the wrong type, unknown
        status.update(step=count(metrics.get("step")), loss=number(metrics.get("loss")))
    run = read_json(job_dir / "output" / "run.json") or {}
    logged = TOTAL_STEPS_PATTERN.search(read_limited(job_dir / "train.log", LOG_HEAD) or b"")
    status["total_steps"] = count(run.get("total_steps")) or (int(logged.group(1)) if logged else None)
    steps = [int(p.name[11:]) for p in (job_dir / "output").glob("checkpoint-*") if p.name[11:].isdigit()]
    status["checkpoint"] = f"checkpoint-{max(steps)}" if steps else None
    started = number(attempt.get("ran_at")) or number(attempt.get("started"))
    status["elapsed_s"] = round((ended_at or time.time()) - started, 1) if started else None
    return status


def describe(status: dict) -> str:
    """One line per job for people: what the playbook prints at each poll. The job's name is a folder
    name the runner user chose and the numbers come from its files: the line is made printable, and a
    number of the wrong type shows as '?'."""
    head = f"{status['job']}: {status['state']}"
    if status["state"] == "queued":
        return printable(f"{head} in Slurm ({status.get('reason') or 'waiting'}), {status['unit']}")
    if status["state"] == "absent":
        return printable(head)
    step, total, attempts = count(status.get("step")), count(status.get("total_steps")), count(status.get("attempts"))
    loss, elapsed = number(status.get("loss")), number(status.get("elapsed_s"))
    parts = [head, f"step {'?' if step is None else step}/{total or '?'}",
             *([f"loss {loss:.4f}"] if loss is not None else []),
             f"{elapsed:.0f} s" if elapsed is not None else "? s",
             *([f"attempt {attempts}"] if attempts and attempts > 1 else [])]
    if status["state"] in ("failed", "stopped"):
        parts.append(f"exit {status['exit_status']}, log {status['log']}" if status["exit_status"] is not None
                     else f"no exit status recorded, log {status['log']}")
    if isinstance(status.get("accounting"), dict):
        parts.append(f"{status['unit']}: {sdkit_slurm.describe_acct(status['accounting'])}")
    return printable(", ".join(parts))


def run_job_dirs(run_dir: Path) -> List[Path]:
    """The folders of a run's jobs: those with a job.json and a name this tool gives a job (another
    name, such as one holding escape sequences, was not made by it and is no job of the run)."""
    if not run_dir.is_dir():
        return []
    return [d for d in sorted(run_dir.iterdir()) if JOB_NAME_PATTERN.fullmatch(d.name) and (d / "job.json").is_file()]


def run_status(run_dir: Path, slurm_queue: Optional[Dict[str, sdkit_slurm.Queue]] = None,
               accounting: Optional[sdkit_slurm.Accounting] = None, run_id: str = "") -> dict:
    """All jobs of a run, and the run's state: running while any job runs or waits, else the worst outcome.
    ``run_id``: as prepare_run's (default run_dir's name, which on shared storage is the host's)."""
    run_id = run_id or run_dir.name
    job_dirs = run_job_dirs(run_dir)
    live = live_states(job_dirs, slurm_queue)
    jobs = [job_status(d, live[d], accounting) for d in job_dirs]
    states = {j["state"] for j in jobs}
    # A queued job counts as running: it will run, and polling must go on.
    state = "running" if "queued" in states else next(
        (s for s in ("running", "failed", "stopped", "finished") if s in states), "absent")
    return {"run_id": run_id, "run_dir": str(run_dir), "state": state, "jobs": jobs,
            "lines": [describe(j) for j in jobs] or [printable(f"{run_id}: no jobs on this host")]}


def wait_while_running(run_dir: Path, seconds: float, pause: float,
                       slurm_queue: Optional[Dict[str, sdkit_slurm.Queue]] = None,
                       accounting: Optional[sdkit_slurm.Accounting] = None, run_id: str = "") -> dict:
    """run_status, once no job runs or after ``seconds``; ``slurm_queue`` stands for the first look only
    (``accounting``, of tasks that had ended then, holds for every look)."""
    deadline = time.monotonic() + seconds
    status = run_status(run_dir, slurm_queue, accounting, run_id)
    while status["state"] == "running" and time.monotonic() < deadline:
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        status = run_status(run_dir, accounting=accounting, run_id=run_id)
    return status


# --------------------------------------------------------------------------- attempts (as the runner user)


def prepare_run(run_dir: Path, jobs: List[Job], scheduler: Optional[Dict[str, str]] = None,
                run_id: str = "") -> List[dict]:
    """Record each job (job.json) and say what happens to it: left alone, started or resumed. The job's
    own process (launch, slurm-task) records each attempt as it begins. ``scheduler``: what a new job's
    record keeps of its scheduler (default: a systemd unit). ``run_id``: the run's name in messages (default
    run_dir's, which on shared storage is the host's: <dir>/<run-id>/<node>)."""
    scheduler = scheduler or {"scheduler": "systemd"}
    run_id = run_id or run_dir.name
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
            raise JobError(f"run '{run_id}' was started with SCHEDULER={used}, not {scheduler['scheduler']}: "
                           "rerun it with that scheduler, or choose a new run id")
    if existing and existing != planned:
        raise JobError(f"run '{run_id}' has jobs {', '.join(sorted(existing))}, but these settings make "
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
        record, current = records[job.name], job_status(job.dir)
        if current["state"] in ("queued", "running", "finished"):
            plans.append({"job": job.name, "launch": False, "action": f"already {current['state']}"})
            continue
        job.dir.mkdir(exist_ok=True)
        write_json_atomic(job.dir / "job.json", record)  # atomic: a status poll must never read half a file
        action = (f"resumed from {current['checkpoint'] or 'the start (no checkpoint yet)'}" if record["attempts"]
                  else "started")
        plans.append({"job": job.name, "launch": True, "action": action})
    return plans


def jobs_status(jobs: List[Job]) -> List[dict]:
    live = live_states([job.dir for job in jobs])
    return [job_status(job.dir, live[job.dir]) for job in jobs]


def next_attempt(job_dir: Path) -> Optional[Tuple[dict, dict]]:
    """The job's record with the attempt to run now added; None for a job that has finished (a boot
    starts its unit again). Every attempt after the first resumes from the latest checkpoint, whoever
    started it: ``start``, a boot or Slurm's requeue."""
    record = read_json(job_dir / "job.json")
    attempts = record.get("attempts") if record else None
    if not isinstance(attempts, list) or not isinstance(record.get("argv"), list):
        raise JobError(f"{job_dir / 'job.json'} is no job's record: rerun make train")
    if attempts and read_small_int(job_dir / EXIT_FILE) == 0:
        return None
    attempts.append({"started": time.time(), "argv": attempt_argv(record["argv"], resuming=bool(attempts)),
                     "ran_at": time.time()})
    (job_dir / EXIT_FILE).unlink(missing_ok=True)  # the previous attempt's
    return record, attempts[-1]


def open_log(job_dir: Path, record: dict, attempt: dict) -> Tuple[List[str], Dict[str, str]]:
    """Send stdout and stderr to train.log, opened by the runner user without following a link (systemd
    opens a StandardOutput=append: file as root), and return the attempt's command and environment."""
    os.umask(0o022)
    os.chdir(job_dir)
    try:
        log = os.open(job_dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise JobError(f"cannot open {job_dir / 'train.log'} ({exc.strerror}): it must be a plain file or absent; "
                       "remove it and rerun make train") from None
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job_dir.name}: {shlex.join(attempt['argv'])}", flush=True)
    return attempt["argv"], {**os.environ, **record.get("env", {}), **attempt.get("env", {}), "PYTHONUNBUFFERED": "1"}


def exit_code(how: str, status: str) -> int:
    """systemd's $EXIT_CODE and $EXIT_STATUS as one exit code: the process's, or minus the signal's number."""
    if how == "exited" and status.isdigit():
        return int(status)
    if how in ("killed", "dumped") and f"SIG{status}" in signal.Signals.__members__:
        return -signal.Signals[f"SIG{status}"].value
    return 1  # the unit failed before its process ran ($EXIT_CODE empty)


def run_attempt(job_dir: Path, record: dict, attempt: dict) -> int:
    """A Slurm task's trainer, as a child whose exit code this process records (Slurm has no ExecStopPost).

    stop (sdkit_slurm.cancel) sends SIGTERM to every process of the task, the trainer included: this one
    must live on to record the trainer's 130, and pass nothing on (a second SIGTERM aborts the trainer)."""
    signal.signal(signal.SIGTERM, lambda *_: None)  # a handler, not SIG_IGN, which the trainer would inherit
    argv, env = open_log(job_dir, record, attempt)
    try:
        code = subprocess.call(argv, env=env)
    except OSError as exc:
        print(f"=== cannot run {argv[0]}: {exc}", flush=True)
        code = 127
    write_text_atomic(job_dir / EXIT_FILE, f"{code}\n")
    return code if code >= 0 else 128 - code


# --------------------------------------------------------------------------- commands


def run_dir_of(args: argparse.Namespace) -> Path:
    """<runs-dir>/<run-id>; the env file is read only when --runs-dir is not given (the playbook gives it).
    With --slurm-shared-dir: <shared-dir>/<run-id>/<node>, this host's tasks of the run on storage every node
    mounts (each host plans and submits its own, as without it)."""
    check_run_id(args.run_id)
    if args.slurm_shared_dir:
        return Path(args.slurm_shared_dir) / args.run_id / sdkit_slurm.node_name()
    runs_dir = args.runs_dir or f"{EnvFile.read(args.env_file).require(STATE_DIR_KEY)}/{RUNS_SUBDIR}"
    return Path(runs_dir) / args.run_id


def account_of(args: argparse.Namespace) -> Optional[pwd.struct_passwd]:
    """--user, else the env file's SOPHON_SD_USER (the inventory's sophon_sd_user, which no constant here
    could know): the account to work as, None for "as I am"."""
    return runner_account(args.user if args.user is not None else EnvFile.read(args.env_file).require(USER_KEY))


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
    run_dir = run_dir_of(args)
    account = account_of(args)
    plan = (run_dir, args.mode, devices, python, args.trainer, train_args)
    if args.slurm_shared_dir and args.scheduler != "slurm":
        raise JobError("--slurm-shared-dir (sophon_slurm_shared_run_dir) is for SCHEDULER=slurm: a systemd job never "
                       "leaves its host, and keeps its checkpoints in the host's runs folder")
    if args.scheduler == "slurm":
        become(account)  # Slurm runs a task as whoever queued it: the runner user, never root
        account = None
        problem = sdkit_slurm.shared_dir_problem(args.slurm_shared_dir) if args.slurm_shared_dir else None
        if problem:
            raise JobError(f"{problem}; then rerun site.yml (role sophon_slurm checks it on every compute node)")
        site = sdkit_slurm.site_args(args.slurm_args)
        node = sdkit_slurm.node_name()
        chips = sdkit_slurm.node_chips(node, args.slurm_gres)
        jobs = plan_jobs(*plan, slurm_chips=chips)
        threads = share_cpus(jobs, chips, args.cpu_threads, env_file)
        # The run id, not run_dir's name: on shared storage that is <dir>/<run-id>/<node>, whose name is the node,
        # and every run of this host would share one name (squeue and scancel find a run's tasks by it).
        scheduler = {"scheduler": "slurm", "slurm_name": sdkit_slurm.job_name(args.run_id, node)}
    else:
        jobs = plan_jobs(*plan)
        share_cpus(jobs, max(1, len(devices)), args.cpu_threads, env_file)
        scheduler = {"scheduler": "systemd"}
    plans = as_user(account, prepare_run, run_dir, jobs, scheduler, args.run_id)
    to_start = [job for job, planned in zip(jobs, plans) if planned["launch"]]
    if args.scheduler == "slurm" and to_start:
        task = [sys.executable, str(Path(__file__).resolve()), "slurm-task", "--run-dir", str(run_dir),
                "--env-file", str(Path(args.env_file).resolve()), "--gres", args.slurm_gres]
        # Pinned to this host, which keeps the checkpoints, unless every node reaches them on shared storage.
        sdkit_slurm.submit_jobs(to_start, task=task, name=scheduler["slurm_name"],
                                node=None if args.slurm_shared_dir else node, gres=args.slurm_gres,
                                threads=threads, site=site)
    elif args.scheduler == "systemd":
        token_file = credential_file(env_file.get(HUB_TOKEN_FILE_KEY))
        for job in to_start:
            text = unit_text(job, account, str(env_file.path.resolve()), args.stop_timeout, token_file)
            launch_unit(job, text, Path(args.unit_dir))
        disable_units([job.unit for job, planned in zip(jobs, plans) if planned["action"] == "already finished"])
    statuses = as_user(account, jobs_status, jobs)
    results = [{"job": planned["job"], "action": planned["action"], "status": status}
               for planned, status in zip(plans, statuses)]
    lines = [f"{result['job']}: {result['action']}" for result in results]
    print(json.dumps({"run_id": args.run_id, "jobs": results, "lines": lines}, sort_keys=True) if args.json
          else "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args)
    become(account_of(args))  # status needs no root at all: systemctl show works for anyone
    # --wait lets one poll cover a stretch of time, so that a playbook printing each poll prints a line
    # every --wait seconds rather than every second.
    queue = sdkit_slurm.given_queue(args.slurm_queue_names, args.slurm_queue)
    accounting = sdkit_slurm.parse_acct(args.slurm_acct, args.slurm_gres)
    status = wait_while_running(run_dir, args.wait, STATUS_PAUSE_S, queue, accounting, args.run_id)
    print(json.dumps(status, sort_keys=True) if args.json else "\n".join(status["lines"]))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``systemctl stop`` of the run's units, or SIGTERM to its Slurm tasks: the trainer saves a checkpoint at
    the next step and exits 130."""
    run_dir = run_dir_of(args)
    account = account_of(args)
    units = run_units(args.run_id)
    if units:
        disable_units(units)  # a cancelled job stays stopped through a reboot
        systemctl("stop", "--no-block", "--", *units)
        for unit in units:
            print(f"{unit}: asked to stop (systemctl stop: SIGTERM, then a checkpoint)")
    become(account)
    for name in sorted({(read_json(d / "job.json") or {}).get("slurm_name") for d in run_job_dirs(run_dir)} - {None}):
        sdkit_slurm.cancel(name)
        print(f"{name}: cancelled in Slurm (running tasks get SIGTERM, then save a checkpoint)")
    print("\n".join(wait_while_running(run_dir, args.wait, 0.5, run_id=args.run_id)["lines"]))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """ExecStart of a job's unit, as the runner user: becomes the trainer of the job's next attempt."""
    job_dir = Path(args.job_dir)
    planned = next_attempt(job_dir)
    if planned is None:
        return 0  # the unit of a finished job, started by a boot
    write_json_atomic(job_dir / "job.json", planned[0])
    argv, env = open_log(job_dir, *planned)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"=== cannot run {argv[0]}: {exc}", flush=True)
    return 127


def cmd_ended(args: argparse.Namespace) -> int:
    """ExecStopPost of a job's unit, as the runner user: the exit code, for status after a reboot too."""
    path = Path(args.job_dir) / EXIT_FILE
    if not path.exists():  # else launch found the job finished and ran nothing: its end stays as it was
        write_text_atomic(path, f"{exit_code(os.environ.get('EXIT_CODE', ''), os.environ.get('EXIT_STATUS', ''))}\n")
    return 0


def cmd_slurm_task(args: argparse.Namespace) -> int:
    """What a Slurm task runs, as the runner user: the env file, the chip Slurm gave it, then the trainer."""
    job_dir = Path(args.run_dir) / (args.job or f"task{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    planned = next_attempt(job_dir)
    if planned is None:
        return 0
    record, attempt = planned
    # What a unit gets from EnvironmentFile= and User= (sbatch --export=NIL gave nothing).
    os.environ.update(EnvFile.read(args.env_file).values)
    account = pwd.getpwuid(os.getuid())
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    # Where it ran: with a shared run folder, any node with a free chip, and after a requeue perhaps another.
    attempt.update(slurm_job=sdkit_slurm.job_id_of(job_dir), node=sdkit_slurm.node_name())
    try:
        chips = sdkit_slurm.job_chips(sdkit_slurm.this_task(), args.gres)
    except (SlurmError, KeyError) as exc:
        write_json_atomic(job_dir / "job.json", record)
        write_text_atomic(job_dir / EXIT_FILE, "2\n")
        raise JobError(f"cannot tell which chip Slurm gave this task: {exc}") from None
    device = record["device"]
    if device == "tpu" and args.job is None:
        device = f"tpu:{chips[0]}"  # tpu:N is chip N as bm-smi numbers it, as gres.conf's File= does
    attempt.update(device=device, chips=chips, env={"ACCELERATE_TORCH_DEVICE": device})
    write_json_atomic(job_dir / "job.json", record)
    return run_attempt(job_dir, record, attempt)


def thread_count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (make train THREADS=...), not '{value}'")
    return int(value)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start, watch and stop LoRA training jobs on this host as systemd services of the runner user "
                    "(used by playbooks/train.yml). State lives in <runs-dir>/<run-id>/<job>/: job.json, "
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
    common.add_argument("--slurm-shared-dir", default="",
                        help="With --scheduler slurm: a run folder on storage every compute node mounts (the "
                             "inventory's sophon_slurm_shared_run_dir). This host's tasks then keep their state in "
                             "<dir>/<run-id>/<node> instead of --runs-dir and are not pinned to this host: Slurm "
                             "starts them on any node with free chips, and a requeued task resumes there.")
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
    for what in SOURCE_FLAGS:
        start.add_argument(f"--{what}", default=None,
                           help=f"The {'base model' if what == 'model' else what} (hub id, download-share name or "
                                f"absolute path): replaces the trainer's {SOURCE_FLAGS[what]}.")
    start.add_argument("--python", default=None, help="Python for the trainer (default: SOPHON_SD_VENV's).")
    start.add_argument("--trainer", default=str(Path(__file__).resolve().with_name("train_lora.py")),
                       help="The training script (default: train_lora.py next to this file).")
    start.add_argument("--stop-timeout", type=int, default=STOP_TIMEOUT_S,
                       help="Seconds systemd gives a stopped job to save its checkpoint before killing it "
                            f"(TimeoutStopSec, default {STOP_TIMEOUT_S}).")
    start.add_argument("--scheduler", default="systemd", choices=SCHEDULERS,
                       help="systemd: the jobs run here as systemd services (no controller needed); slurm: they "
                            "queue in the Slurm cluster (role sophon_slurm), one array task per chip, pinned to "
                            "this host, which keeps their checkpoints (unless --slurm-shared-dir is given).")
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
    status.add_argument("--slurm-acct", action="append", default=[],
                        help="One sacct line of this run's tasks, fields "
                             f"{'|'.join(sdkit_slurm.ACCT_FIELDS)} (sacct --parsable2), once per line: each "
                             "task that has ended shows Slurm's state, node, chips and elapsed time. "
                             "train_status.yml asks the controller once for the whole run.")
    status.add_argument("--slurm-gres", default="tpu",
                        help="The chips' generic resource name, counted in the sacct lines' AllocTRES (default tpu).")
    status.set_defaults(func=cmd_status)

    stop = commands.add_parser("stop", parents=[common],
                               help="systemctl stop the run's jobs: each saves a checkpoint, then exits; start resumes.")
    stop.add_argument("--wait", type=float, default=60, help="Seconds to wait for the jobs to end (default 60).")
    stop.set_defaults(func=cmd_stop)

    # 'supervise': what the units of an earlier kit still run at boot.
    for name, aliases, func, what in (("launch", ["supervise"], cmd_launch, "ExecStart: becomes the trainer of the "
                                       "job's next attempt (resuming after a reboot), its output in train.log."),
                                      ("ended", [], cmd_ended, "ExecStopPost: records systemd's $EXIT_CODE and "
                                       "$EXIT_STATUS in exit_status.")):
        unit_step = commands.add_parser(name, aliases=aliases, help=f"A job unit's {what} (as the runner user)")
        unit_step.add_argument("--job-dir", required=True, help="<runs-dir>/<run-id>/<job>")
        unit_step.set_defaults(func=func)

    task = commands.add_parser("slurm-task", help="What a Slurm task runs (as the runner user; start --scheduler slurm "
                                                  "queues it): the env file, the chip Slurm gave, then the trainer.")
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
    except (JobError, EnvFileError, SlurmError) as exc:
        print(f"error: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
