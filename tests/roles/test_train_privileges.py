"""The runner user cannot make root follow a link, and training jobs are systemd services (issue 9, item 1).

`sophon-sd` loads untrusted model files. It used to own /var/lib/sophon-sd and everything under
it, and root followed links there: the job tool's mkdir + os.chown, and the `file` tasks of
train.yml and sophon_host_env. Here, on one systemd test host, the runner user plants links to
root-owned folders before `make train` (train.yml) and before a rerun of the role that creates the
kit's folders; root's folders and files must come through unchanged (owner, mode, content). Then a
TINY run shows a job as a systemd unit of the runner user: `systemctl stop` leaves a checkpoint
(SIGTERM) and the next `make train` resumes from it.

Last, the results are fetched as the runner user: train.log swapped for a link to /etc/shadow
between train.yml's find and its fetch (when find opens the validation folder) cannot be read, so
/etc/shadow's content never reaches the control node.

To stay fast the host gets no pip installs: its venv borrows the control node's ML venv's
site-packages (bind-mounted read-only), and only the roles sophon_host_env and sophon_runners run.
The plays become root (and the runner user) through sudo, as on a fleet whose operators log in as
themselves; the other test hosts log in as root without become.
"""

from __future__ import annotations

import json

import pytest

from conftest import ML_SITE_MOUNT, borrow_ml_venv

PODMAN_OPTIONS = ML_SITE_MOUNT
HOST_ENV_ONLY = {"sophon_sd_sophgo_runtime": False, "sophon_host_env_assets_source": "hub", "ansible_become": True}
STATE = "/var/lib/sophon-sd"
RUNS = f"{STATE}/runs"
# Root's folders and files that planted links point at: owner, group, mode and content must not change.
ROOT_PATHS = ["/etc/sophon-sd", "/etc/sophon-sd/env", "/opt/sophon-sd/runners", "/opt/sophon-sd/runners/sdkit_job.py",
              "/etc/shadow"]
# Each poll round costs a second or so of CPU; a run's end is seen within one interval.
TINY_RUN = {"sophon_sd_train_tiny": True, "sophon_sd_train_poll_interval": 10, "ansible_become": True}
# Run as the runner user on the host: once the job has finished, waits for something to open its
# validation folder (train.yml's find walking it), then swaps train.log, fetched last, for a link to
# /etc/shadow, before the fetch loop reaches it.
SWAP_AFTER_FIND = """
import ctypes, os, sys, time
job = sys.argv[1]
while not (os.path.exists(job + "/exit_status") and open(job + "/exit_status").read().strip() == "0"):
    time.sleep(0.05)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, (job + "/output/validation").encode(), 0x20) >= 0  # IN_OPEN
print("watching", flush=True)
os.read(fd, 4096)
os.symlink("/etc/shadow", job + "/.swap")
os.replace(job + "/.swap", job + "/train.log")
print("swapped", flush=True)
"""


def snapshot(host) -> dict[str, str]:
    return {path: host.check_output(f"stat -c '%U:%G %a' {path}; test -d {path} || sha256sum < {path}")
            for path in ROOT_PATHS}


def as_runner(host, script: str) -> None:
    host.check_output(f"runuser -u sophon-sd -- sh -ec '{script}'")


@pytest.fixture(scope="module")
def host(throwaway_host):
    """The runner user, the env file and the runners; a venv on Debian's python3 over the ML venv's packages."""
    throwaway_host.check_output("apt-get update -qq && apt-get install -y -qq sudo make >/dev/null")
    borrow_ml_venv(throwaway_host)
    for playbook, tags in (("runtime.yml", "host_env"), ("runners.yml", None)):
        result = throwaway_host.play(playbook, HOST_ENV_ONLY, tags=tags)
        assert not result.failed, result.output[-3000:]
    return throwaway_host


