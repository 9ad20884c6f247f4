"""Training jobs queued through Slurm (`make train SCHEDULER=slurm`), for sdkit_job.py.

sdkit_job.py plans a run's jobs the same way for both schedulers and keeps their state in the
same folders; this module is what differs under Slurm: submitting, asking the queue, cancelling,
and finding the chip Slurm gave a task. The cluster comes from role sophon_slurm: each host with
chips is a node whose chips are a generic resource (``Gres=tpu:bm1684x:N``, ``File=/dev/bm-sophonN``).

Why the jobs of one host are pinned to it (``--nodelist``): a task keeps its checkpoints in the
host's runs folder, so a requeued task must come back to the host that has them. Slurm still
decides when each task runs and which of the host's chips it gets. With a run folder on storage that
every compute node mounts (``--slurm-shared-dir``, the inventory's sophon_slurm_shared_run_dir) no task
is pinned: Slurm starts it on any node with a free chip, and a requeued task resumes from its
checkpoint on whichever node it lands.

Slurm sets no index variable for a resource of its own name (only ``gpu`` gets
CUDA_VISIBLE_DEVICES), so the task reads its chips from ``scontrol show job -d`` (``IDX:n``), a
position in the node's device list, and looks that position up in the node's gres.conf.

A task's trainer runs under ``slurm-task`` (sdkit_job.py), which outlives the trainer to record its
exit code, as systemd's ExecStopPost does for a unit. Slurm alone says whether a task still runs:
``cancel`` signals a running task rather than cancelling it, so it stays in squeue, running, until
its trainer has saved the checkpoint and ended.

Standard library only, like sdkit_job.py.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sdkit_files import read_limited, write_text_atomic

# squeue's states while a task waits for its turn, and while it may still run.
QUEUED_STATES = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD")
RUNNING_STATES = ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING")
JOB_ID_FILE = "slurm_job"  # in a job's folder: its id in Slurm's queue (123_0 for task 0 of array 123)
Queue = Dict[str, Dict[str, str]]  # a task's id (123_0, or 123) to its state and reason


class SlurmError(Exception):
    """Slurm is missing or refused: one line the operator can act on."""


def node_name() -> str:
    """This host's NodeName: role sophon_slurm names each node by its short hostname."""
    return socket.gethostname().split(".")[0]


def job_name(run_id: str, node: str) -> str:
    """One name per run and host: squeue and scancel find a host's tasks of a run by it."""
    return f"sdkit-train-{run_id}.{node}"


def me() -> str:
    """The user squeue and scancel filter on: the runner user, as whom the tasks were submitted."""
    return pwd.getpwuid(os.getuid()).pw_name


def slurm(*args: str) -> str:
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: SCHEDULER=slurm needs this host in the Slurm cluster; add it to the "
                         "inventory group slurm_compute and rerun site.yml (role sophon_slurm)") from None
    if result.returncode != 0:
        raise SlurmError(f"{' '.join(args[:2])} failed: {' '.join(result.stderr.split()) or f'exit {result.returncode}'}")
    return result.stdout


def gres_count(node_text: str, gres: str) -> int:
    """The number of GRES ``gres`` a node has, from ``scontrol show node -o``'s Gres=name:type:N(S:0),..."""
    found = re.search(r"(?:^|\s)Gres=(\S*)", node_text)
    for item in (found.group(1).split(",") if found else []):
        parts = item.split("(")[0].split(":")
        if parts[0] == gres and parts[-1].isdigit() and len(parts) > 1:
            return int(parts[-1])
    return 0


def node_chips(node: str, gres: str) -> int:
    """How many chips Slurm counts on this node; a host that is no node of the cluster is an error."""
    try:
        text = slurm("scontrol", "show", "node", "-o", node)
    except SlurmError as exc:
        raise SlurmError(f"this host is not a node of the Slurm cluster ({exc}); add {node} to the inventory group "
                         "slurm_compute and rerun site.yml (role sophon_slurm)") from None
    chips = gres_count(text, gres)
    if chips < 1:
        raise SlurmError(f"Slurm counts no '{gres}' chips on node {node} (scontrol show node {node}): check its "
                         "Gres= in slurm.conf (role sophon_slurm, from the host's chip fact)")
    return chips


