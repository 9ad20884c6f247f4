"""The host doctor against fake hosts: a folder laid out like a provisioned host, passed as --root.

The venv's python is a small wrapper around this interpreter that sees only a folder of fake
*.dist-info records (with -S, no site-packages), so the doctor's subprocess probe runs for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sdkit_doctor

REPO = Path(__file__).resolve().parents[3]
# Not the roles' defaults: the doctor must find the kit and its state through the env file alone.
KIT = "/srv/kit-under-test"
STATE = "/srv/state-under-test"
# The test profile's pins (the tutorial's libraries, as on the demo host).
TEST_PROFILE = yaml.safe_load((REPO / "profiles/tutorial-2023-cpu/profile.yml").read_text())
PINS = {lib["name"]: str(lib["version"]) for lib in TEST_PROFILE["libraries"]}
ACCELERATE_PATCH = "accelerate/v0.16.0/accelerator.py.patch"
DIFFUSERS_PATCH = "diffusers/v0.20.0/train_text_to_image_lora.py.patch"
DIFFUSERS_FILE = "examples/text_to_image/train_text_to_image_lora.py"
DIFFUSERS_PRISTINE = REPO / "tests/unit/patches/fixtures/train_text_to_image_lora.v0.20.0.py"


class FakeHost:
    """A provisioned CPU host in bundle mode (like the demo); methods change one thing at a time."""

    def __init__(self, root: Path):
        self.root = root
        self.site = root / "fake-site-packages"
        self.env = {"SOPHON_SD_RUNTIME": "none", "ACCELERATE_TORCH_DEVICE": "cpu", "SOPHON_SD_DEVICES": "", "SOPHON_SD_DEVICE_COUNT": "0",
                    "LD_LIBRARY_PATH": "/opt/sophon/libsophon-current/lib", "SOPHON_SD_ROOT": KIT,
                    "SOPHON_SD_STATE_DIR": STATE, "SOPHON_SD_VENV": f"{KIT}/venv",
                    "SOPHON_SD_OUTPUTS": f"{STATE}/outputs"}
        self.edit_env()
        self.write("etc/security/limits.d/sophon-sd.conf",
                   "# Added by Ansible\nsophon-sd\tsoft\tnofile\t65535\nsophon-sd\thard\tnofile\t524288\n")
        (root / STATE.lstrip("/") / "outputs").mkdir(parents=True)
        self.write(f"{KIT}/constraints.txt", "# pins\nnumpy==1.26.4\ntorch==2.13.0\n")
        self.write(f"{KIT}/wheelhouse/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "")
        shutil.copytree(REPO / "patches", root / KIT.lstrip("/") / "patches")
        self.sources = {
            "source": "bundle", "src_dir": f"{KIT}/src", "venv": f"{KIT}/venv",
            "libraries": [{"name": name, "version": version} for name, version in PINS.items()],
            "patches": [
                {"library": "accelerate", "file": "src/accelerate/accelerator.py", "patch": ACCELERATE_PATCH,
                 "applied": True},
                {"library": "diffusers", "file": DIFFUSERS_FILE, "patch": DIFFUSERS_PATCH, "applied": False},
            ],
        }
        self.write_sources()
        # The patched accelerate file: what matters to the doctor is that the patch's added lines are there.
        added = sdkit_doctor.added_lines((REPO / "patches" / ACCELERATE_PATCH).read_text())
        self.write(f"{KIT}/src/accelerate/src/accelerate/accelerator.py", "import torch\n" + "\n".join(added) + "\n")
        self.install("torch", "2.13.0+cpu")
        for name, version in PINS.items():
            self.install(name, version, {"url": f"file://{KIT}/src/{name}", "dir_info": {"editable": True}})
        python = root / KIT.lstrip("/") / "venv/bin/python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\nPYTHONPATH="{self.site}" exec "{sys.executable}" -S "$@"\n')
        python.chmod(0o755)

    def write(self, host_path: str, text: str) -> Path:
        path = self.root / host_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def edit_env(self, **changes: str | None) -> None:
        """Rewrite the env file as the host_env role does, with these keys changed (None: left out)."""
        self.env.update(changes)
        lines = [f"{key}={value}" for key, value in self.env.items() if value is not None]
        self.write("etc/sophon-sd/env", "\n".join(["# written by the host_env role", *lines, ""]))

    def write_sources(self) -> None:
        self.write(f"{KIT}/src/sources.json", json.dumps(self.sources))

    def install(self, name: str, version: str, direct_url: dict | None = None, author: str = "",
                files: tuple[str, ...] = ()) -> None:
        """A dist-info record as pip leaves it (METADATA, RECORD naming FILES, and direct_url.json for file and
        editable installs)."""
        for old in self.site.glob(f"{name}-*.dist-info"):
            shutil.rmtree(old)
        info = self.site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nAuthor: {author}\n")
        (info / "RECORD").write_text("".join(f"{path},,\n" for path in files))
        if direct_url:
            (info / "direct_url.json").write_text(json.dumps(direct_url))

    def make_tpu_host(self) -> None:
        """Two chips, the driver and libsophon, Sophgo's torch_tpu from the pushed wheel."""
        self.edit_env(SOPHON_SD_RUNTIME="sophgo", ACCELERATE_TORCH_DEVICE="tpu:0", SOPHON_SD_DEVICES="tpu:0,tpu:1",
                      SOPHON_SD_DEVICE_COUNT="2")
        self.write("proc/bmsophon/driver_version", "0.4.9\n")
        self.write("dev/bm-sophon0", "")
        self.write("dev/bm-sophon1", "")
        (self.root / "opt/sophon/libsophon-0.4.9").mkdir(parents=True)
        os.symlink("libsophon-0.4.9", self.root / "opt/sophon/libsophon-current")
        wheel = f"{KIT}/vendor/torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl"
        self.write(wheel, "")
        self.install("torch_tpu", "2.1.0.post1", {"url": f"file://{wheel}", "archive_info": {}}, author="sophgo",
                     files=("torch_tpu/__init__.py", "torch_tpu/tpu/__init__.py"))


