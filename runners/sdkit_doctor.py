#!/usr/bin/env python3
"""Check a provisioned sophon-sd-kit host and say, for each problem, how to fix it.

Checks, in order: the Sophgo runtime (bmsophon driver, /dev/bm-sophon* chips, libsophon), the
kit's venv and the versions and origins of torch, torch_tpu, diffusers, transformers and
accelerate against the pins the roles left on the host, the tutorial's two patches, the
open-files limit, ACCELERATE_TORCH_DEVICE, and free disk space for outputs.

A host provisioned without the Sophgo runtime (its env file says SOPHON_SD_RUNTIME=none, as the
operator asked) is a CPU host: there the runtime checks read "not expected (CPU host)" instead of
failing. The doctor never guesses that from the device: a Sophgo host whose chips vanished and that
somehow trains on its CPU is a failure, not a CPU host.

Examples::

    python3 <kit root>/runners/sdkit_doctor.py            # or: make -C <kit root> doctor
    python3 <kit root>/runners/sdkit_doctor.py --json     # what playbooks/doctor.yml collects

Where the kit lives (SOPHON_SD_ROOT) and keeps its outputs (SOPHON_SD_OUTPUTS, else
SOPHON_SD_STATE_DIR/outputs) come from the env file the role sophon_host_env writes; without it
the doctor cannot know where to look, and says so (exit code 2).

Exit code 0 when nothing fails (warnings allowed), 1 when a check fails, 2 on bad options or an
unusable env file.

Stdlib only, and it runs with the system python3: the venv is examined from the outside, in a
subprocess, so that a broken venv is reported rather than crashing the doctor. (It therefore
does not import sdkit_env, which needs torch; it shares the stdlib-only sdkit_files with the job tool.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sdkit_files import (DEFAULT_ENV_FILE, ENV_FILE_FIX, ROOT_KEY, RUNTIME_KEY, RUNTIMES, STATE_DIR_KEY, EnvFile,
                         EnvFileError, read_json)
from sdkit_wheel import is_sophgo_torch_tpu

OK, WARN, FAIL = "ok", "warn", "fail"

# Where the roles put things that the env file does not name (role defaults; each is a flag below).
LIMITS_FILE = "/etc/security/limits.d/sophon-sd.conf"
OUTPUTS_SUBDIR = "outputs"  # under SOPHON_SD_STATE_DIR, when the env file has no SOPHON_SD_OUTPUTS
LIBSOPHON_CURRENT = "/opt/sophon/libsophon-current"

# The tutorial's `ulimit -n 65535` (sdkit_env.WANTED_OPEN_FILES; the runners raise their soft limit
# up to the hard limit, so the hard limit is what decides whether they get it).
WANTED_OPEN_FILES = 65535
# SD v1.4 LoRA training: the fp32 weights copied for each checkpoint, validation images and logs.
DEFAULT_MIN_FREE_GB = 20.0

UPSTREAM_LIBRARIES = ("diffusers", "transformers", "accelerate")
PACKAGES = ("torch", "torch_tpu") + UPSTREAM_LIBRARIES
# Run by the venv's python: version, author fields, whether it has the torch_tpu/tpu/ package, and install
# record (direct_url.json) of each package. It gathers what sdkit_wheel's rule reads; the rule runs here.
PROBE = """
import json, os, sys
from importlib import metadata
found = {}
for name in sys.argv[1:]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    marker = os.path.join(str(dist.locate_file("")), name, "sophgo.py")
    fields = ("Author", "Author-email", "Maintainer", "Maintainer-email")
    found[name] = {"version": dist.version,
                   "author": " ".join(v for f in fields for v in (dist.metadata.get_all(f) or [])).strip(),
                   "has_tpu": any(str(f).replace(os.sep, "/").startswith("torch_tpu/tpu/") for f in dist.files or []),
                   "direct_url": json.loads(dist.read_text("direct_url.json") or "{}"),
                   "sophgo_marker": open(marker).readline() if os.path.isfile(marker) else None}
