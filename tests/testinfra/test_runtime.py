"""Sophgo's runtime on a provisioned host: libsophon, the device fact, torch_tpu, the runners' environment.

Meaningful on real BM1684X hosts and on the Molecule hosts, which get the vendor STAND-INS
(tests/standins). Where the two differ, the test says which it is checking: a stand-in host declares
its chips in /etc/sophon-standin/chips; a real one must show them to torch_tpu as well.
"""

import json

import pytest
from conftest import not_roots

LIBSOPHON_CURRENT = "/opt/sophon/libsophon-current"
ENV_FILE = "/etc/sophon-sd/env"
PROFILE_SCRIPT = "/etc/profile.d/sophon-sd.sh"
FACT = "/etc/ansible/facts.d/sophon.fact"
VENV = "/opt/sophon-sd/venv"
USER = "sophon-sd"


@pytest.fixture(scope="module")
def libsophon_version(host) -> str:
    package = host.package("sophon-libsophon")
    assert package.is_installed, "sophon-libsophon is not installed"
    return package.version


@pytest.fixture(scope="module")
def device_fact(host) -> dict:
    fact = host.file(FACT)
    assert fact.exists and fact.user == "root" and fact.mode == 0o755, f"{FACT} missing or not an executable root file"
    return json.loads(host.check_output(FACT))


@pytest.fixture(scope="module")
def env_file(host) -> dict:
    values = {}
    for line in host.file(ENV_FILE).content_string.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.fixture(scope="module")
def standin_chips(host):
    """The chip count a stand-in host was told to report, or None on a real host."""
    config = host.file("/etc/sophon-standin/chips")
    return int(config.content_string.strip()) if config.exists else None


def test_libsophon_layout_and_symlink(host, libsophon_version):
    prefix = f"/opt/sophon/libsophon-{libsophon_version}"
    current = host.file(LIBSOPHON_CURRENT)
    assert current.is_symlink and current.linked_to == prefix
    for sub in ("bin", "lib"):
        assert host.file(f"{prefix}/{sub}").is_directory
    assert host.file(f"{prefix}/bin/bm-smi").mode & 0o111


def test_libsophon_loader_and_path_configuration(host):
    conf = host.file("/etc/ld.so.conf.d/libsophon.conf")
    assert conf.content_string.split() == [f"{LIBSOPHON_CURRENT}/lib"]
    scanned = host.check_output("ldconfig -v 2>/dev/null | grep -E '^/' | cut -d: -f1")
    assert f"{LIBSOPHON_CURRENT}/lib" in scanned.splitlines()
    assert f"{LIBSOPHON_CURRENT}/bin" in host.file("/etc/profile.d/libsophon-bin-path.sh").content_string
    assert host.check_output("bash -lc 'command -v bm-smi'") == f"{LIBSOPHON_CURRENT}/bin/bm-smi"


def test_dev_package_matches_the_runtime(host, libsophon_version):
    dev = host.package("sophon-libsophon-dev")
    if not dev.is_installed:
        pytest.skip("sophon-libsophon-dev not installed on this host (sophon_libsophon_dev_enabled: false)")
    assert dev.version == libsophon_version
    assert host.file(f"/opt/sophon/libsophon-{libsophon_version}/include").is_directory


def test_driver_when_installed(host, libsophon_version):
    driver = host.package("sophon-driver")
    if not driver.is_installed:
        pytest.skip("sophon-driver not installed on this host (sophon_libsophon_driver_enabled: false)")
    assert driver.version == libsophon_version
    assert host.file("/sys/module/bmsophon").exists, "sophon-driver installed but bmsophon not loaded"


def test_vendor_packages_are_kept_with_the_kit(host, libsophon_version):
    assert host.file(f"/opt/sophon-sd/vendor/sophon-libsophon_{libsophon_version}_amd64.deb").is_file