@pytest.fixture
def fake_host(tmp_path) -> FakeHost:
    return FakeHost(tmp_path / "host")


@pytest.fixture(autouse=True)
def session(monkeypatch):
    """A login session with the kit's limits and environment, whatever this test machine has."""
    monkeypatch.setattr(sdkit_doctor.resource, "getrlimit", lambda which: (65535, 524288))
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "cpu")


def doctor(fake_host: FakeHost, capsys, *args) -> tuple[int, dict]:
    """Run the doctor with --json on the fake host; returns the exit code and checks by name."""
    code = sdkit_doctor.main(["--json", "--root", str(fake_host.root), "--min-free-gb", "0", *args])
    report = json.loads(capsys.readouterr().out)
    return code, {check["name"]: check for check in report["checks"]}


def test_cpu_host_healthy(fake_host, capsys):
    code, checks = doctor(fake_host, capsys)
    assert code == 0
    assert {name: c["status"] for name, c in checks.items() if c["status"] != "ok"} == {}
    for name in ("driver", "chips", "libsophon", "torch_tpu"):
        assert checks[name]["detail"] == "not expected (CPU host)"
    assert checks["torch"]["detail"] == "2.13.0+cpu (wheel from the wheelhouse)"
    assert checks["diffusers"]["detail"] == f"{PINS['diffusers']} (editable {KIT}/src/diffusers)"
    assert checks["patch:accelerate"]["detail"].startswith(f"{ACCELERATE_PATCH} present")
    assert checks["patch:diffusers"]["detail"].startswith("not applicable (sdist)")


def test_sophgo_host_on_the_cpu_is_a_failure_not_a_cpu_host(fake_host, capsys):
    """The env file records what the operator asked for: a Sophgo host whose env file ended up with
    the CPU (its chips were unusable when it was provisioned) fails, where a guess from the device
    would have called it a healthy CPU host."""
    fake_host.edit_env(SOPHON_SD_RUNTIME="sophgo")
    code, checks = doctor(fake_host, capsys)
    assert code == 1
    assert checks["driver"]["status"] == "fail" and checks["chips"]["status"] == "fail"
    assert checks["device"]["status"] == "fail"
    assert "ACCELERATE_TORCH_DEVICE=cpu on a host provisioned for its chips" in checks["device"]["detail"]