def allocated_indexes(job_text: str, gres: str) -> List[int]:
    """The chips a job was given, from ``scontrol show job -d``: ``GRES=tpu:bm1684x:2(IDX:0-1)`` or
    ``GRES=tpu:1(IDX:0,2)``, in a node line of the detailed output."""
    indexes: List[int] = []
    for found in re.finditer(r"GRES=(\S+)", job_text):
        for item in re.findall(r"([^,(]+)\(IDX:([0-9,\-]+)\)", found.group(1)):
            if item[0].split(":")[0] != gres:
                continue
            for span in item[1].split(","):
                first, _, last = span.partition("-")
                indexes.extend(range(int(first), int(last or first) + 1))
    return sorted(set(indexes))


def this_task() -> str:
    """The id of the task running this process: 123_4 for an array task. Not SLURM_JOB_ID: an array's
    first task has the array's own id, and ``scontrol show job`` of that id lists every task."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def expand(pattern: str) -> List[str]:
    """A Slurm host or file list's names: ``bm-sophon[0-2,5]`` -> bm-sophon0, 1, 2 and 5; ``a,b`` -> a and b."""
    names: List[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", pattern):
        found = re.fullmatch(r"(.*)\[([^\]]*)\](.*)", item)
        if not found:
            names.append(item)
            continue
        head, spans, tail = found.groups()
        for span in spans.split(","):
            first, _, last = span.partition("-")
            width = len(first) if first.startswith("0") else 0
            names.extend(f"{head}{index:0{width}d}{tail}" for index in range(int(first), int(last or first) + 1))
    return names


def node_device_files(gres_conf: str, node: str, gres: str) -> List[str]:
    """The device files of ``gres`` on ``node``, in gres.conf's order, which is the order Slurm numbers
    them in (IDX): each record in turn, a File= range expanded in place (slurmd's node_config_load).
    Records without NodeName= apply to every node; those without File= name no device."""
    files: List[str] = []
    for line in gres_conf.splitlines():
        fields = dict((key.lower(), value) for key, _, value in
                      (token.partition("=") for token in line.split("#", 1)[0].split()) if value)
        if fields.get("name") != gres or "file" not in fields:
            continue
        if "nodename" in fields and node not in expand(fields["nodename"]):
            continue
        files.extend(expand(fields["file"]))
    return files


def chip_number(device_file: str) -> int:
    """N of /dev/bm-sophonN: the chip as bm-smi numbers it, and as torch_tpu's tpu:N opens it."""
    found = re.fullmatch(r".*?(\d+)", device_file)
    if not found:
        raise SlurmError(f"gres.conf's File={device_file} names no numbered chip (expected /dev/bm-sophonN)")
    return int(found.group(1))


def gres_conf_path() -> str:
    """gres.conf is always beside slurm.conf (gres.conf(5)): SLURM_CONF's folder, else Debian's /etc/slurm."""
    return os.path.join(os.path.dirname(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")), "gres.conf")


def job_chips(job_id: str, gres: str) -> List[int]:
    """The chips (N of /dev/bm-sophonN) Slurm gave a job on this node.

    ``scontrol show job -d`` says IDX:k, a position in the node's list of ``gres`` devices, not a chip
    number: on a node whose gres.conf leaves out a failed chip 1, IDX 1 is /dev/bm-sophon2. So each
    position is looked up in this node's gres.conf, in the order slurmd read it."""
    indexes = allocated_indexes(slurm("scontrol", "show", "job", "-d", job_id), gres)
    path = gres_conf_path()
    try:
        with open(path, encoding="utf-8", errors="replace") as conf:
            files = node_device_files(conf.read(1 << 20), node_name(), gres)
    except OSError as exc:
        raise SlurmError(f"cannot read {path} to tell which chip IDX {indexes} is: {exc.strerror}") from None
    if any(index >= len(files) for index in indexes):
        raise SlurmError(f"Slurm gave IDX {indexes} of '{gres}' on node {node_name()}, but {path} lists "
                         f"{len(files)} File= device(s) for it: give every chip its File= line there")
    return [chip_number(files[index]) for index in indexes]


# sbatch options a site may add to every task (SLURM_ARGS): where and on whose account it runs, for how
# long. The rest of sbatch's command line is the kit's: what a task asks for, its output, how it requeues.
SITE_OPTIONS = ("--partition", "--account", "--qos", "--time", "--reservation")
SITE_VALUE = re.compile(r"[A-Za-z0-9_.:,@+-]{1,200}")


def site_args(text: str) -> List[str]:
    """SLURM_ARGS as sbatch options, each ``--name=value`` with a name from SITE_OPTIONS; else one error."""
    words = text.split()
    for word in words:
        name, equals, value = word.partition("=")
        if name not in SITE_OPTIONS or not equals or not SITE_VALUE.fullmatch(value):
            raise SlurmError(f"SLURM_ARGS has '{word}': give only {', '.join(f'{option}=VALUE' for option in SITE_OPTIONS)} "
                             "(letters, digits and _.:,@+- in the value), e.g. SLURM_ARGS='--partition=tpu --time=2-00:00:00'")
    return words


def submit_argv(*, name: str, node: Optional[str], gres: str, chips_per_task: int, cpus_per_task: int,
                array: Optional[List[int]], output: str, command: str, site: Optional[List[str]] = None) -> List[str]:
    """sbatch's command line for a host's tasks of one run.

    ``node``: the node the tasks are pinned to, whose disk keeps their checkpoints; None when they are on
    shared storage, and Slurm picks any node with free chips.
    --requeue: a task on a node that fails is queued again (and resumes from its checkpoint).
    --export=NIL: the task reads the kit's env file itself, as a systemd unit does; nothing of the
    submitting shell leaks into it. Output of the task tool itself (the trainer logs to train.log)
    is appended across requeues.
    """
    argv = ["sbatch", "--parsable", f"--job-name={name}", *([f"--nodelist={node}"] if node else []), "--nodes=1", "--ntasks=1",
            f"--gres={gres}:{chips_per_task}", f"--cpus-per-task={cpus_per_task}", "--requeue", "--export=NIL", "--open-mode=append",
            f"--output={output}"]
    if array is not None:
        argv.append("--array=" + ",".join(str(index) for index in array))
    return argv + list(site or []) + ["--wrap", command]


def submit(argv: List[str]) -> str:
    """The job id sbatch gave (``123``, or ``123;cluster``: the id is before any ';')."""
    return slurm(*argv).strip().split(";")[0]


def submit_jobs(jobs: Sequence[Any], *, task: List[str], name: str, node: Optional[str], gres: str, threads: int,
                site: List[str]) -> None:
    """One sbatch for the jobs to (re)start (sdkit_job's Job: name, dir, chips): an array of the per-chip
    tasks (task<i>), or the one data-parallel job. Each task asks for the CPUs its processes' threads use, so
    that Slurm's accounting (and cgroup's ConstrainCores, where a site turns it on) matches what they run."""
    first = jobs[0]
    array = [int(job.name[len("task"):]) for job in jobs] if first.name.startswith("task") else None
    output = f"{first.dir.parent}/task%a/slurm.log" if array is not None else f"{first.dir}/slurm.log"
    command = task if array is not None else task + ["--job", first.name]
    # exec: the task tool is the batch script's process itself. cancel's SIGTERM reaches every process of
    # the task; a shell in between would die of it, ending the task while the trainer still saves.
    job_id = submit(submit_argv(name=name, node=node, gres=gres, chips_per_task=first.chips,
                                cpus_per_task=threads * first.chips, array=array, output=output,
                                command="exec " + shlex.join(command), site=site))
    for job in jobs:
        write_text_atomic(job.dir / JOB_ID_FILE, f"{job_id}_{job.name[len('task'):]}\n" if array is not None
                          else f"{job_id}\n")


# What a shared run folder's path may hold: it reaches sbatch's --output, where '%' is a pattern, and every
# node's argv. No '..': each folder in it is checked on the way down.
SHARED_PATH = re.compile(r"(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+")


def shared_dir_problem(path: str) -> Optional[str]:
    """What makes ``path`` unfit as the shared run folder for whoever runs this (the runner user): None when it
    is fit. Every task of a run, on any node, writes there and the kit fetches from there, so nobody but this
    user (or root) may change what it holds: the folder is this user's and no one else may write it, no folder
    above it can be swapped by anyone else (writable by others and not sticky), and none of them is a link,
    whose target a check here would not see change."""
    if not SHARED_PATH.fullmatch(path) or "/../" in f"{path}/" or "/./" in f"{path}/":
        return (f"the shared run folder {path!r} (sophon_slurm_shared_run_dir) is not a plain absolute path: use "
                "letters, digits and /._+- only, without . or .. parts")
    me_id = os.geteuid()
    for part in [Path(path), *Path(path).parents]:
        try:
            info = os.lstat(part)
        except OSError as exc:
            return (f"the shared run folder {path} (sophon_slurm_shared_run_dir) is not usable here: {part}: "
                    f"{exc.strerror}; mount the shared storage there on every compute node and create the folder, "
                    f"owned by {me()}")
        if stat.S_ISLNK(info.st_mode):
            return (f"{part} is a link: give sophon_slurm_shared_run_dir as the real path of the shared run folder "
                    f"({os.path.realpath(part)})")
        if part == Path(path):
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != me_id or info.st_mode & 0o022:
                return (f"the shared run folder {path} must be a folder of {me()} that no one else may write "
                        f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}): chown {me()} {path}; "
                        f"chmod go-w {path}")
        elif info.st_uid not in (0, me_id) or (info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX):
            return (f"{part}, above the shared run folder {path}, can be changed by another user than {me()} or root "
                    f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}), who could swap the run folder "
                    f"for one of theirs: chmod go-w {part}, or choose another place")
    return None