def test_device_fact_reports_chips_with_indexes(host, device_fact, libsophon_version, standin_chips):
    assert device_fact["libsophon_version"] == libsophon_version
    chips = device_fact["chips"]
    assert set(device_fact) >= {"chip_count", "chips", "pci_devices", "dev_nodes", "bm_smi", "driver_version"}
    assert device_fact["chip_count"] == len(chips)
    assert [chip["index"] for chip in chips] == list(range(len(chips)))
    assert [chip["device"] for chip in chips] == [f"tpu:{i}" for i in range(len(chips))]
    # Every host here has a chip: a Sophgo host with none fails to provision (tests/roles).
    if standin_chips is not None:
        assert device_fact["chip_count"] == standin_chips
        assert device_fact["source"] == "bm-smi"
        assert all(chip["status"] == "Active" and chip["bus_id"] for chip in chips)
    else:
        assert device_fact["chip_count"] > 0, f"no BM1684X chip usable on this host: {device_fact}"


def test_torch_tpu_is_sophgos_and_imports_from_the_venv(host, host_profile):
    probe = (
        "import json, importlib.metadata as m, torch, torch_tpu;"
        "d = m.distribution('torch-tpu');"
        "print(json.dumps({'file': torch_tpu.__file__, 'version': d.version, 'author': d.metadata['Author'],"
        " 'summary': d.metadata['Summary'], 'has_tpu': hasattr(torch_tpu, 'tpu'),"
        " 'scaler': hasattr(torch_tpu.tpu.amp, 'GradScaler'), 'count': torch_tpu.tpu.device_count(),"
        " 'dists': sorted(x.metadata['Name'] for x in m.distributions() if 'tpu' in x.metadata['Name'].lower())}))"
    )
    info = json.loads(host.check_output(f'{VENV}/bin/python -c "{probe}"'))
    assert info["file"].startswith(f"{VENV}/lib/")
    assert "sophgo" in info["author"].lower()
    assert info["has_tpu"] and info["scaler"]
    assert info["version"] == str(host_profile["torch_tpu"]), "not the version the host's profile pairs with its torch"
    assert info["dists"] == ["torch-tpu"], f"more than one tpu package in the venv: {info['dists']}"


def test_torch_tpu_sees_the_chips_on_real_hosts(host, device_fact, standin_chips):
    if standin_chips is not None:
        pytest.skip("stand-in host: the torch_tpu stand-in has no TPU code (real hardware only)")
    count = int(host.check_output(f"{VENV}/bin/python -c 'import torch_tpu; print(torch_tpu.tpu.device_count())'"))
    assert count == device_fact["chip_count"]


def test_runner_user_owns_outputs_but_not_the_venv(host):
    user = host.user(USER)
    assert user.exists and 0 < user.uid < 1000 and user.group == USER
    # Its home, the state dir, is root's: the user cannot swap the folders below it for links (issue 9).
    home = host.file(user.home)
    assert home.is_directory and home.user == "root" and home.mode == 0o755
    for path, mode in ((f"{user.home}/outputs", 0o750), (f"{user.home}/huggingface", 0o750), (f"{user.home}/runs", 0o755)):
        folder = host.file(path)
        assert folder.is_directory and folder.user == USER and folder.mode == mode, path
    venv = host.file(VENV)
    assert venv.user == "root" and not venv.mode & 0o022
    as_user = f"setpriv --reuid={USER} --regid={USER} --clear-groups"
    assert host.run(f"{as_user} test -w {VENV}/lib").rc != 0, "the runner user can write into the venv"
    # The first import happened at provision time, as root: the runner user's import needs no write access.
    host.check_output(f"{as_user} env HOME={user.home} {VENV}/bin/python -c 'import torch_tpu'")


def test_open_files_limits_configuration(host):
    """The configuration, not the limit in force: containers cannot raise their hard limit."""
    limits = [line.split() for line in host.file("/etc/security/limits.d/sophon-sd.conf").content_string.splitlines()
              if line.strip() and not line.startswith("#")]
    values = {kind: int(value) for domain, kind, item, value in limits if domain == USER and item == "nofile"}
    assert values["soft"] == 65535 and values["hard"] >= 65535
    dropin = host.file("/etc/systemd/system.conf.d/sophon-sd-limits.conf").content_string
    assert "[Manager]" in dropin
    soft, _, hard = [line for line in dropin.splitlines() if line.startswith("DefaultLimitNOFILE=")][0] \
        .split("=", 1)[1].partition(":")
    assert int(soft) == 65535 and int(hard or soft) >= 65535



