"""The Slurm cluster on provisioned hosts (role sophon_slurm): munge with one key, the daemons where
they belong, one slurm.conf, and every compute host ready with its chips.

Runs against the hosts of the cluster (the Molecule scenario `slurm`, or `make verify` with
PYTEST_ARGS='-k slurm' on a fleet whose inventory has the groups). Each host's role is read from its
own slurm.conf and hostname, so the same checks hold on any cluster.
"""

import hashlib
import json
import re

import pytest
import yaml
from conftest import REPO

MUNGE_KEY = "/etc/munge/munge.key"
SLURM_CONF = "/etc/slurm/slurm.conf"
GRES = yaml.safe_load((REPO / "roles/sophon_sd/defaults/main.yml").read_text())["sophon_sd_slurm_gres"]
GRES_TYPE = yaml.safe_load((REPO / "roles/sophon_slurm/defaults/main.yml").read_text())["sophon_slurm_gres_type"]


def slurm_conf(host) -> str:
    conf = host.file(SLURM_CONF)
    assert conf.exists, f"{SLURM_CONF} missing: the Slurm play has not run on this host"
    return conf.content_string


def controller_name(host) -> str:
    return re.search(r"^SlurmctldHost=([^(\s]+)", slurm_conf(host), re.MULTILINE).group(1)


def compute_names(host) -> list[str]:
    return re.findall(r"^NodeName=(\S+)", slurm_conf(host), re.MULTILINE)


def is_controller(host) -> bool:
    return host.check_output("hostname -s") == controller_name(host)


def test_slurm_munge_key_is_the_clusters_owned_by_munge(host):
    key = host.file(MUNGE_KEY)
    assert (key.user, key.group, key.mode) == ("munge", "munge", 0o400)
    assert host.service("munge").is_running and host.service("munge").is_enabled


# What each host of the run holds, filled as the parametrized test below meets them.
SEEN: dict[str, tuple[str, str]] = {}


def test_slurm_same_munge_key_and_slurm_conf_everywhere(host):
    SEEN[host.backend.get_hostname()] = (host.file(MUNGE_KEY).sha256sum,
                                         hashlib.sha256(slurm_conf(host).encode()).hexdigest())
    assert len(set(SEEN.values())) == 1, SEEN


def node_gres(host) -> dict[str, str]:
    """Each compute host's Gres= in slurm.conf, by node name."""
    return dict(re.findall(r"^NodeName=(\S+) .*Gres=(\S+)", slurm_conf(host), re.MULTILINE))


def test_slurm_daemons_run_where_they_belong(host):
    controller = is_controller(host)
    compute = host.check_output("hostname -s") in compute_names(host)
    assert host.service("slurmctld").is_running == controller
    assert host.service("slurmd").is_running == compute
    for daemon, expected in (("slurmctld", controller), ("slurmd", compute)):
        if expected:
            assert host.service(daemon).is_enabled, daemon


def test_slurm_every_host_keeps_its_clock_with_chrony(host):
    """munge refuses credentials from a host whose clock is off; chrony keeps it in sync (it runs where the host
    may set its clock: not in the test containers)."""
    assert host.package("chrony").is_installed
    assert host.service("chrony").is_enabled


def test_slurm_compute_host_offers_the_chips_its_device_fact_counts(host):
    name = host.check_output("hostname -s")
    if name not in compute_names(host):
        pytest.skip("not a compute host")
    chip_count = json.loads(host.check_output("/etc/ansible/facts.d/sophon.fact"))["chip_count"]
    assert chip_count > 0
    assert node_gres(host)[name] == f"{GRES}:{GRES_TYPE}:{chip_count}"


def test_slurm_sinfo_shows_every_compute_host_idle_with_its_chips(host):
    if not is_controller(host):
        pytest.skip("sinfo is read on the controller")
    nodes = {line.split()[0]: line.split()[1:] for line in host.check_output("sinfo -N -h -o '%N %G %t'").splitlines()}
    assert nodes == {name: [gres, "idle"] for name, gres in node_gres(host).items()}