print(json.dumps({"python": sys.version.split()[0], "packages": found}))
"""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def reprovision(tag: str) -> str:
    """The fix that reruns one part of the kit's provisioning for this host."""
    return f"on the control node: ansible-playbook -i <inventory> playbooks/site.yml --limit <this host> --tags {tag}"


# --------------------------------------------------------------------------- what the roles left on the host


class Host:
    """Paths on the host, optionally under a fake root (--root) so that tests can build one in a folder.

    ``host_path`` is a path as the host sees it (what the roles wrote into their files);
    ``local`` is where that path is from where the doctor runs.
    """

    def __init__(self, args: argparse.Namespace):
        self.root = Path(args.root)
        self.env_file = args.env_file
        self.limits_file = args.limits_file
        self.env = EnvFile.read(self.local(self.env_file))
        self.kit = self.env.require(ROOT_KEY)
        self.sources = read_json(self.local(f"{self.kit}/src/sources.json"))
        self.venv = args.venv or self.env.get("SOPHON_SD_VENV") or f"{self.kit}/venv"
        self.outputs = (args.outputs or self.env.get("SOPHON_SD_OUTPUTS")
                        or f"{self.env.require(STATE_DIR_KEY)}/{OUTPUTS_SUBDIR}")
        self.device = self.env.get("ACCELERATE_TORCH_DEVICE", "")
        self.runtime = self.env.require(RUNTIME_KEY)
        if self.runtime not in RUNTIMES:
            raise EnvFileError(f"{self.env_file} says {RUNTIME_KEY}={self.runtime}, not one of {', '.join(RUNTIMES)}: "
                               + ENV_FILE_FIX)
        self.cpu_host = self.runtime == "none"

    def local(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")


# --------------------------------------------------------------------------- Sophgo runtime


def check_driver(host: Host) -> Check:
    version_file = host.local("/proc/bmsophon/driver_version")
    loaded = version_file.exists() or host.local("/sys/module/bmsophon").is_dir()
    if loaded:
        version = version_file.read_text().strip() if version_file.is_file() else "version unknown"
        return Check("driver", OK, f"bmsophon loaded ({version})")
    if host.cpu_host:
        return Check("driver", OK, "not expected (CPU host)")
    return Check("driver", FAIL, "the bmsophon kernel module is not loaded",
                 "run `modprobe bmsophon`; if it says 'Module bmsophon not found', install "
                 "linux-headers-$(uname -r) and reinstall sophon-driver, " + reprovision("libsophon"))


def check_chips(host: Host) -> Check:
    nodes = sorted(p.name for p in host.local("/dev").glob("bm-sophon*"))
    count = host.env.get("SOPHON_SD_DEVICE_COUNT", "")
    expected = int(count) if count.isdigit() else 0
    if host.cpu_host:
        if nodes:
            return Check("chips", WARN, f"{len(nodes)} chip(s) ({', '.join(nodes)}) but the host is set up for the CPU",
                         "provision it with the Sophgo runtime (sophon_sd_sophgo_runtime: true): "
                         + reprovision("libsophon,torch_tpu,host_env"))
        return Check("chips", OK, "not expected (CPU host)")
    if len(nodes) < max(expected, 1):
        return Check("chips", FAIL, f"{len(nodes)} /dev/bm-sophon* node(s), the env file lists {expected} device(s)",
                     "check the cards with `bm-smi --noloop --text_format` and the driver with `lsmod | grep bmsophon`")
    return Check("chips", OK, f"{len(nodes)}: {', '.join(nodes)}")


def check_libsophon(host: Host) -> Check:
    current = host.local(LIBSOPHON_CURRENT)
    if current.is_dir():
        version = current.resolve().name.replace("libsophon-", "", 1)
        return Check("libsophon", OK, f"{version} ({LIBSOPHON_CURRENT} -> {current.resolve().name})")
    if host.cpu_host:
        return Check("libsophon", OK, "not expected (CPU host)")
    return Check("libsophon", FAIL, f"{LIBSOPHON_CURRENT} is missing",
                 "install Sophgo's sophon-libsophon .deb: " + reprovision("libsophon"))


# --------------------------------------------------------------------------- venv and packages


def probe_venv(host: Host) -> dict:
    """Versions and install records from the venv's own python; {"error": ...} when it cannot run."""
    python = host.local(f"{host.venv}/bin/python")
    # The caller's Python variables (make exports the env file; a shell may set PYTHONPATH) must not
    # change what the venv reports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        proc = subprocess.run([str(python), "-c", PROBE, *PACKAGES], capture_output=True, text=True,
                              timeout=120, env=env, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{host.venv}/bin/python cannot run: {exc}"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": f"{host.venv}/bin/python fails: {last}"}
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": f"{host.venv}/bin/python printed no report: {proc.stdout[:200]!r}"}