def open_files(limits_text: str) -> tuple[int, int]:
    """Soft and hard 'Max open files' from a /proc/PID/limits text."""
    line = next(line for line in limits_text.splitlines() if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_services_get_the_open_files_limit(host):
    """A service started now, as the training jobs are, gets the drop-in's limits: the handler's
    daemon-reload applied them. No service gets more than systemd itself has (/proc/1/limits; 20000
    in the test containers, which cannot raise it), so that ceiling caps what is expected."""
    dropin = host.file("/etc/systemd/system.conf.d/sophon-sd-limits.conf").content_string
    soft, _, hard = [line for line in dropin.splitlines() if line.startswith("DefaultLimitNOFILE=")][0] \
        .split("=", 1)[1].partition(":")
    _, ceiling = open_files(host.file("/proc/1/limits").content_string)
    shown = host.check_output(f"systemd-run --quiet --wait --pipe --uid={USER} cat /proc/self/limits")
    assert open_files(shown) == (min(int(soft), ceiling), min(int(hard or soft), ceiling))


def test_env_file_lists_one_device_per_chip(env_file, device_fact):
    devices = [f"tpu:{i}" for i in range(device_fact["chip_count"])]
    assert env_file["SOPHON_SD_DEVICES"] == ",".join(devices)
    assert env_file["SOPHON_SD_DEVICE_COUNT"] == str(len(devices))
    # A Sophgo host records what it was provisioned for and trains on its first chip, never the CPU.
    assert env_file["SOPHON_SD_RUNTIME"] == "sophgo"
    assert devices and env_file["ACCELERATE_TORCH_DEVICE"] == devices[0]


def test_env_file_sets_library_path_and_hugging_face(env_file):
    assert env_file["LD_LIBRARY_PATH"] == f"{LIBSOPHON_CURRENT}/lib"
    assert env_file["HF_HOME"] == "/var/lib/sophon-sd/huggingface"
    # The default asset source is the bundle: the Hugging Face libraries stay offline.
    assert env_file["HF_HUB_OFFLINE"] == "1" and env_file["SOPHON_SD_ASSETS"]
    for key, value in env_file.items():
        assert not any(c in value for c in " \"'$`\\"), f"{key}={value} cannot be read by systemd and make alike"


def login_environment(host, keys: list[str], user: str) -> dict[str, str]:
    """What a login shell of USER sets of KEYS (unset keys left out)."""
    shown = host.check_output("runuser -u %s -- bash -lc 'for k in %s; do [ -n \"${!k+x}\" ] && printf \"%%s=%%s\\n\" "
                              "$k \"${!k}\"; done; true' </dev/null" % (user, " ".join(keys)))
    return dict(line.split("=", 1) for line in shown.splitlines())


def test_profile_script_exports_the_same_environment_to_the_runner_user(host, env_file):
    assert login_environment(host, sorted(env_file), USER) == env_file
    twice = host.check_output(f"runuser -u {USER} -- bash -c '. {PROFILE_SCRIPT}; . {PROFILE_SCRIPT}; echo $LD_LIBRARY_PATH'")
    assert twice == f"{LIBSOPHON_CURRENT}/lib"


def test_roots_login_shells_get_none_of_the_runner_environment(host, env_file):
    """HF_HOME is the runner user's cache: root's Hugging Face tools would follow its planted links and
    load its pickles (issue 21, item 8). Root's make targets read the env file themselves (tests/roles/test_host_boundaries.py)."""
    assert login_environment(host, sorted(env_file), "root") == {}


def test_runtime_kit_root_is_roots_after_torch_tpus_first_import(host):
    """torch_tpu's first import writes into its own site-packages; it runs as root at provisioning, so
    the venv stays root's and writable by root only (issue 21, item 2)."""
    assert host.file(f"{VENV}/bin/python").exists
    assert not_roots(host) == []
