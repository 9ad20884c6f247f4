"""Bad input to playbooks/runtime.yml (libsophon, torch_tpu, host environment): each case stops the
play with one clear message, and either nothing was installed or a rerun after the fix completes.

The vendor files are the STAND-INS from tests/standins (built once per run). All tests share one
long-lived host (sdkit-rt-bad-*) and run in file order: the cases that need no venv come first, then
one fixture makes the kit's venv once for the torch_tpu cases (with torch borrowed from the control
node's ML venv: building it is the Molecule scenarios' part). Between tests the runtime is removed
again (packages, fact, torch_tpu, the environment files); the venv stays.

Where a case cannot happen on this host for real, the test says how it is provoked: the container is
Debian 12 on x86_64, so the unsupported-platform case narrows the supported lists instead of faking
the facts, and the missing-kernel-headers case relies on the container's kernel having no
linux-headers package in Debian's archive (skipped where it has one).
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import KIT_VENV, ML_SITE_MOUNT, REPO, SshHost, borrow_ml_venv

PODMAN_OPTIONS = ML_SITE_MOUNT
WHEEL_311 = "torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl"
WHEEL_310 = "torch_tpu-2.1.0.post1-cp310-cp310-linux_x86_64.whl"
GOOGLE_WHEEL = "torch_tpu-0.2.0-py3-none-any.whl"
LIBSOPHON_DEB = "sophon-libsophon_0.4.9_amd64.deb"
CLEAN_RUNTIME = (
    "dpkg --purge sophon-libsophon-dev sophon-libsophon sophon-driver >/dev/null 2>&1; "
    f"[ -x {KIT_VENV}/bin/pip ] && {KIT_VENV}/bin/pip uninstall -y -q torch-tpu >/dev/null 2>&1; "
    "rm -rf /opt/sophon /opt/sophon-sd/vendor /etc/ansible/facts.d/sophon.fact /etc/sophon-standin "
    "/etc/sophon-sd /etc/profile.d/sophon-sd.sh /etc/security/limits.d/sophon-sd.conf "
    "/etc/systemd/system.conf.d/sophon-sd-limits.conf; true"
)


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("standins")
    subprocess.run([str(REPO / "tests/standins/build.sh"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def standin_vars(standins) -> dict:
    return yaml.safe_load((standins / "standins.yml").read_text())


@pytest.fixture(scope="module")
def rt_host(throwaway_host):
    return throwaway_host


@pytest.fixture
def clean_host(rt_host):
    rt_host.run(CLEAN_RUNTIME)
    return rt_host


@pytest.fixture
def vendor(tmp_path, standins) -> Path:
    """A fresh vendor folder with every stand-in a host needs (copies: tests may damage them)."""
    folder = tmp_path / "vendor"
    folder.mkdir()
    for name in ("sophon-driver_0.4.9_amd64.deb", LIBSOPHON_DEB, "sophon-libsophon-dev_0.4.9_amd64.deb",
                 WHEEL_311):
        shutil.copy(standins / name, folder / name)
    return folder


def runtime_vars(vendor: Path, standin_vars: dict, **overrides) -> dict:
    variables = {key: value for key, value in standin_vars.items() if key.startswith("sophon_")}
    variables.update(sophon_libsophon_vendor_dir=str(vendor), sophon_torch_tpu_vendor_dir=str(vendor),
                     sophon_libsophon_driver_enabled=False)
    variables.update(overrides)
    return variables


def message(output: str, fragment: str) -> str:
    """The failure message containing fragment, from the task result the play prints for the host
    (`fatal: [host]: FAILED! => {...}`, one JSON line, whatever the terminal width)."""
    messages = []
    for line in output.splitlines():
        if "FAILED! => {" in line:
            messages.append(str(json.loads(line.split("=> ", 1)[1]).get("msg", "")))
    hits = [text for text in messages if fragment in text]
    assert hits, f"no failure message containing {fragment!r}; messages: {messages}\n{output[-2000:]}"
    return hits[0]


def nothing_installed(host: SshHost) -> None:
    assert host.run("dpkg -s sophon-libsophon").returncode != 0, "sophon-libsophon was installed"
    for path in ("/opt/sophon", "/opt/sophon-sd/vendor", "/etc/ansible/facts.d/sophon.fact", "/etc/sophon-sd"):
        assert not host.exists(path), f"{path} exists: something was installed"


def torch_tpu_author(host: SshHost):
    """Author of the torch-tpu in the venv, or None when there is none."""
    result = host.run(f"{KIT_VENV}/bin/python -c \"import importlib.metadata as m; print(m.metadata('torch-tpu')['Author'])\"")
    return result.stdout.strip() if result.returncode == 0 else None


# --------------------------------------------------------------------------- before any venv


# The control-node preflights' cases (vendor files missing, checksums unset, unsupported platforms, Google's
# wheel) are unit tests of the roles' checks (tests/unit/roles/sophon_libsophon, sophon_torch_tpu). What stays
# here is each check's wiring (a bad input reaches the module or action plugin and its message stops the play)
# and the cases that need a real host.
def test_checksum_mismatch_stops_before_anything_is_installed(clean_host, vendor, standin_vars):
    """sophon_libsophon's preflight wiring."""
    with (vendor / LIBSOPHON_DEB).open("ab") as deb:
        deb.write(b"tampered")
    actual = hashlib.sha256((vendor / LIBSOPHON_DEB).read_bytes()).hexdigest()
    result = clean_host.play("runtime.yml", runtime_vars(vendor, standin_vars))
    assert result.failed
    line = message(result.output, "Checksum mismatch")
    assert f"{LIBSOPHON_DEB} has sha256 {actual}" in line
    assert f"sophon_libsophon_sha256 says {standin_vars['sophon_libsophon_sha256']}" in line
    assert "Nothing was installed" in line
    nothing_installed(clean_host)