def check_venv(host: Host, probe: dict) -> Check:
    if "error" in probe:
        return Check("venv", FAIL, probe["error"],
                     f"rebuild it: remove {host.venv} and " + reprovision("venv,torch_tpu,upstream"))
    return Check("venv", OK, f"{host.venv}, Python {probe['python']}")


def origin(host: Host, name: str, package: dict) -> str:
    """Where a package came from, in words: an editable checkout, a wheel file, or the wheelhouse/index."""
    direct_url = package["direct_url"]
    url = direct_url.get("url", "")
    if direct_url.get("dir_info", {}).get("editable"):
        return f"editable {url.replace('file://', '', 1)}"
    if url:
        return f"file {url.replace('file://', '', 1)}"
    wheel_prefix = f"{name.replace('-', '_')}-{package['version']}-"
    wheelhouse = host.local(f"{host.kit}/wheelhouse")
    if wheelhouse.is_dir() and any(p.name.startswith(wheel_prefix) for p in wheelhouse.glob("*.whl")):
        return "wheel from the wheelhouse"
    return "from a package index"


def torch_pin(host: Host) -> Optional[str]:
    """torch's version in the constraints file the venv role installed with."""
    try:
        text = host.local(f"{host.kit}/constraints.txt").read_text()
    except OSError:
        return None
    match = re.search(r"^torch==(\S+)", text, re.MULTILINE)
    return match.group(1) if match else None


def torch_tpu_pin(host: Host) -> Optional[str]:
    """The version of the Sophgo wheel the torch_tpu role pushed (torch_tpu-<version>-cpXY-...whl)."""
    wheels = sorted(host.local(f"{host.kit}/vendor").glob("torch_tpu-*.whl"))
    return wheels[-1].name.split("-")[1] if wheels else None


def check_package(host: Host, probe: dict, name: str) -> Check:
    if "error" in probe:
        return Check(name, FAIL, "not checked: the venv's python does not run", "fix the venv first (check venv)")
    package = probe["packages"].get(name)
    optional = name == "torch_tpu" and host.cpu_host
    if package is None:
        if optional:
            return Check(name, OK, "not expected (CPU host)")
        tag = {"torch": "venv", "torch_tpu": "torch_tpu"}.get(name, "upstream")
        return Check(name, FAIL, f"{name} is not installed in {host.venv}", reprovision(tag))
    version, where = package["version"], origin(host, name, package)
    found = f"{version} ({where})"

    if name == "torch":
        pin = torch_pin(host)
        if pin is None:
            return Check(name, WARN, f"{found}; no pin to compare with ({host.kit}/constraints.txt missing)",
                         reprovision("venv"))
        if version.split("+")[0] != pin:
            return Check(name, FAIL, f"{found}, pinned {pin}", reprovision("venv"))
        return Check(name, OK, found)

    if name == "torch_tpu":
        if not is_sophgo_torch_tpu(package["author"], package["has_tpu"]):
            return Check(name, FAIL, f"{found} is not Sophgo's torch_tpu (PyPI's torch-tpu is Google's)",
                         f"`{host.venv}/bin/pip uninstall torch-tpu`, then " + reprovision("torch_tpu"))
        pin = torch_tpu_pin(host)
        if pin and version != pin:
            return Check(name, FAIL, f"{found}, the pushed wheel is {pin}", reprovision("torch_tpu"))
        return Check(name, OK, found)

    # diffusers, transformers, accelerate: the pinned version, editable from the (patched) checkout.
    if host.sources is None:
        return Check(name, WARN, f"{found}; no pins to compare with ({host.kit}/src/sources.json missing)",
                     reprovision("upstream"))
    pins = {lib["name"]: str(lib["version"]) for lib in host.sources.get("libraries", [])}
    checkout = f"{host.sources['src_dir']}/{name}"
    if version != pins.get(name):
        return Check(name, FAIL, f"{found}, pinned {pins.get(name)}", reprovision("upstream"))
    if where != f"editable {checkout}":
        return Check(name, FAIL, f"{found}, not the editable checkout {checkout} (so without the tutorial's edits)",
                     reprovision("upstream"))
    return Check(name, OK, found)