@pytest.mark.parametrize("runtime", [None, "tpu"])
def test_env_file_without_a_known_runtime_is_one_clear_error(fake_host, capsys, runtime):
    fake_host.edit_env(SOPHON_SD_RUNTIME=runtime)
    code = sdkit_doctor.main(["--root", str(fake_host.root)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "SOPHON_SD_RUNTIME" in err and "sophon_host_env" in err


def test_plain_output_names_problems_and_fixes(fake_host, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "tpu:0")
    code = sdkit_doctor.main(["--root", str(fake_host.root), "--min-free-gb", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "(CPU host, no Sophgo runtime expected)" in out
    assert "  warn  device" in out and "fix: runs from this shell use tpu:0: `unset ACCELERATE_TORCH_DEVICE`" in out
    assert out.rstrip().endswith("ok, 1 warn, 0 fail")


def test_missing_patch_is_named_with_fix(fake_host, capsys):
    fake_host.write(f"{KIT}/src/accelerate/src/accelerate/accelerator.py", "import torch\n# reinstalled, unpatched\n")
    code, checks = doctor(fake_host, capsys)
    assert code == 1
    check = checks["patch:accelerate"]
    assert check["status"] == "fail"
    assert ACCELERATE_PATCH in check["detail"]
    assert f"{KIT}/src/accelerate/src/accelerate/accelerator.py" in check["detail"]
    assert f"remove {KIT}/src/accelerate" in check["fix"] and "--tags upstream" in check["fix"]


def test_git_checkout_with_the_real_diffusers_patch(fake_host, capsys, tmp_path):
    """In git mode the diffusers example is patched: the real patch on upstream's file passes, the bare file fails."""
    target = fake_host.write(f"{KIT}/src/diffusers/{DIFFUSERS_FILE}", DIFFUSERS_PRISTINE.read_text())
    fake_host.sources["source"] = "git"
    fake_host.sources["patches"][1]["applied"] = True
    fake_host.write_sources()
    code, checks = doctor(fake_host, capsys)
    assert code == 1 and checks["patch:diffusers"]["status"] == "fail"

    subprocess.run(["patch", "-p1", "-s", "-i", str(REPO / "patches" / DIFFUSERS_PATCH)],
                   cwd=fake_host.root / KIT.lstrip("/") / "src/diffusers", check=True)
    assert target.read_text() != DIFFUSERS_PRISTINE.read_text()
    code, checks = doctor(fake_host, capsys)
    assert code == 0 and checks["patch:diffusers"]["status"] == "ok"


def test_patch_not_deployed_is_a_warning(fake_host, capsys):
    (fake_host.root / KIT.lstrip("/") / "patches" / ACCELERATE_PATCH).unlink()
    code, checks = doctor(fake_host, capsys)
    assert code == 0 and checks["patch:accelerate"]["status"] == "warn"
    assert "--tags runners" in checks["patch:accelerate"]["fix"]


def test_limits_below_65535_warn(fake_host, capsys, monkeypatch):
    monkeypatch.setattr(sdkit_doctor.resource, "getrlimit", lambda which: (20000, 20000))
    code, checks = doctor(fake_host, capsys)
    assert code == 0
    check = checks["nofile_in_force"]
    assert check["status"] == "warn" and "soft 20000, hard 20000" in check["detail"]
    assert "log in again" in check["fix"] and "ulimit" in check["fix"]


def test_low_soft_limit_is_fine_when_the_hard_limit_allows(fake_host, capsys, monkeypatch):
    monkeypatch.setattr(sdkit_doctor.resource, "getrlimit", lambda which: (1024, 524288))
    _, checks = doctor(fake_host, capsys)
    assert checks["nofile_in_force"]["status"] == "ok"


def test_limits_file_below_65535_fails(fake_host, capsys):
    fake_host.write("etc/security/limits.d/sophon-sd.conf", "sophon-sd soft nofile 4096\n")
    code, checks = doctor(fake_host, capsys)
    assert code == 1 and checks["nofile_config"]["status"] == "fail"
    assert "--tags host_env" in checks["nofile_config"]["fix"]


def test_low_disk_fails_and_warns(fake_host, capsys):
    free_gb = shutil.disk_usage(fake_host.root).free / 1e9
    code, checks = doctor(fake_host, capsys, "--min-free-gb", str(free_gb * 2))
    assert code == 1 and checks["disk"]["status"] == "fail"
    assert f"{STATE}/outputs" in checks["disk"]["detail"] and "free space" in checks["disk"]["fix"]
    code, checks = doctor(fake_host, capsys, "--min-free-gb", str(free_gb * 0.75))
    assert code == 0 and checks["disk"]["status"] == "warn"


def test_broken_venv_python_reported(fake_host, capsys):
    python = fake_host.root / KIT.lstrip("/") / "venv/bin/python"
    python.unlink()
    python.symlink_to("/usr/bin/python3.99")  # the interpreter the venv was built from is gone
    code, checks = doctor(fake_host, capsys)
    assert code == 1
    assert checks["venv"]["status"] == "fail" and f"{KIT}/venv/bin/python cannot run" in checks["venv"]["detail"]
    assert f"remove {KIT}/venv" in checks["venv"]["fix"]
    assert checks["torch"]["status"] == "fail" and "not checked" in checks["torch"]["detail"]


def test_venv_python_that_crashes_is_reported(fake_host, capsys):
    python = fake_host.root / KIT.lstrip("/") / "venv/bin/python"
    python.write_text("#!/bin/sh\necho 'ImportError: libpython' >&2\nexit 1\n")
    _, checks = doctor(fake_host, capsys)
    assert checks["venv"]["status"] == "fail" and "ImportError: libpython" in checks["venv"]["detail"]


def test_wrong_version_and_non_editable_install_fail(fake_host, capsys):
    fake_host.install("diffusers", "0.21.0", {"url": f"file://{KIT}/src/diffusers", "dir_info": {"editable": True}})
    fake_host.install("accelerate", PINS["accelerate"])  # from an index: the patched checkout is not used
    code, checks = doctor(fake_host, capsys)
    assert code == 1
    assert checks["diffusers"]["status"] == "fail" and f"pinned {PINS['diffusers']}" in checks["diffusers"]["detail"]
    assert checks["accelerate"]["status"] == "fail" and "not the editable checkout" in checks["accelerate"]["detail"]


def test_tpu_host_healthy(fake_host, capsys, monkeypatch):
    fake_host.make_tpu_host()
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "tpu:0")
    code, checks = doctor(fake_host, capsys)
    assert code == 0
    assert checks["driver"]["detail"] == "bmsophon loaded (0.4.9)"
    assert checks["chips"]["detail"] == "2: bm-sophon0, bm-sophon1"
    assert checks["libsophon"]["detail"].startswith("0.4.9 ")
    wheel = f"{KIT}/vendor/torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl"
    assert checks["torch_tpu"]["detail"] == f"2.1.0.post1 (file {wheel})"


def test_tpu_host_without_runtime_fails(fake_host, capsys, monkeypatch):
    fake_host.make_tpu_host()
    for path in ("proc/bmsophon", "dev", "opt/sophon"):
        shutil.rmtree(fake_host.root / path)
    fake_host.install("torch_tpu", "0.2.0", {}, author="Google")
    code, checks = doctor(fake_host, capsys)
    assert code == 1
    assert [checks[name]["status"] for name in ("driver", "chips", "libsophon", "torch_tpu")] == ["fail"] * 4
    assert "modprobe bmsophon" in checks["driver"]["fix"] and "Google" in checks["torch_tpu"]["detail"]


@pytest.mark.parametrize("author, files, sophgo", [
    ("sophgo", ("torch_tpu/tpu/__init__.py",), True),
    # The author line alone is not enough (the role's probe has always required the tpu package too).
    ("sophgo", ("torch_tpu/__init__.py",), False),
    ("Google LLC", ("torch_tpu/tpu/__init__.py",), False),
])
def test_torch_tpu_is_sophgos_by_the_rule_the_role_uses(fake_host, capsys, author, files, sophgo):
    fake_host.make_tpu_host()
    wheel = f"{KIT}/vendor/torch_tpu-2.1.0.post1-cp311-cp311-linux_x86_64.whl"
    fake_host.install("torch_tpu", "2.1.0.post1", {"url": f"file://{wheel}", "archive_info": {}}, author=author,
                      files=files)
    _, checks = doctor(fake_host, capsys)
    assert (checks["torch_tpu"]["status"] == "ok") is sophgo, checks["torch_tpu"]
    if not sophgo:
        assert "is not Sophgo's torch_tpu" in checks["torch_tpu"]["detail"]


def test_json_parses_when_run_by_the_system_python(fake_host):
    """playbooks/doctor.yml runs it as `python3 sdkit_doctor.py --json`: stdlib only, one JSON object."""
    system_python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run([system_python, str(REPO / "runners/sdkit_doctor.py"), "--json", "--root", str(fake_host.root),
                           "--min-free-gb", "0"], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "ACCELERATE_TORCH_DEVICE": "cpu"})
    report = json.loads(proc.stdout)
    assert set(report) >= {"host", "cpu_host", "summary", "checks", "packages"} and report["cpu_host"] is True
    assert all(set(check) == {"name", "status", "detail", "fix"} for check in report["checks"])
    assert report["summary"]["fail"] == 0 and proc.returncode == 0
    assert report["packages"]["diffusers"] == {"version": PINS["diffusers"], "origin": f"editable {KIT}/src/diffusers"}


def test_outputs_default_to_the_state_dir(fake_host, capsys):
    fake_host.edit_env(SOPHON_SD_OUTPUTS=None)
    _, checks = doctor(fake_host, capsys)
    assert checks["disk"]["detail"].endswith(f"free for {STATE}/outputs")


@pytest.mark.parametrize("key", ["SOPHON_SD_ROOT", "SOPHON_SD_STATE_DIR"])
def test_env_file_without_a_path_key_is_one_clear_message(fake_host, capsys, key):
    fake_host.edit_env(SOPHON_SD_OUTPUTS=None, **{key: None})
    code = sdkit_doctor.main(["--root", str(fake_host.root)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: {fake_host.root}/etc/sophon-sd/env has no {key}: " \
                  "rerun the kit's site.yml (role sophon_host_env)\n"


def test_missing_env_file_is_one_clear_message(fake_host, capsys):
    (fake_host.root / "etc/sophon-sd/env").unlink()
    assert sdkit_doctor.main(["--json", "--root", str(fake_host.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "env' not found: rerun the kit's site.yml (role sophon_host_env)" in captured.err


def test_bad_root_is_one_clear_message(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        sdkit_doctor.main(["--root", str(tmp_path / "nowhere")])
    assert info.value.code == 2 and "is not a folder" in capsys.readouterr().err



# --- Sophgo's tpu_apply_all_patch: the peft pins are the versions it patches -----------------------------------


def peft_pins(fake_host: FakeHost) -> None:
    for name, version in (("transformers", "4.41.2"), ("accelerate", "0.30.1")):
        fake_host.install(name, version, {"url": f"file://{KIT}/src/{name}", "dir_info": {"editable": True}})


def test_sophgo_tool_markers_absent_warn_with_the_fix(fake_host, capsys):
    peft_pins(fake_host)
    _, checks = doctor(fake_host, capsys)
    for name in ("transformers", "accelerate"):
        check = checks[f"sophgo-tool:{name}"]
        assert check["status"] == "warn" and "would patch it again" in check["detail"], check
        assert "--tags upstream" in check["fix"]


def test_sophgo_tool_markers_written_by_the_kit_are_ok(fake_host, capsys):
    peft_pins(fake_host)
    subprocess.run([sys.executable, str(REPO / "roles/sophon_upstream/files/sophgo_markers.py"), "--site",
                    str(fake_host.site), "transformers=4.41.2", "accelerate=0.30.1"], check=True, capture_output=True)
    _, checks = doctor(fake_host, capsys)
    assert checks["sophgo-tool:accelerate"]["status"] == checks["sophgo-tool:transformers"]["status"] == "ok"


def test_host_patched_by_sophgos_tool_on_its_own_fails_with_the_fix(fake_host, capsys):
    peft_pins(fake_host)
    # What accelerate-Sophgo.patch leaves: Sophgo's own marker in the installed package.
    (fake_host.site / "accelerate").mkdir()
    (fake_host.site / "accelerate" / "sophgo.py").write_text("# ====\n#\n# Copyright (C) 2022 Sophgo Technologies Inc.\n")
    code, checks = doctor(fake_host, capsys)
    check = checks["sophgo-tool:accelerate"]
    assert code != 0 and check["status"] == "fail" and "on its own" in check["detail"], check
    assert f"{KIT}/venv/bin/pip uninstall -y accelerate" in check["fix"] and "--tags upstream" in check["fix"]


def test_tutorial_pins_get_no_sophgo_tool_check(fake_host, capsys):
    _, checks = doctor(fake_host, capsys)
    assert not [name for name in checks if name.startswith("sophgo-tool:")]
