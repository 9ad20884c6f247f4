"""The existing-cluster check (roles/sophon_slurm/library/sophon_slurm_site.py) against Slurm's answers.

Each Slurm or munge command is answered from a table, as a site's cluster would answer it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "runners"))
import sdkit_slurm  # noqa: E402

SPEC = importlib.util.spec_from_file_location("sophon_slurm_site", REPO / "roles/sophon_slurm/library/sophon_slurm_site.py")
site = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(site)

NODE = "NodeName=bm-a Arch=x86_64 CPUTot=8 Gres=tpu:bm1684x:2 State={state} Reason={reason} Partitions=train"
GRES_CONF = "NodeName=bm-a Name=tpu Type=bm1684x File=/dev/bm-sophon[0-1]\n"
# The states the role passes in: its own list, the one home of "takes no jobs".
UNAVAILABLE = yaml.safe_load((REPO / "roles/sophon_slurm/vars/main.yml").read_text())["sophon_slurm_unavailable_states"]
PARAMS = {"host": "a", "node": "bm-a", "gres": "tpu", "partition": "train", "user": "sophon-sd", "chips": 2,
          "unavailable_states": UNAVAILABLE}


@pytest.fixture()
def cluster(monkeypatch, tmp_path):
    """A healthy site cluster; tests change its answers."""
    answers = {
        "scontrol show node": (0, NODE.format(state="IDLE", reason="(null)")),
        "scontrol show partition": (0, "PartitionName=train AllowGroups=ALL Nodes=bm-[a-d] State=UP"),
        "munge --no-input": (0, "MUNGE:AwQDAAA=:"),
        "unmunge": (0, "STATUS: Success (0)"),
        "runuser -u": (0, "sbatch: Job 12 to start at 2026-12-07T16:00:00 using 1 processors on nodes bm-a"),
    }
    asked = []

    def run(argv, stdin=None):
        asked.append(argv)
        return next(answer for prefix, answer in answers.items() if " ".join(argv).startswith(prefix))

    (tmp_path / "gres.conf").write_text(GRES_CONF)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    monkeypatch.setattr(site, "run", run)
    answers["asked"] = asked
    return answers


def test_a_healthy_site_cluster_has_no_problem_and_the_runner_submits_a_test_job(cluster):
    assert site.check(PARAMS, sdkit_slurm) == ([], "idle", "(null)")
    [submit] = [argv for argv in cluster["asked"] if argv[0] == "runuser"]
    assert submit == ["runuser", "-u", "sophon-sd", "--", "sbatch", "--test-only", "--nodelist=bm-a", "--gres=tpu:1",
                      "--partition=train", "--wrap=true"]


@pytest.mark.parametrize("state, reported", [("IDLE+DRAIN", "drained"), ("MIXED+DRAIN", "draining"), ("DOWN*", "down"),
                                             ("ALLOCATED", "allocated")])
def test_the_nodes_state_reads_as_sinfo_words_it(cluster, state, reported):
    cluster["scontrol show node"] = (0, NODE.format(state=state, reason="maintenance"))
    assert site.check(PARAMS, sdkit_slurm)[1:] == (reported, "maintenance")


def test_a_drained_node_takes_no_test_job_so_the_users_access_is_tested_without_it(cluster):
    cluster["scontrol show node"] = (0, NODE.format(state="IDLE+DRAIN", reason="maintenance"))
    assert site.check(PARAMS, sdkit_slurm) == ([], "drained", "maintenance")
    [submit] = [argv for argv in cluster["asked"] if argv[0] == "runuser"]
    assert not any(arg.startswith("--nodelist") for arg in submit)


def test_the_states_that_take_no_jobs_are_the_roles_not_the_modules(cluster):
    """The module has no list of its own: a state the role names (here a site's PLANNED) skips --nodelist, and
    drained no longer does once the role leaves it out."""
    cluster["scontrol show node"] = (0, NODE.format(state="PLANNED", reason="maintenance"))
    site.check({**PARAMS, "unavailable_states": ["planned"]}, sdkit_slurm)
    cluster["scontrol show node"] = (0, NODE.format(state="IDLE+DRAIN", reason="maintenance"))
    site.check({**PARAMS, "unavailable_states": ["down"]}, sdkit_slurm)
    first, second = [argv for argv in cluster["asked"] if argv[0] == "runuser"]
    assert not any(arg.startswith("--nodelist") for arg in first)
    assert "--nodelist=bm-a" in second


def test_an_unknown_node_is_the_only_problem(cluster):
    cluster["scontrol show node"] = (1, "Node bm-a not found")
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems == ["a: the Slurm cluster does not know node bm-a (Node bm-a not found): add it to the site's "
                        "slurm.conf, or take the host out of the inventory group slurm_compute"]


def test_chips_counted_under_another_name_are_named_with_the_fix(cluster):
    cluster["scontrol show node"] = (0, NODE.format(state="IDLE", reason="(null)").replace("Gres=tpu", "Gres=sophon"))
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems[0] == ("a: Slurm counts 0 'tpu' on node bm-a (Gres=sophon:bm1684x:2), but its device fact shows 2 "
                           "usable chip(s): give the node Gres=tpu:<type>:2 in the site's slurm.conf, or set "
                           "sophon_sd_slurm_gres to the name the site gives the chips")
    assert not any(argv[0] == "runuser" for argv in cluster["asked"])  # a test job is submitted only to a sound node


def test_chips_without_their_device_files_in_gres_conf_are_a_problem(cluster, tmp_path):
    (tmp_path / "gres.conf").write_text("NodeName=bm-a Name=tpu Count=2\n")
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems == [f"a: {tmp_path}/gres.conf lists 0 File= device(s) for 'tpu' on node bm-a, Slurm counts 2: give "
                        "each chip its line (File=/dev/bm-sophonN), so that a task knows which chip Slurm gave it"]


def test_a_missing_partition_a_dead_munge_and_a_refused_submission_are_each_named(cluster):
    cluster["scontrol show partition"] = (1, "Partition train not found")
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems == ["a: the Slurm cluster has no partition train (Partition train not found): set "
                        "sophon_slurm_partition to one of `scontrol show partition`'s, or to '' for the cluster's default"]

    cluster["scontrol show partition"] = (0, "PartitionName=train")
    cluster["munge --no-input"] = (1, "munge: Error: Failed to access \"/run/munge/munge.socket.2\"")
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems == ["a: munge does not work here (munge: Error: Failed to access \"/run/munge/munge.socket.2\"): "
                        "start munged (systemctl start munge) with the cluster's key"]

    cluster["munge --no-input"] = (0, "MUNGE:x:")
    cluster["runuser -u"] = (1, "sbatch: error: Batch job submission failed: Invalid account or account/partition "
                                "combination specified")
    problems, _, _ = site.check(PARAMS, sdkit_slurm)
    assert problems == ["a: sophon-sd cannot submit a one-chip job to node bm-a (sbatch: error: Batch job submission "
                        "failed: Invalid account or account/partition combination specified): give the user access to "
                        "the partition (AllowGroups/AllowAccounts) and an account, then rerun"]