# --------------------------------------------------------------------------- the tutorial's patches


def added_lines(patch_text: str) -> List[str]:
    """The lines a unified diff adds, without the +++ header."""
    return [line[1:] for line in patch_text.splitlines() if line.startswith("+") and not line.startswith("+++ ")]


def check_patches(host: Host) -> List[Check]:
    """Each patch the upstream role recorded in sources.json: every line it adds is in the file.

    Comparing the added lines (rather than checksums) keeps the check right for git checkouts
    and sdists alike, and names what is missing when a reinstall or a hand edit undid the patch.
    The patches come from the runners role (<kit>/patches), copied from the repository's patches/.
    """
    if host.sources is None:
        return [Check("patches", FAIL, f"{host.kit}/src/sources.json is missing: the upstream role has not run",
                      reprovision("upstream"))]
    checks = []
    for entry in host.sources.get("patches", []):
        name = f"patch:{entry['library']}"
        target = f"{host.sources['src_dir']}/{entry['library']}/{entry['file']}"
        if not entry.get("applied"):
            if host.sources.get("source") == "bundle":
                checks.append(Check(name, OK, f"not applicable (sdist): {entry['library']}'s source archive "
                                              f"has no {entry['file']}"))
            else:
                checks.append(Check(name, FAIL, f"not applied: {target} was missing when the role ran",
                                    reprovision("upstream")))
            continue
        patch_file = host.local(f"{host.kit}/patches/{entry['patch']}")
        try:
            wanted = added_lines(patch_file.read_text())
        except OSError:
            checks.append(Check(name, WARN, f"not checked: {host.kit}/patches/{entry['patch']} is missing",
                                reprovision("runners")))
            continue
        try:
            present = set(host.local(target).read_text().splitlines())
        except OSError:
            checks.append(Check(name, FAIL, f"{target} is missing",
                                f"remove {host.sources['src_dir']}/{entry['library']} and " + reprovision("upstream")))
            continue
        missing = [line for line in wanted if line not in present]
        if missing:
            checks.append(Check(name, FAIL, f"{len(missing)} of the {len(wanted)} lines {entry['patch']} adds are "
                                            f"missing from {target}, e.g. {missing[0].strip()!r}",
                                f"restore the pinned file (remove {host.sources['src_dir']}/{entry['library']}) and "
                                + reprovision("upstream")))
        else:
            checks.append(Check(name, OK, f"{entry['patch']} present in {entry['file']}"))
    return checks


# --------------------------------------------------------------------------- Sophgo's tpu_apply_all_patch


# What torch_tpu's tpu_apply_all_patch patches (its apply_table), and the first line of the kit's marker
# (roles/sophon_upstream/files/sophgo_markers.py). Sophgo's own marker starts otherwise.
SOPHGO_PATCHED = {"transformers": "4.41.2", "accelerate": "0.30.1"}
KIT_MARKER_PREFIX = "# sophon-sd-kit:"