def test_a_rerun_hands_the_state_dir_back_to_root_and_follows_no_link(host):
    # A host provisioned before: the state dir was the runner's, who swapped its folders for links.
    host.check_output(f"chown -R sophon-sd:sophon-sd {STATE} && chmod 0750 {STATE}")
    as_runner(host, f"cd {STATE}; mv outputs outputs.old; ln -s /opt/sophon-sd/runners outputs; "
                    f"mv huggingface huggingface.old; ln -s /etc/sophon-sd huggingface")
    before = snapshot(host)

    result = host.play("runtime.yml", HOST_ENV_ONLY, tags="host_env")

    assert snapshot(host) == before
    assert result.failed
    assert (f"{STATE}/outputs on {host.name} is a symbolic link (to /opt/sophon-sd/runners), where the kit keeps "
            "a folder") in result.output, result.output[-3000:]
    assert host.check_output(f"stat -c '%U:%G %a' {STATE}").strip() == "root:root 755"

    # With the links gone, the rerun completes the repair.
    host.check_output(f"cd {STATE} && rm outputs huggingface && mv outputs.old outputs && mv huggingface.old huggingface")
    result = host.play("runtime.yml", HOST_ENV_ONLY, tags="host_env")
    assert not result.failed, result.output[-3000:]
    owners = host.check_output(f"stat -c '%n %U %a' {STATE} {STATE}/runs {STATE}/outputs").split("\n")
    assert owners[:3] == [f"{STATE} root 755", f"{STATE}/runs sophon-sd 755", f"{STATE}/outputs sophon-sd 750"]
    # The runner user can no longer replace the folders below the state dir.
    assert host.run(f"runuser -u sophon-sd -- mv {RUNS} {STATE}/x").returncode != 0


def test_links_in_a_run_folder_do_not_reach_roots_files(host, tmp_path):
    as_runner(host, f"mkdir -p {RUNS}/planted; ln -s /etc/sophon-sd {RUNS}/planted/cpu")
    before = snapshot(host)

    result = host.play("train.yml", {**TINY_RUN, "sophon_sd_train_run_id": "planted",
                                     "sophon_sd_train_fetch_dir": str(tmp_path)})

    assert snapshot(host) == before
    assert result.failed
    assert "error: PermissionError: [Errno 13] Permission denied: '/var/lib/sophon-sd/runs/planted/cpu/" \
        in result.output, result.output[-3000:]
    assert not host.exists("/etc/sophon-sd/job.json")


def test_model_values_reach_the_trainer_as_argv_only(host, tmp_path):
    """MODEL / DATASET went to root's `make train-flags` as make variables: a value is make syntax there
    ($(shell ...) runs as root), and its recipe put them into bash inside double quotes."""
    model = "$(shell touch /pwned)"
    result = host.play("train.yml", {"ansible_become": True, "sophon_sd_train_run_id": "quoting",
                                     "sophon_sd_train_model": model, "sophon_sd_train_fetch_dir": str(tmp_path)})
    assert not host.exists("/pwned")
    assert result.failed
    assert f"error: --model '{model}' (make train MODEL=...) is not usable" in result.output, result.output[-3000:]


def test_a_link_at_the_log_path_is_not_followed(host, tmp_path):
    """systemd opens a StandardOutput=append: file as root: train.log, the runner user's, planted as a link to
    root's env file, would get the trainer's output appended. The unit's launch opens it as the runner user
    without following links: the job fails, and root's files stay as they were."""
    as_runner(host, f"mkdir -p {RUNS}/loglink/cpu; ln -s /etc/sophon-sd/env {RUNS}/loglink/cpu/train.log")
    before = snapshot(host)

    result = host.play("train.yml", {**TINY_RUN, "sophon_sd_train_run_id": "loglink",
                                     "sophon_sd_train_fetch_dir": str(tmp_path)})

    assert snapshot(host) == before
    assert result.failed and "cpu: failed" in result.output, result.output[-3000:]
    assert "Too many levels of symbolic links" in host.check_output(
        "journalctl -u sdkit-train-loglink-cpu.service --no-pager"), result.output[-3000:]


def unit_state(host, unit: str) -> dict[str, str]:
    shown = host.check_output(f"systemctl show -p ActiveState,User,KillMode,KillSignal,TimeoutStopUSec {unit}")
    return dict(line.split("=", 1) for line in shown.splitlines())


UNIT_RUN = {**TINY_RUN, "sophon_sd_train_run_id": "unit",
            # Validation only at the end, and no checkpoint but the one SIGTERM makes; steps enough to
            # be still running when make train-cancel stops it (the first make train, out of rounds, also
            # fetches the running job's files before it ends).
            "sophon_sd_train_args": "--max_train_steps=80 --checkpointing_steps=1000 --validation_epochs=1000"}
