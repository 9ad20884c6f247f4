"""The kit's own cluster checked as a whole (roles/sophon_slurm/module_utils/sophon_slurm_checks.py, run by the
action plugin sophon_slurm_cluster): each message as the role printed it when the check was Jinja in
tasks/check.yml, and the node lines slurm.conf gets when a run leaves a compute host out.
"""

from __future__ import annotations

import json
import os

import pytest
from sophon_slurm_checks import cluster_plan, munge_key_problem

USER = "sophon-sd"


def describe(name: str, *, claimed: int = 0, usable: tuple = (), user: str = "990:990", addr: str = "") -> dict:
    """A host as check.yml's set_fact describes it."""
    return {"name": name, "addr": addr or f"10.0.0.{len(name)}", "cpus": 8, "memory_mb": 15000, "claimed": claimed,
            "usable": list(usable), "dev_nodes": [f"/dev/bm-sophon{index}" for index in usable], "user": user}


@pytest.fixture()
def key(tmp_path) -> str:
    path = tmp_path / "munge.key"
    path.write_bytes(os.urandom(1024))
    path.chmod(0o600)
    return str(path)


def plan(key: str, *, controllers=("ctl",), compute=("bm-a", "bm-b"), play=None, hosts=None, record=None) -> dict:
    compute = list(compute)
    play = list(controllers) + compute if play is None else play
    if hosts is None:
        hosts = {"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=2, usable=(0, 1)),
                 "bm-b": describe("bm-b", claimed=2, usable=(0, 2))}
    return cluster_plan(controller_group="slurm_controller", compute_group="slurm_compute", controllers=list(controllers),
                        compute_hosts=compute, play_hosts=play, hosts={h: d for h, d in hosts.items() if h in play},
                        user=USER, munge_key_file=key, munge_key_min_bytes=32,
                        record_text=json.dumps(record) if record is not None else "",
                        record_path="/etc/slurm/sophon-sd-nodes.json")


def test_a_whole_healthy_cluster_has_no_problem_and_lists_every_compute_host(key):
    found = plan(key)
    assert found["problems"] == [] and found["warnings"] == []
    assert [node["name"] for node in found["nodes"]] == ["bm-a", "bm-b"]
    assert found["nodes"][1] == {"name": "bm-b", "addr": "10.0.0.4", "cpus": 8, "memory_mb": 15000, "chips": [0, 2],
                                 "user": "990:990"}
    assert found["controller"]["name"] == "ctl" and found["ids"] == ["990", "990"]
    assert found["record"] == {"nodes": {"bm-a": found["nodes"][0], "bm-b": found["nodes"][1]}}


def test_fewer_chips_claimed_than_usable_lists_the_first_ones(key):
    hosts = {"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=1, usable=(2, 0)),
             "bm-b": describe("bm-b", claimed=0, usable=(0,))}
    assert [node["chips"] for node in plan(key, hosts=hosts)["nodes"]] == [[0], []]


def test_no_controller(key):
    assert plan(key, controllers=())["problems"] == [
        "bm-a, bm-b are in group slurm_compute but no host is in group slurm_controller: add one host to group "
        "slurm_controller in the inventory (it runs slurmctld, the controller) and rerun."]


def test_two_controllers(key):
    hosts = {"ctl": describe("ctl"), "ctl2": describe("ctl2"), "bm-a": describe("bm-a", claimed=2, usable=(0, 1)),
             "bm-b": describe("bm-b", claimed=2, usable=(0, 1))}
    assert plan(key, controllers=("ctl", "ctl2"), hosts=hosts)["problems"] == [
        "Group slurm_controller has 2 hosts (ctl, ctl2): Slurm has one controller. Keep one host in it and rerun."]