def job_id_of(job_dir: Path) -> str:
    """The id submit_jobs recorded for a job (the runner user's file: read bounded, as every such file)."""
    return (read_limited(job_dir / JOB_ID_FILE, 64) or b"").decode(errors="replace").strip()


def parse_queue(text: str) -> Dict[str, Dict[str, str]]:
    """``squeue --array -o %i|%T|%r`` lines: each task's id (``123_0``, or ``123``) to its state and reason."""
    queue = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 3:
            queue[fields[0]] = {"state": fields[1], "reason": fields[2]}
    return queue


def queue(name: str) -> Dict[str, Dict[str, str]]:
    """This user's tasks of the named job still in the queue (a task that ended is no longer listed)."""
    return parse_queue(slurm("squeue", "--noheader", "--array", f"--user={me()}", f"--name={name}", "--format=%i|%T|%r"))


def given_queue(names: str, lines: List[str]) -> Optional[Dict[str, Queue]]:
    """status --slurm-queue-names and --slurm-queue: each named job's tasks from the playbook's squeue lines
    (name|id|state|reason[|user]); a name without lines has none left in the queue."""
    if not names:
        return None
    queues: Dict[str, Queue] = {name: {} for name in names.split(",") if name}
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) >= 4 and fields[0] in queues:
            queues[fields[0]][fields[1]] = {"state": fields[2], "reason": fields[3]}
    return queues


