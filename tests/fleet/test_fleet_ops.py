"""Fleet operations on a provisioned fleet: hosts with no network, --check, LIMIT and tags."""

from __future__ import annotations

import json
import subprocess

import pytest
from fleet_support import REPO, ansible_env, recap

BUNDLE_SOURCE = "/etc/apt/sources.list.d/sophon-sd-bundle.sources"
KIT_PACKAGES = ["python3-venv", "python3-packaging", "git", "patch", "make"]

# Reads the mirror from the host's own apt sources, so no mirror is named here.
REACH_MIRROR = (
    "import re, urllib.request; "
    "url = re.search(r'https?://\\S+', open('/etc/apt/sources.list').read()).group(); "
    "urllib.request.urlopen(url, timeout=5)"
)


@pytest.fixture(scope="module")
def offline_hosts(fleet) -> list[str]:
    hosts = [host for host in fleet.hosts if fleet.hostvars[host].get("sophon_apt_source") == "bundle"]
    if not hosts:
        pytest.skip("no host of this fleet takes its Debian packages from the bundle (sophon_apt_source: bundle)")
    return hosts


def test_offline_hosts_cannot_reach_their_mirror(fleet, offline_hosts):
    for host in offline_hosts:
        result = fleet.command(host, ["python3", "-c", REACH_MIRROR])
        assert result.returncode != 0 and "URLError" in result.stdout, f"{host} reached its mirror: {result.stdout}"


def bundle_repository(fleet, host: str) -> str:
    """Where the host's apt reads the bundle's repository: file:<dir> when pushed, the mirror's URL when pulled."""
    source = fleet.command(host, ["cat", BUNDLE_SOURCE]).stdout
    uris = [line.split(":", 1)[1].strip() for line in source.splitlines() if line.startswith("URIs:")]
    assert len(uris) == 1, f"{BUNDLE_SOURCE} on {host} names no single repository:\n{source}"
    return uris[0].rstrip("/")


def test_offline_hosts_installed_the_kits_packages_from_the_bundle(fleet, offline_hosts):
    for host in offline_hosts:
        repository = bundle_repository(fleet, host)
        policy = fleet.command(host, ["apt-cache", "policy", *KIT_PACKAGES])
        assert policy.returncode == 0, policy.stdout
        # For each package, the sources listed under the installed version (***) must include the
        # bundle: the host's mirror may be listed too (its old index), but it is unreachable.
        for package, section in zip(KIT_PACKAGES, _sections(policy.stdout)):
            lines = section.splitlines()
            installed = next(i for i, line in enumerate(lines) if line.lstrip().startswith("***"))
            offered_by = [line for line in lines[installed + 1:] if line.startswith(" " * 8)]
            offered_by = offered_by[:next((i for i, line in enumerate(offered_by) if "/var/lib/dpkg/status" in line),
                                          len(offered_by))]
            assert any(repository in line for line in offered_by), \
                f"{package} on {host} is not offered by the bundle's repository {repository}:\n{section}"


def test_offline_hosts_check_the_bundle_repositorys_signature(fleet, offline_hosts):
    """Signed-By the bundle's key, never Trusted (issue 9, item 3): apt reads the index only when signed."""
    for host in offline_hosts:
        source = fleet.command(host, ["cat", BUNDLE_SOURCE])
        assert "Signed-By: /etc/apt/keyrings/sophon-sd-bundle.asc" in source.stdout, source.stdout
        assert "Trusted" not in source.stdout, source.stdout


def test_hosts_that_pull_from_the_mirror_got_no_copy_of_the_bundle(fleet):
    """sophon_sd_bundle_transport: mirror (issue 20): apt, pip and the source archives read the mirror over HTTP,
    pip checks every wheel against the hashes of the control node's verified manifest, and nothing large was
    pushed to the host."""
    pulling = [host for host in fleet.hosts if fleet.hostvars[host].get("sophon_sd_bundle_transport") == "mirror"]
    if not pulling:
        pytest.skip("no host of this fleet pulls from a bundle mirror (sophon_sd_bundle_transport: mirror)")
    for host in pulling:
        assert bundle_repository(fleet, host).startswith("http"), f"{host}'s apt does not read the mirror"
        # What push mode leaves under the kit root (the apt repository's and the wheelhouse's archives).
        pushed = fleet.command(host, ["find", "/opt/sophon-sd", "-maxdepth", "1", "-name", "apt.tar", "-o",
                                      "-maxdepth", "1", "-name", "wheelhouse*"])
        assert pushed.returncode == 0 and "/opt/sophon-sd/" not in pushed.stdout, pushed.stdout
        requirements = fleet.command(host, ["cat", "/opt/sophon-sd/requirements-mirror.txt"]).stdout
        wheels = [line for line in requirements.splitlines() if "==" in line]
        assert wheels and all("--hash=sha256:" in line for line in wheels), requirements


def _sections(policy_output: str) -> list[str]:
    """apt-cache policy's output, one section per package (each starts at column 0 with `name:`)."""
    sections: list[str] = []
    for line in policy_output.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            sections.append("")
        if sections:
            sections[-1] += line + "\n"
    return sections


def test_check_diff_on_the_provisioned_fleet_reports_no_changes(fleet):
    result = fleet.playbook("site.yml", "--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:]
    # localhost: the bundle check on the control node.
    counters = recap(result.stdout)
    assert set(counters) - {"localhost"} == set(fleet.hosts), f"recap lists {sorted(counters)}"
    changed = {host: count["changed"] for host, count in counters.items() if count["changed"]}
    assert not changed, f"--check reports changes on a provisioned fleet: {changed}\n{result.stdout[-3000:]}"


def test_make_provision_takes_limit_and_tags(fleet):
    host = fleet.hosts[0]
    result = subprocess.run(["make", "-C", str(REPO), "provision", f"INVENTORY={fleet.inventory}", f"LIMIT={host}",
                             "TAGS=runners", "ANSIBLE_ARGS=--check"],
                            capture_output=True, text=True, env=ansible_env(), timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert set(recap(result.stdout)) - {"localhost"} == {host}
    assert "Deploy the runners" in result.stdout
    # Only the runners role ran: no other role's tasks.
    assert "Build the venv with the pinned torch" not in result.stdout


def test_doctor_gathers_the_whole_fleet_into_one_report(fleet, tmp_path):
    result = fleet.playbook("doctor.yml", "-e", f"sophon_sd_doctor_report_dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted(entry["host"] for entry in report["hosts"]) == fleet.hosts
    for entry in report["hosts"]:
        assert entry["state"] == "reported", entry
        failed = [check for check in entry["checks"] if check["status"] == "fail"]
        assert not failed, f"{entry['host']}: {failed}"
    table = (tmp_path / "report.md").read_text()
    assert all(f"| {host} |" in table for host in fleet.hosts)