def test_sophgo_host_without_a_usable_chip_fails_naming_what_was_found(clean_host, vendor, standin_vars):
    """The default expects one chip: a Sophgo server whose cards are not usable fails here instead
    of being set up to train on its CPU."""
    variables = runtime_vars(vendor, standin_vars)
    result = clean_host.play("runtime.yml", variables, tags="libsophon")
    assert result.failed
    line = message(result.output, "should have 1 BM1684X chip(s)")
    assert "but 0 can be used" in line and "PCI devices 1f1c:1686: none" in line
    assert "no /dev/bm-sophon*" in line and "get devcount failed! no sophon device found" in line
    assert "sophon_sd_sophgo_runtime: false" in line
    # The fix: the card shows up (here: the bm-smi stand-in is told there is one); the rerun completes.
    clean_host.check_output("mkdir -p /etc/sophon-standin && echo 1 > /etc/sophon-standin/chips")
    result = clean_host.play("runtime.yml", variables, tags="libsophon")
    assert not result.failed, result.output[-3000:]
    assert '"chip_count": 1' in clean_host.check_output("/etc/ansible/facts.d/sophon.fact")


def test_driver_without_kernel_headers_says_so(clean_host, vendor, standin_vars):
    kernel = clean_host.check_output("uname -r").strip()
    clean_host.check_output("apt-get update -qq >/dev/null 2>&1 || true")
    if clean_host.run(f"apt-cache show linux-headers-{kernel}").returncode == 0:
        pytest.skip(f"Debian's archive has linux-headers-{kernel}: the kernel headers would really install")
    result = clean_host.play("runtime.yml", runtime_vars(vendor, standin_vars, sophon_libsophon_driver_enabled=True),
                       tags="libsophon")
    assert result.failed
    line = message(result.output, f"kernel headers missing for {kernel}")
    assert f"linux-headers-{kernel}" in line and "sophon_libsophon_driver_enabled: false" in line
    assert clean_host.run("dpkg -s sophon-driver").returncode != 0