# The runner user, and its group of the same name (role sophon_host_env's defaults derive both from it).
RUNNER_USER = yaml.safe_load((REPO / "roles/sophon_sd/defaults/main.yml").read_text())["sophon_sd_user"]
RUNNER_GROUP = RUNNER_USER
OUTSIDER = "sdkit-outsider"


def test_slurm_partition_admits_only_the_runners_group(host):
    """Any local user of a node could reach the chips through an open partition (issue 21, item 6): one
    outside the runner's group is refused at submission, by sbatch and srun alike; the runner user is not."""
    if not is_controller(host):
        pytest.skip("the partition is read and jobs are submitted on the controller")
    assert re.search(r"^PartitionName=\S+ AllowGroups=(\S+) ", slurm_conf(host), re.MULTILINE).group(1) == RUNNER_GROUP
    assert f"AllowGroups={RUNNER_GROUP} " in host.check_output("scontrol show partition")
    host.check_output(f"id -u {OUTSIDER} || useradd --system --no-create-home {OUTSIDER}")
    for submit in ("sbatch --test-only --wrap=true", "srun --test-only true"):
        refused = host.run(f"runuser -u {OUTSIDER} -- {submit} </dev/null")
        assert refused.rc != 0 and "not permitted to use this partition" in refused.stderr, (submit, refused.stderr)
        admitted = host.run(f"runuser -u {RUNNER_USER} -- {submit} </dev/null")
        assert admitted.rc == 0, (submit, admitted.stderr)


ACCOUNT = yaml.safe_load((REPO / "roles/sophon_slurm/defaults/main.yml").read_text())["sophon_slurm_account"]


def test_slurm_accounting_keeps_its_database_password_from_everyone_but_slurm(host):
    """Issue 23: slurmdbd with MariaDB on the controller. slurmdbd.conf holds the database password: SlurmUser's
    alone (slurmdbd refuses it otherwise), and the file the role made the password in is root's alone."""
    if not is_controller(host):
        assert not host.file("/etc/slurm/slurmdbd.conf").exists
        pytest.skip("accounting runs on the controller")
    conf = host.file("/etc/slurm/slurmdbd.conf")
    assert (conf.user, conf.group, conf.mode) == ("slurm", "slurm", 0o600)
    password = host.file("/etc/slurm/sophon-sd-slurmdbd.pass")
    assert (password.user, password.mode) == ("root", 0o600)
    assert f"StoragePass={password.content_string}" in conf.content_string
    for daemon in ("mariadb", "slurmdbd"):
        assert host.service(daemon).is_running and host.service(daemon).is_enabled, daemon


def test_slurm_accounting_and_fair_share_are_on_with_the_runner_in_its_account(host):
    if not is_controller(host):
        pytest.skip("read on the controller")
    config = host.check_output("scontrol show config")
    assert re.search(r"^AccountingStorageType\s+= accounting_storage/slurmdbd$", config, re.MULTILINE), config
    assert re.search(r"^PriorityType\s+= priority/multifactor$", config, re.MULTILINE), config
    assert re.search(rf"^AccountingStorageTRES\s+= .*gres/{GRES}\b", config, re.MULTILINE), config
    cluster = re.search(r"^ClusterName=(\S+)", slurm_conf(host), re.MULTILINE).group(1)
    associations = host.check_output("sacctmgr --noheader --parsable2 show associations format=cluster,account,user")
    assert f"{cluster}|{ACCOUNT}|{RUNNER_USER}" in associations.splitlines(), associations
    # sshare is fair share's own view: the runner user's association has a share (1 unless a site set another).
    shares = host.check_output(f"sshare --noheader --parsable2 --accounts={ACCOUNT} --all --format=Account,User,RawShares")
    # sshare indents an association by its depth in the tree.
    assert [ACCOUNT, RUNNER_USER, "1"] in [[field.strip() for field in line.split("|")] for line in shares.splitlines()], \
        shares