# What train_status.yml's one sacct of a pass asks for, in this order (--parsable2, --allocations: one line
# per task, none per step). AllocTRES counts the chips as gres/<name>=N where slurm.conf's
# AccountingStorageTRES names the chips' resource (role sophon_slurm does).
ACCT_FIELDS = ("JobID", "JobName", "State", "Elapsed", "NodeList", "AllocTRES", "ExitCode")
# A task's id as submit_jobs records it: the runner user's file, checked before it goes into sacct's --jobs.
TASK_ID = re.compile(r"[0-9]{1,12}(?:_[0-9]{1,9})?")
Accounting = Dict[str, Dict[str, Any]]  # a task's id to what Slurm's accounting recorded of it


def elapsed_seconds(text: str) -> Optional[int]:
    """sacct's Elapsed, ``[D-][HH:]MM:SS`` (``1-02:03:04``, ``00:00:35``), in seconds; None if unreadable."""
    found = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not found:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def tres_chips(alloc_tres: str, gres: str) -> Optional[int]:
    """The chips in AllocTRES (``billing=1,cpu=1,gres/tpu=1,node=1``): gres/<gres>=N, else the sum of its typed
    counts (gres/<gres>:<type>=N); None when the cluster does not account the resource."""
    counts: Dict[str, int] = {}
    for item in alloc_tres.split(","):
        key, _, value = item.partition("=")
        if value.isdigit() and (key == f"gres/{gres}" or key.startswith(f"gres/{gres}:")):
            counts[key] = int(value)
    if f"gres/{gres}" in counts:
        return counts[f"gres/{gres}"]
    return sum(counts.values()) if counts else None


