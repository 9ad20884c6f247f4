"""Bad input to `make train`: values reach playbooks/train.yml as data, and a bad one stops the run
with one message before any host is contacted (the checks run on the control node)."""

import os
import subprocess

from conftest import REPO


def make_train(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    # A host that does not exist: reaching any host at all would fail differently.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("sophon_sd:\n  hosts:\n    bm-node-unreachable:\n")
    arguments = [f"{name}={value}" for name, value in variables.items()]
    return subprocess.run(["make", "-C", str(REPO), "train", f"INVENTORY={inventory}", *arguments],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})


def test_a_quote_in_run_id_cannot_add_a_variable(tmp_path):
    """Issue 9, item 7: RUN_ID='x sophon_sd_train_user=root' used to set sophon_sd_train_user."""
    result = make_train(tmp_path, RUN_ID="x sophon_sd_train_user=root")
    assert result.returncode != 0
    assert "sophon_sd_train_run_id (make train RUN_ID=...) is 'x sophon_sd_train_user=root'" in result.stdout, \
        result.stdout[-3000:]
    assert "unreachable=1" not in result.stdout, "a host was contacted"


def test_precision_comes_through_as_one_value(tmp_path):
    """The other make variables reach the playbook the same way, whole."""
    result = make_train(tmp_path, RUN_ID="r1", PRECISION="fp16 -e sophon_sd_train_user=root")
    assert result.returncode != 0
    assert "sophon_sd_train_precision (PRECISION) is 'fp16 -e sophon_sd_train_user=root'" in result.stdout, \
        result.stdout[-3000:]


def test_slurm_without_a_controller_says_where_to_put_one(tmp_path):
    """Issue 11: SCHEDULER=slurm with no host in the group slurm_controller."""
    result = make_train(tmp_path, RUN_ID="r1", SCHEDULER="slurm")
    assert result.returncode != 0
    assert "sophon_sd_train_scheduler (SCHEDULER) is slurm, but the inventory has no Slurm controller: put one host " \
           "in the group slurm_controller" in result.stdout, result.stdout[-3000:]
    assert "unreachable=1" not in result.stdout, "a host was contacted"


def test_an_unknown_scheduler_is_refused(tmp_path):
    result = make_train(tmp_path, RUN_ID="r1", SCHEDULER="pbs")
    assert result.returncode != 0
    assert "sophon_sd_train_scheduler (SCHEDULER) is 'pbs': use systemd or slurm" in result.stdout, result.stdout[-3000:]


def test_a_hub_token_in_train_args_is_refused_before_any_host(tmp_path):
    """Issue 21 item 4: TRAIN_ARGS='--hub_token=X' put the token into root's argv on every host (the job
    tool's command line), where every local user and execve audit logs see it. Quotes do not hide it."""
    token = "hf_sdkitTrainArgsToken0123"
    result = make_train(tmp_path, RUN_ID="r1", TRAIN_ARGS=f"--seed=1 --hub_to'ken' {token}")
    assert result.returncode != 0
    assert "sophon_sd_train_args (TRAIN_ARGS) holds --hub_token: a token on a command line is in every process " \
           "list of the host" in result.stdout, result.stdout[-3000:]
    assert "SOPHON_SD_HUB_TOKEN_FILE" in result.stdout
    assert token not in result.stdout + result.stderr
    assert "unreachable=1" not in result.stdout, "a host was contacted"


def test_slurm_args_outside_the_sites_list_are_refused_before_any_host(tmp_path):
    """Issue 23: SLURM_ARGS passes a site's partition, account, QoS and time limit, and nothing else: the
    rest of sbatch's command line (output file, node, wrapped command) is the kit's."""
    result = make_train(tmp_path, RUN_ID="r1", SCHEDULER="slurm", SLURM_ARGS="--partition=tpu --output=/etc/motd")
    assert result.returncode != 0
    assert "sophon_sd_train_slurm_args (SLURM_ARGS) is '--partition=tpu --output=/etc/motd': give only --partition=," \
           in result.stdout, result.stdout[-3000:]
    assert "unreachable=1" not in result.stdout, "a host was contacted"
