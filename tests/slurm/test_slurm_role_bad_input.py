"""Bad input to the Slurm role (playbooks/slurm.yml), run from the control node against a converged cluster.

Each case gets one clear message, and the cluster is left as it was: the same slurm.conf, gres.conf
and munge key on every host, the same daemons active, both compute hosts idle. What a case changes on
a host it puts back, also when it fails.

The cluster is conftest.py's.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from slurm_support import Cluster

STATE = ("sha256sum /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/munge/munge.key; "
         "systemctl is-active munge slurmctld slurmd || true")
NEW_KEY = ("head -c 1024 /dev/urandom > /etc/munge/munge.key.new && chown munge:munge /etc/munge/munge.key.new && "
           "chmod 0400 /etc/munge/munge.key.new && cp -p /etc/munge/munge.key /root/munge.key.saved && "
           "mv /etc/munge/munge.key.new /etc/munge/munge.key && systemctl restart munge")
# slurmctld marks a node whose credentials it could not read as not responding until its next ping
# (minutes): restarting slurmd registers it again at once.
RESTORE_KEY = "mv /root/munge.key.saved /etc/munge/munge.key && systemctl restart munge && systemctl restart slurmd"


def play(cluster: Cluster, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
    return cluster.playbook("slurm.yml", *args, timeout=900, inventory=inventory)


def wait_idle(cluster: Cluster, host: str, why: str) -> None:
    """Wait until slurmctld sees every node idle again (not idle*, not responding: then HOST's slurmd is
    restarted, which registers it at once instead of at slurmctld's next ping)."""
    deadline = time.monotonic() + 60
    restarted = False
    while time.monotonic() < deadline:
        nodes = cluster.on(cluster.controller, "sinfo -N -h -o '%N %t'").split()
        if nodes[1::2] == ["idle"] * len(cluster.compute):
            return
        if not restarted and time.monotonic() > deadline - 50:
            cluster.on(host, "systemctl restart slurmd")
            restarted = True
        time.sleep(1)
    raise AssertionError(f"{host} did not come back after {why}: {nodes}")


def restore_key(cluster: Cluster, host: str) -> None:
    """Put HOST's munge key back and wait until slurmctld sees every node idle again."""
    cluster.on(host, RESTORE_KEY)
    wait_idle(cluster, host, "its munge key was restored")


def cluster_state(cluster: Cluster) -> dict[str, str]:
    """What must not change: the files' checksums and the daemons on each host, the nodes' states."""
    state = {host: cluster.on(host, STATE) for host in cluster.all_hostvars}
    state["sinfo"] = cluster.on(cluster.controller, "sinfo -N -h -o '%N %G %t'")
    return state


@pytest.fixture()
def unchanged(cluster):
    """The cluster as it was before the test, and idle, checked after it."""
    before = cluster_state(cluster)
    assert all(line.endswith(" idle") for line in before["sinfo"].splitlines()), before["sinfo"]
    yield before
    assert cluster_state(cluster) == before


def failure(result: subprocess.CompletedProcess) -> str:
    """The play's output, once it has failed with a single failed task."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert output.count("FAILED! =>") == 1, output[-3000:]
    return output


# The cluster check's messages (no controller, two, chips, the runner user, uid, munge key) are unit tests of its
# action plugin (tests/unit/roles/sophon_slurm/test_sophon_slurm_cluster.py); this is the one that it stops every
# host before any changes.
def test_more_chips_claimed_than_usable_stops_before_slurm_conf(cluster, unchanged, tmp_path):
    host = cluster.compute[0]  # the host whose chips are 0 and 1, all usable (molecule.yml)
    inventory = cluster.inventory_with(tmp_path / "overclaim.json",
                                  {"slurm_controller": [cluster.controller], "slurm_compute": cluster.compute,
                                   "sophon_sd": cluster.compute},
                                  {host: {"sophon_slurm_chips": 3}})

    output = failure(play(cluster, inventory=inventory))

    assert (f"{host} claims 3 chip(s) (sophon_slurm_chips) but its device fact shows 2 usable "
            "(/dev/bm-sophon0, /dev/bm-sophon1)") in output, output[-3000:]
    # Stopped by the check before anything: no host got as far as slurm.conf.
    assert "Write slurm.conf" not in output


def test_a_compute_host_left_out_of_the_run_keeps_its_node_line_and_blocks_no_one(cluster, unchanged):
    """Issue 23 item 5: a run that leaves a compute host out (--limit here; unreachable or failed alike) configures
    the others, and slurm.conf keeps the left-out node as the controller recorded it when it was last configured:
    nothing changes, and the warning names the host."""
    here, left_out = cluster.compute
    # localhost too: its bundle check is what lets the hosts take packages from the bundle in this run.
    result = play(cluster, "--limit", f"localhost,{cluster.controller},{here}")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Ansible wraps a warning's lines, also at a hyphen: compared without whitespace.
    warning = (f"{left_out} in group slurm_compute is not in this run (unreachable, failed, or left out by --limit): "
               "slurm.conf keeps its node line from the run that last configured it")
    assert "".join(warning.split()) in "".join(output.split()), output[-3000:]
    recap = {line.split()[0]: line for line in output.splitlines() if " changed=" in line and " : ok=" in line}
    assert {cluster.controller, here} <= set(recap) and left_out not in recap, recap
    assert all(" changed=0 " in recap[host] for host in (cluster.controller, here)), recap
    # slurm.conf still lists both (and the fixture checks it is the same file on every host, byte for byte).
    assert left_out in cluster.on(cluster.controller, "grep '^NodeName=' /etc/slurm/slurm.conf")


def test_munge_key_changed_on_a_compute_host_is_found_under_check(cluster, unchanged):
    host = cluster.compute[0]
    cluster.on(host, NEW_KEY)
    try:
        output = failure(play(cluster, "--check", "--diff"))
    finally:
        restore_key(cluster, host)

    assert (f"Munge credentials minted on {cluster.controller} do not decode on {host} (") in output, output[-3000:]
    assert "A run without --check installs the cluster key" in output
    assert f"{cluster.compute[1]} (" not in output.split("do not decode on", 1)[1].split(":", 1)[0]


def test_a_drained_node_is_reported_and_the_play_goes_on(cluster, unchanged):
    """A site drains nodes for maintenance: the kit names it, with the way back, and fails no host for it."""
    host = cluster.compute[0]
    cluster.on(cluster.controller, f"scontrol update nodename={host} state=drain reason=kit-test-maintenance")
    try:
        result = play(cluster, "--check", "--diff")
    finally:
        cluster.on(cluster.controller, f"scontrol update nodename={host} state=resume")
        wait_idle(cluster, host, "it was resumed")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # Issue 23: --check --diff of the whole cluster shows slurmdbd's database password nowhere.
    password = cluster.on(cluster.controller, "cat /etc/slurm/sophon-sd-slurmdbd.pass")
    assert len(password) >= 32 and password not in output
    assert (f"{host} is drained in Slurm (Reason: kit-test-maintenance): no training task starts there until it is "
            f"back. When its fault is fixed, run scontrol update nodename={host} state=resume on {cluster.controller}"
            ) in output, output[-3000:]
    assert f"{cluster.compute[1]} is drained" not in output


def test_a_run_folder_that_is_not_shared_is_found_on_every_compute_host(cluster, unchanged):
    """Issue 23 item 4: sophon_slurm_shared_run_dir names a folder each host has on its own disk (the storage not
    mounted there): every compute host names the others it does not share it with, also under --check, and the
    probe's markers are gone."""
    local = "/var/lib/sophon-sd/not-shared"
    for host in cluster.compute:
        cluster.on(host, f"install -d -o $(stat -c %U /var/lib/sophon-sd/runs) -m 0755 {local}")
    try:
        result = play(cluster, "--check", "--diff", "-e", f"sophon_slurm_shared_run_dir={local}")
        leftovers = [cluster.on(host, f"ls -A {local}") for host in cluster.compute]
    finally:
        for host in cluster.compute:
            cluster.on(host, f"rm -rf {local}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    flat = " ".join(output.split())
    for here, other in (cluster.compute, cluster.compute[::-1]):
        assert (f"{here}: {local} (sophon_slurm_shared_run_dir) here is not the folder that {other} see there") in flat, \
            output[-3000:]
    assert leftovers == ["", ""]