# --------------------------------------------------------------------------- with the kit's venv


@pytest.fixture(scope="module")
def venv(rt_host, standins, standin_vars):
    """The kit's venv with torch: the sophon_venv role runs over a venv that borrows the ML venv's
    packages, so it pushes the wheelhouse and constraints and finds torch already installed."""
    borrow_ml_venv(rt_host, with_pip=True)
    result = rt_host.play("runtime.yml", {}, tags="venv")
    assert not result.failed, result.output[-3000:]
    return KIT_VENV


def test_pypi_torch_tpu_in_the_venv_is_refused_then_replaced(clean_host, venv, vendor, standins, standin_vars):
    clean_host.put(standins / "google" / GOOGLE_WHEEL, f"/tmp/{GOOGLE_WHEEL}")
    clean_host.check_output(f"{venv}/bin/pip install -q --no-deps --no-index /tmp/{GOOGLE_WHEEL}")
    variables = runtime_vars(vendor, standin_vars)
    result = clean_host.play("runtime.yml", variables, tags="torch_tpu")
    assert result.failed
    line = message(result.output, "already has a torch_tpu that is not Sophgo")
    assert "torch-tpu 0.2.0 by" in line and "Google LLC" in line and "Google's Cloud TPU" in line
    assert "sophon_torch_tpu_foreign_action: remove" in line
    assert torch_tpu_author(clean_host) == "Google LLC", "the foreign package must be left alone when failing"
    result = clean_host.play("runtime.yml", dict(variables, sophon_torch_tpu_foreign_action="remove"), tags="torch_tpu")
    assert not result.failed, result.output[-3000:]
    assert torch_tpu_author(clean_host) == "sophgo"


def test_wheel_for_another_python_is_refused(clean_host, venv, vendor, standins, standin_vars):
    """The host-side check's wiring: the module runs under the venv's Python and its message stops the play."""
    # Sophgo's 2.1.0.post1 wheel is cp310; the test profile's venv is Python 3.11.
    shutil.copy(standins / WHEEL_310, vendor / WHEEL_310)
    result = clean_host.play("runtime.yml", runtime_vars(
        vendor, standin_vars, sophon_torch_tpu_wheel=WHEEL_310,
        sophon_torch_tpu_sha256=standin_vars["standin_torch_tpu_cp310_sha256"]), tags="torch_tpu")
    assert result.failed
    line = message(result.output, f"{WHEEL_310} is built for cp310-cp310-linux_x86_64")
    assert "runs Python 3.11 (cp311)" in line and "Nothing was installed" in line
    assert torch_tpu_author(clean_host) is None


def test_wheel_paired_with_another_torch_is_refused_on_the_control_node(clean_host, vendor, tmp_path, standin_vars):
    """A torch_tpu built for torch 2.8.0 (Requires-Dist: torch==2.8.0) where the host's profile pins torch 2.13.0:
    stopped by the preflight on the control node, naming both versions, before the host changes (the preflight
    action plugin's wiring)."""
    made = subprocess.run(["python3", str(REPO / "tests/standins/make_wheel.py"), "sophgo", str(tmp_path / "torch28"),
                           "--python", "cp311", "--torch", "2.8.0"], check=True, capture_output=True, text=True)
    wheel = Path(made.stdout.strip())
    shutil.copy(wheel, vendor / WHEEL_311)
    result = clean_host.play("runtime.yml", runtime_vars(
        vendor, standin_vars, sophon_torch_tpu_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest()), tags="torch_tpu")
    assert result.failed
    line = message(result.output, f"{clean_host.name}: {vendor}/{WHEEL_311} is built for torch 2.8.0 (its Requires-Dist)")
    assert "profile tutorial-2023-cpu pins torch 2.13.0 (sophon_venv_torch_version" in line and "Nothing was changed" in line
    assert "TASK [sophon_torch_tpu : Push the torch_tpu wheel]" not in result.output, "the host was changed"
    assert torch_tpu_author(clean_host) is None
