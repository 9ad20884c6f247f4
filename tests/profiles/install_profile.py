"""make test-profile PROFILE=name: a profile's real pins installed by the kit on a Debian 12 test host, then
`make smoke` there on the CPU.

The fleet's profiles are resolved for Python 3.10 (Sophgo's wheels are cp310) and pull torch with its
CUDA libraries, several GB: too much for make test, whose hosts run the profiles' CPU twins. This runs
the real pin set once, on Debian 12's Python 3.11 (the nearest to 3.10 the test image has), through
site.yml as an operator would: the wheelhouse downloaded for 3.11 into build/test-profile/<name>/,
converge, a rerun that must change nothing, make smoke, and pip check. It prints one line per step
and writes build/test-profile-<name>.json; docs/measured/ keeps it after
`make record-test-profile-<name> COMMAND='make test-profile PROFILE=<name>'`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "hosts"), str(REPO / "tests" / "fleet")]
from fleet_support import recap  # noqa: E402
from testhosts import HostRun  # noqa: E402

HOST_PYTHON = "3.11"
KIT_VENV_PYTHON = "/opt/sophon-sd/venv/bin/python"
# make test-bundle's throwaway signing key (never an operator's).
TEST_GNUPGHOME = REPO / "build" / "test-bundle-gnupg"


def playbook(inventory: Path, name: str, extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(["ansible-playbook", "-i", str(inventory), str(REPO / "playbooks" / name), "-e", json.dumps(extra)],
                          env=env, cwd=REPO, capture_output=True, text=True)


def last_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    """The tool's summary line, else its last line (pip's warnings come after the summary on stderr)."""
    lines = (result.stdout + result.stderr).strip().splitlines() or [""]
    return next((line for line in reversed(lines) if line.startswith(prefix)), lines[-1])


def changed(output: str, host: str) -> int:
    """HOST's changed count in the play recap, -1 when the play never reached it."""
    return recap(output).get(host, {}).get("changed", -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help="a folder of profiles/ (PROFILE of make test-profile)")
    parser.add_argument("--keep", action="store_true", help="leave the host running (ssh -F build/testhosts/profile-<name>/ssh_config)")
    args = parser.parse_args()

    work = REPO / "build" / "test-profile" / args.profile
    bundle = work / "bundle"  # nothing else in it: the preflight refuses files the manifest does not list
    record: dict = {"profile": args.profile, "host_python": HOST_PYTHON, "steps": {}}
    started = time.monotonic()

    def step(name: str, ok: bool, detail: str = "") -> bool:
        record["steps"][name] = {"ok": ok, "at_s": round(time.monotonic() - started), "detail": detail}
        print(f"{name:<12} {'ok' if ok else 'FAILED'} at {record['steps'][name]['at_s']} s  {detail}", flush=True)
        return ok

    # A bundle of this profile alone (no apt repository: the host uses Debian's mirror), signed with the
    # test bundle's throwaway key, so that site.yml's preflight checks it as it checks a fleet's.
    tool = [sys.executable, str(REPO / "tools" / "sdkit_bundle.py")]
    download = subprocess.run([*tool, "wheelhouse", "--bundle-dir", str(bundle), "--profile", args.profile, "--python", HOST_PYTHON],
                              capture_output=True, text=True)
    if not step("wheelhouse", download.returncode == 0, last_line(download, "wheelhouse for")):
        return 1
    bundled = subprocess.run([*tool, "build", "--bundle-dir", str(bundle), "--profile", args.profile, "--no-apt",
                              "--gnupghome", str(TEST_GNUPGHOME), "--hub-timeout", "1", "--git-timeout", "1"],
                             capture_output=True, text=True)
    if not step("bundle", bundled.returncode == 0, last_line(bundled, "bundle ")):
        return 1

    hosts = HostRun(REPO / "build" / "testhosts" / f"profile-{args.profile}")
    name = f"sdkit-profile-{args.profile}"
    try:
        hosts.start(name)
        inventory = work / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": {name: hosts.inventory_vars(name)}}}))
        extra = {
            "sophon_sd_hosts": name, "ansible_become": False, "sophon_sd_profile": args.profile,
            # Debian 12's Python, not the profile's 3.10; the wheels above were downloaded for it.
            "sophon_venv_python_version": HOST_PYTHON,
            "sophon_sd_bundle_dir": str(bundle), "sophon_upstream_source": "bundle",
            # No chip and no Sophgo files here: the CPU, and a tiny model the smoke test makes itself.
            "sophon_sd_sophgo_runtime": False, "sophon_sd_stage_assets": False, "sophon_host_env_assets_source": "hub",
            "sophon_sd_bundle_signing_fingerprint": (TEST_GNUPGHOME / "fingerprint").read_text().strip(),
        }
        converge = playbook(inventory, "site.yml", extra)
        if not step("converge", converge.returncode == 0, f"changed={changed(converge.stdout, name)}"):
            print(converge.stdout[-4000:])
            return 1
        rerun = playbook(inventory, "site.yml", extra)
        step("rerun", rerun.returncode == 0 and changed(rerun.stdout, name) == 0, f"changed={changed(rerun.stdout, name)}")
        smoke = playbook(inventory, "smoke.yml", extra)
        step("smoke", smoke.returncode == 0, next((line.strip(' ",') for line in smoke.stdout.splitlines() if "smoke: LoRA in" in line), ""))
        versions = hosts.ssh(name, f"{KIT_VENV_PYTHON} -c \"import sys, torch, diffusers, transformers, accelerate; "
                                   "print(sys.version.split()[0], torch.__version__, diffusers.__version__, "
                                   "transformers.__version__, accelerate.__version__)\" 2>/dev/null; "
                                   f"{KIT_VENV_PYTHON} -m pip check")
        step("pip check", versions.returncode == 0, " / ".join(versions.stdout.strip().splitlines()))
    finally:
        if not args.keep:
            hosts.remove_all()
        record["seconds"] = round(time.monotonic() - started)
        (REPO / "build" / f"test-profile-{args.profile}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(step["ok"] for step in record["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