def test_more_chips_claimed_than_usable(key):
    hosts = {"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=3, usable=(0, 1)),
             "bm-b": {**describe("bm-b", claimed=1), "dev_nodes": []}}
    assert plan(key, hosts=hosts)["problems"] == [
        "bm-a claims 3 chip(s) (sophon_slurm_chips) but its device fact shows 2 usable (/dev/bm-sophon0, "
        "/dev/bm-sophon1): Slurm would hand out chips the host does not have. Set sophon_slurm_chips for bm-a to at "
        "most 2 (or leave it unset), or check its cards (lspci -d 1f1c:, bm-smi) and rerun.",
        "bm-b claims 1 chip(s) (sophon_slurm_chips) but its device fact shows 0 usable (no /dev/bm-sophon*): Slurm "
        "would hand out chips the host does not have. Set sophon_slurm_chips for bm-b to at most 0 (or leave it "
        "unset), or check its cards (lspci -d 1f1c:, bm-smi) and rerun."]


def test_a_compute_host_without_the_runner_user(key):
    hosts = {"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=2, usable=(0, 1), user=""),
             "bm-b": describe("bm-b", claimed=2, usable=(0, 1))}
    assert plan(key, hosts=hosts)["problems"] == [
        "bm-a has no user sophon-sd, which Slurm runs the training jobs as: provision it with playbooks/site.yml first "
        "(role sophon_host_env creates the user)."]


def test_the_runner_users_uid_differs(key):
    hosts = {"ctl": describe("ctl", user="1001:1001"), "bm-a": describe("bm-a", claimed=2, usable=(0, 1)),
             "bm-b": describe("bm-b", claimed=2, usable=(0, 1))}
    assert plan(key, hosts=hosts)["problems"] == [
        "The runner user sophon-sd has different uid:gid across the cluster (ctl 1001:1001, bm-a 990:990, bm-b "
        "990:990), and Slurm runs jobs by numeric uid: give it the same uid and gid on every host (usermod -u, "
        "groupmod -g, then chown its files) and rerun."]


def key_message(path: str, what: str) -> str:
    return (f"The cluster's munge key {path} (sophon_slurm_munge_key_file) on the control node is {what}: run "
            "`make slurm-key` (creates it\nonce, mode 0600), or point sophon_slurm_munge_key_file at the cluster's key, "
            "and rerun.")


def test_the_munge_key_on_the_control_node(tmp_path, key):
    assert munge_key_problem(key, 32) is None
    assert munge_key_problem(str(tmp_path / "none"), 32) == key_message(str(tmp_path / "none"), "missing")
    assert munge_key_problem(str(tmp_path), 32) == key_message(str(tmp_path), "not a regular file")
    (tmp_path / "link").symlink_to(key)
    assert munge_key_problem(str(tmp_path / "link"), 32) == key_message(str(tmp_path / "link"), "not a regular file")
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    assert munge_key_problem(str(short), 32) == key_message(str(short), "shorter than 32 bytes")
    os.chmod(key, 0o640)
    assert munge_key_problem(key, 32) == key_message(key, "readable by other users (mode 0640)")
    if os.geteuid() != 0:  # root reads a file of mode 0000 all the same
        os.chmod(key, 0o000)
        assert munge_key_problem(key, 32) == key_message(key, "not readable")
    # And in the whole check, after the others, as the role ordered them.
    assert plan(str(tmp_path / "none"))["problems"] == [key_message(str(tmp_path / "none"), "missing")]


def test_a_hostname_or_address_that_would_add_settings_to_slurm_conf_is_refused(key):
    """A compromised compute host's facts reach slurm.conf, which every host (the controller too) runs as
    root: a newline or a space in its name would add a line such as PrologSlurmctld=..."""
    hosts = {"ctl": describe("ctl", user=""),
             "bm-a": describe("bm-a\nPrologSlurmctld=/tmp/x", claimed=2, usable=(0, 1)),
             "bm-b": describe("bm-b", claimed=2, usable=(0, 1), addr="10.0.0.4 Feature=x")}
    assert plan(key, hosts=hosts)["problems"] == [
        "bm-a's hostname 'bm-a\\nPrologSlurmctld=/tmp/x' cannot go into slurm.conf's NodeName line (letters, digits "
        "and ._- only): fix the host's hostname and rerun.",
        "bm-b's address '10.0.0.4 Feature=x' cannot go into slurm.conf's NodeName line (letters, digits and .:_- "
        "only): fix the host's sophon_slurm_node_addr and rerun."]


# A run that leaves a host out (issue 23 item 5): it does not stop the others, and slurm.conf keeps what is known.