def check_sophgo_markers(host: Host, probe: dict) -> List[Check]:
    """Whether Sophgo's tool sees each library it patches as patched, and by whom.

    Without the kit's marker the tool patches again over the kit's edits (and fails); with Sophgo's own
    it has already done so, outside the kit's checkout, and the kit's checks no longer describe the host.
    """
    checks = []
    for name, version in SOPHGO_PATCHED.items():
        package = probe.get("packages", {}).get(name)
        if package is None or package["version"] != version:
            continue
        check = f"sophgo-tool:{name}"
        marker = package.get("sophgo_marker")
        if marker is None:
            checks.append(Check(check, WARN, f"{name} {version} has no sophgo.py marker: Sophgo's tpu_apply_all_patch "
                                             "would patch it again over the kit's edits, and fail",
                                reprovision("upstream")))
        elif marker.startswith(KIT_MARKER_PREFIX):
            checks.append(Check(check, OK, f"{name} {version} marked as patched by the kit"))
        else:
            checks.append(Check(check, FAIL, f"{name} {version} was patched by Sophgo's tpu_apply_all_patch on its own, "
                                             "not by the kit: the kit's patches and checks no longer describe it",
                                f"`{host.venv}/bin/pip uninstall -y {name}`, then " + reprovision("upstream")
                                + f" (it reinstalls {name} from the kit's patched checkout and marks it)"))
    return checks


# --------------------------------------------------------------------------- limits, device, disk


def check_limits_config(host: Host) -> Check:
    """The pam_limits lines the host_env role writes: '<user> soft|hard nofile <value>'."""
    try:
        lines = host.local(host.limits_file).read_text().splitlines()
    except OSError:
        return Check("nofile_config", FAIL, f"{host.limits_file} is missing", reprovision("host_env"))
    values = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 4 and not fields[0].startswith("#") and fields[2] == "nofile":
            values[fields[1]] = fields[3]
    soft = values.get("soft", values.get("-"))
    enough = soft in ("unlimited", "infinity") or (soft or "").isdigit() and int(soft) >= WANTED_OPEN_FILES
    if not enough:
        return Check("nofile_config", FAIL, f"{host.limits_file}: soft nofile {soft}, below {WANTED_OPEN_FILES}",
                     reprovision("host_env"))
    return Check("nofile_config", OK, f"{host.limits_file}: soft {soft}, hard {values.get('hard', '?')}")


