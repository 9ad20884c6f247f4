"""The kit's shared facts, set where a new user sets them, reach every role, train.yml and smoke.yml (issue 22).

They used to live in playbooks/group_vars/all.yml, which Ansible ranks above an inventory's group_vars/all
and its YAML `vars:`: an inventory's sophon_sd_profile or sophon_sd_root there was silently replaced by the
kit's, and train.yml and smoke.yml named the runner user sophon-sd whatever the inventory said. Now they are
role sophon_sd's defaults, the lowest precedence.

One host and one inventory, which names its own root, venv, state directory, runner user and profile: some in
its group_vars/all, the others in its YAML `vars:` (the lowest place an inventory can set them; anything
the kit set above it would beat group_vars/all too, so each place is tried with one run, not one each). It
provisions the runner user and the runners (runtime.yml --tags host_env, runners.yml), runs smoke.yml and a
TINY train.yml, all with nothing but the inventory (no -e for any of these facts), and the host shows the
inventory's names: the user exists and owns the smoke outputs and the run's job folder, the env file and the
host Makefile name the inventory's paths and user, and the results come back. On the old layout the run
stops at the preflight: the kit's profile (tutorial-2023) replaced the inventory's, and the test bundle is
built for tutorial-2023-cpu only.

To stay fast the host gets no pip installs: each inventory's venv borrows the control node's ML venv's
site-packages (bind-mounted read-only), as in test_train_privileges.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ML_SITE_MOUNT, REPO, TEST_PROFILE, PlayResult, SshHost, bundle_fingerprint

PODMAN_OPTIONS = ML_SITE_MOUNT
# The facts, none of them the kit's default, and where the inventory sets each.
FACTS = {"sophon_sd_root": "/srv/kit-iv", "sophon_sd_venv": "/srv/venv-iv", "sophon_sd_state_dir": "/var/lib/kit-gva",
         "sophon_sd_user": "trainer-iv", "sophon_sd_profile": TEST_PROFILE}
IN_GROUP_VARS_ALL = {"sophon_sd_state_dir", "sophon_sd_profile"}
# What else these hosts need (no chips, models from the hub, sudo as on a fleet), set beside the facts.
SETTINGS = {"sophon_sd_sophgo_runtime": False, "sophon_host_env_assets_source": "hub", "ansible_become": True}


def write_inventory(host: SshHost, directory: Path) -> Path:
    """An inventory folder whose group all gets some facts from group_vars/all and the others from its `vars:`."""
    in_vars = {name: value for name, value in FACTS.items() if name not in IN_GROUP_VARS_ALL}
    in_group_vars = {name: FACTS[name] for name in IN_GROUP_VARS_ALL}
    inventory = {"all": {"children": {"sophon_sd": {"hosts": {host.name: host.hosts.inventory_vars(host.name)}}},
                         "vars": {**in_vars, **SETTINGS, "sophon_sd_bundle_signing_fingerprint": bundle_fingerprint()}}}
    (directory / "group_vars" / "all").mkdir(parents=True)
    (directory / "group_vars" / "all" / "main.yml").write_text(yaml.safe_dump(in_group_vars))
    (directory / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return directory


def play(host: SshHost, inventory: Path, playbook: str, *args: str, env: dict[str, str] | None = None) -> PlayResult:
    """ansible-playbook as an operator runs it: the inventory alone says where the kit lives and who runs it."""
    command = ["ansible-playbook", str(REPO / "playbooks" / playbook), "-i", str(inventory),
               "-e", f"sophon_sd_hosts={host.name}", *args]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return PlayResult(result.returncode, result.stdout + result.stderr)


def borrow_ml_venv_at(host: SshHost, venv: str) -> None:
    """As conftest.borrow_ml_venv, at the inventory's venv."""
    host.check_output(f"python3 -m venv --without-pip {venv} && "
                      "echo 'import site; site.addsitedir(\"/srv/ml-site-packages\")' "
                      f"> {venv}/lib/python3.11/site-packages/ml-venv.pth")


@pytest.fixture(scope="module")
def host(throwaway_host: SshHost) -> SshHost:
    throwaway_host.check_output("apt-get update -qq && apt-get install -y -qq sudo make >/dev/null")
    return throwaway_host


def test_inventory_facts_reach_the_roles_smoke_and_train(host: SshHost, tmp_path: Path):
    root, venv, state, user = (FACTS["sophon_sd_root"], FACTS["sophon_sd_venv"], FACTS["sophon_sd_state_dir"],
                               FACTS["sophon_sd_user"])
    inventory = write_inventory(host, tmp_path / "inventory")
    borrow_ml_venv_at(host, venv)

    # The roles: sophon_host_env creates the inventory's user and writes its paths; sophon_runners deploys
    # under its root a Makefile that runs targets as that user.
    for playbook, args in (("runtime.yml", ["--tags", "host_env"]), ("runners.yml", [])):
        result = play(host, inventory, playbook, *args)
        assert not result.failed, f"{playbook}: {result.output[-3000:]}"
    assert host.check_output(f"id -un {user}").strip() == user
    env_file = host.check_output("cat /etc/sophon-sd/env").splitlines()
    for line in (f"SOPHON_SD_ROOT={root}", f"SOPHON_SD_VENV={venv}", f"SOPHON_SD_STATE_DIR={state}",
                 f"SOPHON_SD_USER={user}", f"SOPHON_SD_PROFILE={TEST_PROFILE}"):
        assert line in env_file, f"{line} not in the env file: {env_file}"
    assert f"sdkit_as_runner.py {user} --" in host.check_output(f"cat {root}/Makefile")
    assert host.check_output(f"stat -c %U {state}/runs").strip() == user

    # smoke.yml: make smoke under the inventory's root, its outputs found and fetched as the inventory's user.
    fetched = tmp_path / "smoke"
    result = play(host, inventory, "smoke.yml", "-e", f"sophon_sd_smoke_fetch_dir={fetched}")
    assert not result.failed, f"smoke.yml: {result.output[-3000:]}"
    assert host.check_output(f"stat -c %U {state}/outputs/smoke/lora").strip() == user
    assert list((fetched / host.name).rglob("*.safetensors")), "smoke.yml fetched no LoRA weights"

    # train.yml: the job tool under the inventory's root, with its venv's python, runs the job as its user.
    runs = tmp_path / "runs"
    result = play(host, inventory, "train.yml", "-e", json.dumps({"sophon_sd_train_fetch_dir": str(runs),
                                                                    "sophon_sd_train_poll_interval": 5}),
                  env={"RUN_ID": "prec", "TINY": "1"})
    assert not result.failed, f"train.yml: {result.output[-3000:]}"
    job = f"{state}/runs/prec/cpu"
    assert host.check_output(f"stat -c %U {job}").strip() == user
    assert host.check_output(f"cat {job}/job.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"argv\"][0])'"
                             ).strip() == f"{venv}/bin/python"
    assert (runs / "prec" / host.name / "cpu" / "metrics.jsonl").is_file()