def test_a_left_out_compute_host_keeps_its_recorded_node_line(key):
    recorded = plan(key)["record"]
    found = plan(key, play=["ctl", "bm-a"], record=recorded)
    assert found["problems"] == []
    assert found["nodes"] == plan(key)["nodes"]
    assert found["record"] == recorded
    assert found["warnings"] == [
        "bm-b in group slurm_compute is not in this run (unreachable, failed, or left out by --limit): slurm.conf keeps "
        "its node line from the run that last configured it (bm-b, 2 chip(s)). Run the Slurm play with it when it is "
        "back, to bring its own files up to date."]


def test_a_compute_host_in_this_run_is_described_afresh_over_its_record(key):
    recorded = plan(key)["record"]
    hosts = {"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=1, usable=(0, 1))}
    found = plan(key, play=["ctl", "bm-a"], hosts=hosts, record=recorded)
    assert [node["chips"] for node in found["nodes"]] == [[0], [0, 2]]


def test_a_left_out_compute_host_never_configured_is_left_out_with_a_warning(key):
    found = plan(key, play=["ctl", "bm-a"])
    assert found["problems"] == []
    assert [node["name"] for node in found["nodes"]] == ["bm-a"]
    assert found["warnings"] == [
        "bm-b in group slurm_compute is not in this run (unreachable, failed, or left out by --limit) and the kit has "
        "never configured it: slurm.conf leaves it out for now, and no task runs there. Add it later with "
        "ansible-playbook playbooks/slurm.yml --limit localhost,ctl,bm-b (localhost checks the bundle), or a run of "
        "the whole cluster."]


def test_a_host_taken_out_of_the_group_leaves_the_record(key):
    found = plan(key, compute=("bm-a",), play=["ctl", "bm-a"], record=plan(key)["record"])
    assert [node["name"] for node in found["nodes"]] == ["bm-a"] and found["warnings"] == []


def test_the_runner_users_ids_come_from_the_record_when_no_compute_host_is_in_the_run(key):
    found = plan(key, play=["ctl"], record=plan(key)["record"])
    assert found["problems"] == [] and found["ids"] == ["990", "990"] and len(found["warnings"]) == 2


def test_the_controller_left_out_stops_the_run(key):
    assert plan(key, play=["bm-a", "bm-b"])["problems"] == [
        "ctl in group slurm_controller is not in this run (unreachable, failed, or left out by --limit): it runs "
        "slurmctld and keeps the record of the cluster's nodes, so every run of the Slurm play needs it. Add it to "
        "--limit (or bring it back) and rerun."]


@pytest.mark.parametrize("record", [
    "not json",
    json.dumps({"nodes": {"bm-b": {"name": "bm-b\nSlurmctldParameters=x", "addr": "10.0.0.4", "cpus": 8,
                                   "memory_mb": 1, "chips": [0], "user": ""}}}),
    json.dumps({"nodes": {"bm-b": {"name": "bm-b", "addr": "10.0.0.4", "cpus": "8 Weight=1", "memory_mb": 1,
                                   "chips": [0], "user": ""}}}),
    json.dumps(["bm-b"]),
])
def test_a_record_the_kit_did_not_write_is_not_trusted(key, record):
    found = cluster_plan(controller_group="slurm_controller", compute_group="slurm_compute", controllers=["ctl"],
                         compute_hosts=["bm-a", "bm-b"], play_hosts=["ctl", "bm-a"],
                         hosts={"ctl": describe("ctl", user=""), "bm-a": describe("bm-a", claimed=2, usable=(0, 1))},
                         user=USER, munge_key_file=key, munge_key_min_bytes=32, record_text=record,
                         record_path="/etc/slurm/sophon-sd-nodes.json")
    assert found["problems"] == [
        "/etc/slurm/sophon-sd-nodes.json on ctl is not the node record role sophon_slurm writes (JSON with each compute "
        "host's name, address, CPUs, memory, chips and uid:gid): it keeps the node lines of hosts a run leaves out. "
        "Remove it and run the Slurm play on every host of the cluster, which writes it again."]
    assert [node["name"] for node in found["nodes"]] == ["bm-a"]