def check_limits_in_force() -> Check:
    """The limit of this session. The hard limit decides: the runners raise their soft limit up to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = {resource.RLIM_INFINITY: "unlimited"}
    detail = f"soft {shown.get(soft, soft)}, hard {shown.get(hard, hard)} in this session"
    if hard != resource.RLIM_INFINITY and hard < WANTED_OPEN_FILES:
        return Check("nofile_in_force", WARN, f"{detail}: the runners cannot reach {WANTED_OPEN_FILES}",
                     "log in again so that pam_limits applies the kit's limits file; a container is capped by its "
                     "engine: start it with --ulimit nofile=65535:524288 (podman/docker run)")
    if soft != resource.RLIM_INFINITY and soft < WANTED_OPEN_FILES:
        detail += " (the runners raise the soft limit themselves)"
    return Check("nofile_in_force", OK, detail)


def check_device(host: Host) -> Check:
    if not host.device:
        return Check("device", FAIL, f"{host.env_file} sets no ACCELERATE_TORCH_DEVICE", reprovision("host_env"))
    if not host.cpu_host and not host.device.startswith("tpu"):
        return Check("device", FAIL, f"{host.env_file} says ACCELERATE_TORCH_DEVICE={host.device} on a host "
                                     f"provisioned for its chips ({RUNTIME_KEY}=sophgo)",
                     "check the chips (the chips check above), then " + reprovision("libsophon,host_env"))
    in_shell = os.environ.get("ACCELERATE_TORCH_DEVICE")
    if in_shell is not None and in_shell != host.device:
        return Check("device", WARN, f"{host.env_file} says {host.device}, this shell says {in_shell}",
                     f"runs from this shell use {in_shell}: `unset ACCELERATE_TORCH_DEVICE` or log in again "
                     f"(make targets use DEVICE=, default {host.device})")
    return Check("device", OK, f"ACCELERATE_TORCH_DEVICE={host.device}"
                               + ("" if in_shell else " (env file; not set in this shell)"))


def check_disk(host: Host, min_free_gb: float) -> Check:
    folder = host.local(host.outputs)
    measured = folder
    while not measured.exists() and measured != measured.parent:
        measured = measured.parent  # a missing folder: measure the filesystem it would be created on
    free_gb = shutil.disk_usage(measured).free / 1e9
    detail = f"{free_gb:.1f} GB free for {host.outputs}" + ("" if folder.exists() else " (folder missing)")
    fix = (f"free space there (old runs and checkpoint-N folders under {host.outputs}) or mount a larger disk; "
           f"SD v1.4 LoRA training needs about {min_free_gb:g} GB")
    if free_gb < min_free_gb:
        return Check("disk", FAIL, f"{detail}, below {min_free_gb:g} GB", fix)
    if free_gb < 2 * min_free_gb:
        return Check("disk", WARN, f"{detail}, below {2 * min_free_gb:g} GB", fix)
    return Check("disk", OK, detail)


# --------------------------------------------------------------------------- run and report


def run_checks(host: Host, min_free_gb: float) -> Tuple[List[Check], Dict[str, dict]]:
    """All checks in report order, and what the venv said about the packages (for --json)."""
    probe = probe_venv(host)
    checks = [
        check_driver(host),
        check_chips(host),
        check_libsophon(host),
        check_venv(host, probe),
        *(check_package(host, probe, name) for name in PACKAGES),
        *check_patches(host),
        *check_sophgo_markers(host, probe),
        check_limits_config(host),
        check_limits_in_force(),
        check_device(host),
        check_disk(host, min_free_gb),
    ]
    packages = {name: {"version": package["version"], "origin": origin(host, name, package)}
                for name, package in probe.get("packages", {}).items()}
    return checks, packages


def summarize(checks: List[Check]) -> Dict[str, object]:
    counts = {status: sum(c.status == status for c in checks) for status in (OK, WARN, FAIL)}
    worst = FAIL if counts[FAIL] else WARN if counts[WARN] else OK
    return {"status": worst, **counts}


def print_plain(checks: List[Check], summary: Dict[str, object], cpu_host: bool) -> None:
    kind = "CPU host, no Sophgo runtime expected" if cpu_host else "Sophgo runtime expected"
    print(f"sophon-sd doctor on {socket.gethostname()} ({kind})")
    width = max(len(c.name) for c in checks)
    for check in checks:
        print(f"  {check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != OK:
            print(f"        {'':<{width}}  fix: {check.fix}")
    print(f"{summary[OK]} ok, {summary[WARN]} warn, {summary[FAIL]} fail")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check this sophon-sd-kit host (runtime, venv, pins, patches, limits, device, disk) and "
                    "print each problem with its fix. Exit code 1 when a check fails.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object (host, cpu_host, checks, summary) instead of text.")
    parser.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB,
                        help="Free space the outputs folder needs; below it is a failure, below twice it a warning.")
    parser.add_argument("--root", default="/",
                        help="Prefix for every host path below (a copy of a host's files, for tests).")
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE,
                        help=f"The runners' environment file (role sophon_host_env); its {ROOT_KEY} is the kit's root "
                             "(venv/, src/sources.json, constraints.txt, patches/, vendor/).")
    parser.add_argument("--limits-file", default=LIMITS_FILE, help="The pam_limits file (host_env role).")
    parser.add_argument("--venv", default=None, help="The kit's venv (default: SOPHON_SD_VENV from the env file, "
                                                     f"else {ROOT_KEY}/venv).")
    parser.add_argument("--outputs", default=None, help="The outputs folder (default: SOPHON_SD_OUTPUTS from the "
                                                        f"env file, else {STATE_DIR_KEY}/{OUTPUTS_SUBDIR}).")
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        parser.error(f"--root {args.root} is not a folder")
    if args.min_free_gb < 0:
        parser.error("--min-free-gb must be 0 or more")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        host = Host(args)
    except EnvFileError as exc:
        # Not a check like the others: without the env file there is no kit root to check.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checks, packages = run_checks(host, args.min_free_gb)
    summary = summarize(checks)
    if args.json:
        print(json.dumps({"host": socket.gethostname(), "cpu_host": host.cpu_host, "summary": summary,
                          "checks": [asdict(c) for c in checks], "packages": packages}, indent=1))
    else:
        print_plain(checks, summary, host.cpu_host)
    return 1 if summary["status"] == FAIL else 0


if __name__ == "__main__":
    sys.exit(main())
