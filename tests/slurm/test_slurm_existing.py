"""A cluster the site runs (sophon_slurm_cluster: existing): the kit checks it and trains in it, and writes
none of it. The scenario's cluster stands in for the site's: its files get a marker the kit did not write,
one node is drained, as on a real cluster, and the inventory has no controller, as a site's need not.
What the test changes it puts back.
"""

from __future__ import annotations

import json
import time

from slurm_support import Cluster

MARKER = "# site-managed (sdkit test marker)"
# What the kit must leave alone: the cluster's files, its daemons (not restarted: same start time), the
# package sources.
STATE = ("sha256sum /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/munge/munge.key; "
         "systemctl show -p ActiveEnterTimestamp munge slurmctld slurmd; ls -l --time-style=+%s /etc/apt/sources.list.d")
EXISTING = ["-e", "sophon_slurm_cluster=existing"]


def test_a_cluster_the_site_runs_is_checked_and_trained_in_but_never_written(cluster: Cluster, tmp_path):
    drained, trainer = cluster.compute
    everyone = [cluster.controller, *cluster.compute]
    inventory = cluster.inventory_with(tmp_path / "site.json", {"slurm_compute": cluster.compute,
                                                                "sophon_sd": cluster.compute})
    for host in everyone:
        cluster.on(host, f"echo '{MARKER}' | tee -a /etc/slurm/slurm.conf >> /etc/slurm/gres.conf")
    before = {host: cluster.on(host, STATE) for host in everyone}
    cluster.on(cluster.controller, f"scontrol update nodename={drained} state=drain reason=site-maintenance")
    try:
        checked = cluster.playbook("slurm.yml", *EXISTING, inventory=inventory, timeout=900)
        cluster.on(cluster.controller, f"scontrol update nodename={drained} state=resume")
        run_id = f"site-{time.strftime('%H%M%S')}"
        trained = cluster.playbook("train.yml", *EXISTING, "-e", f"sophon_sd_hosts={trainer}", "-e", json.dumps(
            {"sophon_sd_train_run_id": run_id, "sophon_sd_train_fetch_dir": str(tmp_path), "sophon_sd_train_tiny": True,
             "sophon_sd_train_scheduler": "slurm", "sophon_sd_train_poll_interval": 15}), inventory=inventory, timeout=1800)
        after = {host: cluster.on(host, STATE) for host in everyone}
    finally:
        cluster.on(cluster.controller, f"scontrol update nodename={drained} state=resume || true")
        for host in everyone:
            cluster.on(host, f"sed -i '/sdkit test marker/d' /etc/slurm/slurm.conf /etc/slurm/gres.conf")

    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output[-4000:]
    assert (f"{drained} is drained in Slurm (Reason: site-maintenance): no training task starts there until it is "
            f"back. When its fault is fixed, run scontrol update nodename={drained} state=resume on the cluster's "
            "controller") in output, output[-3000:]
    assert trained.returncode == 0, trained.stdout[-4000:] + trained.stderr[-2000:]
    assert json.loads((tmp_path / run_id / trainer / "status.json").read_text())["state"] == "finished"
    assert after == before
