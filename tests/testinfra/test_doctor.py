"""The host doctor (runners/sdkit_doctor.py) on a provisioned host: it runs with the system python3,
finds nothing wrong with what the kit installed, and reports the versions the kit pinned.

The open-files limit in force may be a warning (containers cannot raise their hard limit) and the
disk check depends on the machine; everything else must be ok on a host the kit has provisioned.
"""

import json
import re

import pytest
from conftest import KIT_ROOT

DOCTOR = f"python3 {KIT_ROOT}/runners/sdkit_doctor.py"
# Decided by the machine rather than the kit: the container engine's open-files cap, the host's disk.
MACHINE_DEPENDENT = {"nofile_in_force", "disk"}


@pytest.fixture(scope="module")
def doctor_run(host):
    return host.run(f"{DOCTOR} --json")


@pytest.fixture(scope="module")
def report(doctor_run) -> dict:
    return json.loads(doctor_run.stdout)


@pytest.fixture(scope="module")
def checks(report) -> dict:
    return {check["name"]: check for check in report["checks"]}


def test_doctor_passes_what_the_kit_provisions(doctor_run, checks):
    """Everything the roles set up is ok; only what the machine decides (the engine's limit, the disk) may differ."""
    problems = {name: f"{c['status']}: {c['detail']} -- fix: {c['fix']}" for name, c in checks.items()
                if c["status"] != "ok" and name not in MACHINE_DEPENDENT}
    assert problems == {}
    assert checks["nofile_in_force"]["status"] in ("ok", "warn")
    assert doctor_run.rc == (1 if checks["disk"]["status"] == "fail" else 0)
    assert {"driver", "chips", "libsophon", "venv", "torch", "torch_tpu", "diffusers", "transformers", "accelerate",
            "patch:accelerate", "patch:diffusers", "nofile_config", "nofile_in_force", "device", "disk"} <= set(checks)


def test_doctor_reports_the_pinned_versions(host, report, pinned_libraries, sources_manifest):
    packages = report["packages"]
    for name, pin in pinned_libraries.items():
        assert packages[name] == {"version": str(pin["version"]),
                                  "origin": f"editable {sources_manifest['src_dir']}/{name}"}
    constraints = host.file(f"{KIT_ROOT}/constraints.txt").content_string
    torch_pin = re.search(r"^torch==(\S+)", constraints, re.MULTILINE).group(1)
    assert packages["torch"]["version"].split("+")[0] == torch_pin


def test_doctor_reports_the_hosts_kind(host, report, checks):
    """The kind the operator asked for (SOPHON_SD_RUNTIME), never a guess from the device."""
    env = dict(line.split("=", 1) for line in host.file("/etc/sophon-sd/env").content_string.splitlines()
               if "=" in line and not line.startswith("#"))
    device = env["ACCELERATE_TORCH_DEVICE"]
    assert report["cpu_host"] == (env["SOPHON_SD_RUNTIME"] == "none")
    assert report["cpu_host"] == (device == "cpu")
    assert checks["device"]["detail"].startswith(f"ACCELERATE_TORCH_DEVICE={device}")


def test_doctor_measures_the_outputs_disk_as_df_does(host, checks):
    free_gb = float(checks["disk"]["detail"].split(" GB free")[0])
    df_gb = int(host.check_output("df --output=avail -B1 /var/lib/sophon-sd/outputs | tail -1")) / 1e9
    assert abs(free_gb - df_gb) < 1.0
    assert checks["disk"]["status"] == ("fail" if free_gb < 20 else "warn" if free_gb < 40 else "ok")


def test_host_makefile_runs_the_doctor(host, report):
    plain = host.run(f"make -C {KIT_ROOT} --no-print-directory doctor")
    assert plain.stdout.strip().splitlines()[-1] == (
        f"{report['summary']['ok']} ok, {report['summary']['warn']} warn, {report['summary']['fail']} fail")
    as_json = json.loads(host.check_output(f"make -C {KIT_ROOT} --no-print-directory -s doctor JSON=1"))
    assert [c["name"] for c in as_json["checks"]] == [c["name"] for c in report["checks"]]