def parse_acct(lines: Sequence[str], gres: str) -> Accounting:
    """``sacct --parsable2 --format=<ACCT_FIELDS>`` lines: each task's state (CANCELLED, not ``CANCELLED by
    1000``), elapsed seconds, node, chips and exit code. Lines of another shape are skipped: a task sacct does
    not list is left to the host's own files."""
    records: Accounting = {}
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) != len(ACCT_FIELDS) or not TASK_ID.fullmatch(fields[0]):
            continue
        record = dict(zip(ACCT_FIELDS, fields))
        records[record["JobID"]] = {"state": (record["State"].split() or [""])[0],
                                    "elapsed_s": elapsed_seconds(record["Elapsed"]),
                                    "node": record["NodeList"], "chips": tres_chips(record["AllocTRES"], gres),
                                    "exit_code": record["ExitCode"]}
    return records


def describe_acct(record: Dict[str, Any]) -> str:
    """What sacct says of a task, for the status line: ``sacct COMPLETED on node-a, 1 chip, 35 s, exit 0:0``."""
    chips, elapsed = record.get("chips"), record.get("elapsed_s")
    return ", ".join([f"sacct {record.get('state') or '?'}" + (f" on {record['node']}" if record.get("node") else ""),
                      "? chips" if chips is None else f"{chips} chip{'s' if chips != 1 else ''}",
                      "? s" if elapsed is None else f"{elapsed} s", f"exit {record.get('exit_code') or '?'}"])


def task_state(entry: Dict[str, str]) -> Dict[str, Any]:
    """A task's state from its queue entry (empty when squeue no longer lists it): queued (with Slurm's
    reason), running, or gone."""
    state = entry.get("state", "")
    if state in QUEUED_STATES:
        return {"state": "queued", "reason": entry["reason"]}
    return {"state": "running" if state in RUNNING_STATES else "gone"}


def cancel(name: str) -> None:
    """Drop the named job's queued tasks, and send SIGTERM to every process of its running ones (--full: the
    batch step too), as systemctl stop does to a unit: the trainer saves a checkpoint and exits 130, which
    slurm-task records. A plain scancel would end the task in Slurm's books at once, and squeue would stop
    listing it while its trainer still saves (and SIGKILL it after KillWait)."""
    slurm("scancel", f"--user={me()}", f"--name={name}", "--state=PENDING")
    slurm("scancel", f"--user={me()}", f"--name={name}", "--state=RUNNING", "--signal=TERM", "--full")