UNIT = "sdkit-train-unit-cpu.service"
UNIT_JOB = f"{RUNS}/unit/cpu"


def test_a_job_is_a_unit_of_the_runner_user_that_stops_with_a_checkpoint_and_resumes(host, tmp_path):
    run = {**UNIT_RUN, "sophon_sd_train_fetch_dir": str(tmp_path)}

    first = host.play("train.yml", {**run, "sophon_sd_train_poll_rounds": 1, "sophon_sd_train_poll_interval": 1})
    assert "rerun the same command to poll again" in first.output, first.output[-3000:]
    state = unit_state(host, UNIT)
    assert (state["ActiveState"], state["User"], state["KillMode"], state["KillSignal"]) == ("active", "sophon-sd",
                                                                                             "mixed", "15")
    # systemd owns the trainer: the unit's main process is train_lora.py itself, as the runner user.
    main_pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}").strip()
    assert host.check_output(f"ps -o user= -p {main_pid}").strip() == "sophon-sd"
    assert "train_lora.py" in host.check_output(f"ps -o args= -p {main_pid}")
    # Once a step is done, stop it as an operator would: make train-cancel, which is systemctl stop (as a
    # shutdown is) and waits for the checkpoint.
    host.check_output(f"for i in $(seq 600); do test -s {UNIT_JOB}/output/metrics.jsonl && break; sleep 0.5; done")
    # Held still until the cancel: on a quiet machine the 80 steps end in seconds, before the cancel's play
    # has started. systemd sends SIGCONT after its SIGTERM, so the held trainer still gets to checkpoint.
    host.check_output(f"kill -STOP {main_pid}")
    cancelled = host.play("train_cancel.yml", run)
    assert not cancelled.failed and f"{UNIT}: asked to stop" in cancelled.output, cancelled.output[-3000:]
    assert host.check_output(f"cat {UNIT_JOB}/exit_status").strip() == "130", cancelled.output[-2000:]
    status = host.play("train_status.yml", run)
    assert "cpu: stopped, step" in status.output, status.output[-3000:]
    checkpoint = host.check_output(f"ls -d {UNIT_JOB}/output/checkpoint-*").strip().rsplit("/", 1)[1]
    assert "Started" in host.check_output(f"journalctl -u {UNIT} --no-pager")

    second = host.play("train.yml", run)
    assert not second.failed, second.output[-3000:]
    assert f"cpu: resumed from {checkpoint}" in second.output
    status = json.loads((tmp_path / "unit" / host.name / "status.json").read_text())
    assert [(j["state"], j["attempts"]) for j in status["jobs"]] == [("finished", 2)]
    # Fetched (as the runner user).
    assert (tmp_path / "unit" / host.name / "cpu" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    assert "SIGTERM received: saving a checkpoint" in (tmp_path / "unit" / host.name / "cpu" / "train.log").read_text()


def test_a_result_swapped_for_a_link_to_shadow_is_not_fetched(host, tmp_path):
    """train.log becomes a link to /etc/shadow between train.yml's find and its fetch (issue 9, item 5)."""
    swapper = tmp_path / "swap.py"
    swapper.write_text(SWAP_AFTER_FIND)
    host.put(swapper, "/tmp/swap.py")
    host.check_output(f"chmod 0644 /tmp/swap.py && systemd-run --quiet --unit=sdkit-test-swap --uid=sophon-sd "
                      f"--gid=sophon-sd python3 /tmp/swap.py {UNIT_JOB}")

    # The run of the test above again: nothing to start once it has finished, only results to fetch.
    result = host.play("train.yml", {**UNIT_RUN, "sophon_sd_train_fetch_dir": str(tmp_path)})

    assert "swapped" in host.check_output("journalctl -u sdkit-test-swap --no-pager"), result.output[-3000:]
    assert host.check_output(f"readlink {UNIT_JOB}/train.log").strip() == "/etc/shadow"
    shadow = host.check_output("cat /etc/shadow").splitlines()[0]
    assert all(shadow not in path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file())
    assert result.failed and "train.log" in result.output, result.output[-3000:]
