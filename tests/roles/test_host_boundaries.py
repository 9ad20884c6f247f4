"""What root runs is root's, and what root starts as the runner user cannot reach root (issue 21).

On one systemd test host with the roles sophon_host_env and sophon_runners (its venv borrows the
control node's ML venv's site-packages, as in test_train_privileges.py):

- item 3: `make` run by root in a terminal starts the runner user's command with no terminal: TIOCSTI
  on fds 0-2 and opening /dev/tty fail (with `runuser -u` alone the command typed into root's shell),
  and Ctrl-C typed at that terminal still stops the command and what it started;
- item 8: root's login shells get none of the runner environment (HF_HOME is the runner's cache);
  the runner user's do, and root's make targets still read it from the env file;
- item 2: a rerun of the role repairs a kit root an older kit left (files of uid 1000, group-writable),
  changes nothing under --check, never follows a link, and the run after it reports changed=0.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import ML_SITE_MOUNT, REPO, borrow_ml_venv

PODMAN_OPTIONS = ML_SITE_MOUNT
HOST_ENV_ONLY = {"sophon_sd_sophgo_runtime": False, "sophon_host_env_assets_source": "hub"}
KIT_ROOT = "/opt/sophon-sd"
USER = "sophon-sd"
HF_HOME = "/var/lib/sophon-sd/huggingface"
# Runs ARGV as the session leader of a new pseudo-terminal, as root's interactive shell is; prints what
# the terminal showed. With --ctrl-c-after FILE: types Ctrl-C at the terminal once FILE exists.
IN_A_TERMINAL = """
import os, pty, sys, time
args = sys.argv[1:]
flag = args[1] if args[0] == "--ctrl-c-after" else None
argv = args[args.index("--") + 1:]
pid, master = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
output = b""
deadline = time.monotonic() + 120
os.set_blocking(master, False)
while time.monotonic() < deadline:
    if flag and os.path.exists(flag) and open(flag).read().strip():
        os.write(master, b"\\x03")
        flag = None
    try:
        chunk = os.read(master, 4096)
    except BlockingIOError:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
        continue
    except OSError:
        break
    output += chunk
sys.stdout.write(output.decode(errors="replace"))
"""
# What a hostile runner command tries with root's terminal (shared with the unit test of sdkit_as_runner.py).
PROBE = (REPO / "tests" / "standins" / "terminal_probe.py").read_text()
# A runner command that starts a child and waits: the child's pid goes to the flag file.
SLEEPER = """#!/usr/bin/python3
import subprocess
child = subprocess.Popen(["sleep", "300"])
open("/tmp/sdkit-sleeper.pid", "w").write(str(child.pid))
child.wait()
"""


@pytest.fixture(scope="module")
def host(throwaway_host, tmp_path_factory):
    throwaway_host.check_output("apt-get update -qq && apt-get install -y -qq make >/dev/null")
    borrow_ml_venv(throwaway_host)
    for playbook, tags in (("runtime.yml", "host_env"), ("runners.yml", None)):
        result = throwaway_host.play(playbook, HOST_ENV_ONLY, tags=tags)
        assert not result.failed, result.output[-3000:]
    scripts = tmp_path_factory.mktemp("scripts")
    for name, text in (("in_terminal.py", IN_A_TERMINAL), ("sdkit-probe", PROBE), ("sdkit-sleeper", SLEEPER)):
        (scripts / name).write_text(text)
        throwaway_host.put(scripts / name, f"/tmp/{name}")
    throwaway_host.check_output("chmod 0755 /tmp/sdkit-probe /tmp/sdkit-sleeper")
    return throwaway_host


def in_a_terminal(host, command: str, ctrl_c_after: str = "") -> str:
    flag = f"--ctrl-c-after {ctrl_c_after} " if ctrl_c_after else ""
    return host.check_output(f"python3 /tmp/in_terminal.py {flag}-- {command} </dev/null")


def test_runner_command_from_roots_make_gets_no_terminal(host):
    shown = in_a_terminal(host, f"make -s -C {KIT_ROOT} infer PYTHON=/tmp/sdkit-probe")
    found = json.loads(re.search(r"PROBE (\{.*\})", shown).group(1))

    assert found["user"] == int(host.check_output(f"id -u {USER}"))
    assert [found[f"tiocsti{fd}"] for fd in (0, 1, 2)] == ["Inappropriate ioctl for device"] * 3, found
    assert found["dev_tty"] == "No such device or address", found
    # Root's make still gives the command the runner environment, from the env file.
    assert found["hf_home"] == HF_HOME and found["stdin"] == "/dev/null"


def test_ctrl_c_at_roots_terminal_stops_the_runner_command_and_its_children(host):
    host.check_output("rm -f /tmp/sdkit-sleeper.pid")
    in_a_terminal(host, f"make -s -C {KIT_ROOT} infer PYTHON=/tmp/sdkit-sleeper", ctrl_c_after="/tmp/sdkit-sleeper.pid")

    sleeper = host.check_output("cat /tmp/sdkit-sleeper.pid").strip()
    assert host.run(f"for i in $(seq 50); do kill -0 {sleeper} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
                    ).returncode == 0, "the runner command's child outlived Ctrl-C"
    assert host.check_output(f"pgrep -u {USER} || true").strip() == ""


LOGIN_ENV = "bash -lc env </dev/null"


def test_roots_login_shell_gets_no_runner_environment(host):
    roots = host.check_output(LOGIN_ENV)
    assert not re.search(r"^(HF_HOME|SOPHON_SD_\w+|ACCELERATE_TORCH_DEVICE)=", roots, re.MULTILINE), roots
    runners = host.check_output(f"runuser -u {USER} -- {LOGIN_ENV}")
    assert f"HF_HOME={HF_HOME}\n" in runners and "SOPHON_SD_ROOT=" in runners


# A kit root as an older kit left it: an sdist's files of uid 1000 and 0664/0775, a venv file of that
# uid, a group-writable runner, and a link of that uid to a root-only file whose mode must not change.
OLD_KIT = f"""set -e
mkdir -p {KIT_ROOT}/src/diffusers/src
echo 'print(1)' > {KIT_ROOT}/src/diffusers/src/setup.py
ln -sfn /etc/shadow {KIT_ROOT}/src/diffusers/shadow
chown -hR 1000:1000 {KIT_ROOT}/src/diffusers
chmod 0775 {KIT_ROOT}/src/diffusers {KIT_ROOT}/src/diffusers/src
chmod 0664 {KIT_ROOT}/src/diffusers/src/setup.py
chown 1000:1000 {KIT_ROOT}/venv/pyvenv.cfg && chmod 0666 {KIT_ROOT}/venv/pyvenv.cfg
chmod g+w {KIT_ROOT}/runners/infer.py
"""
NOT_ROOTS = f"find {KIT_ROOT} \\( ! -user root -o ! -group root -o \\( ! -type l -perm /022 \\) \\) -print"


def changed_count(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output))


def test_a_rerun_repairs_a_kit_root_an_older_kit_left(host):
    shadow = host.check_output("stat -c '%U:%G %a' /etc/shadow")
    host.check_output(OLD_KIT)
    wrong = host.check_output(NOT_ROOTS).split()
    assert len(wrong) == 6, wrong

    checked = host.play("runners.yml", HOST_ENV_ONLY, check=True)
    assert not checked.failed and "6 path(s) under /opt/sophon-sd were not root:root" in checked.output, \
        checked.output[-3000:]
    assert host.check_output(NOT_ROOTS).split() == wrong

    repaired = host.play("runners.yml", HOST_ENV_ONLY)
    assert not repaired.failed, repaired.output[-3000:]
    assert host.check_output(NOT_ROOTS).strip() == ""
    assert host.check_output(f"stat -c '%a' {KIT_ROOT}/src/diffusers/src/setup.py {KIT_ROOT}/src/diffusers "
                             f"{KIT_ROOT}/venv/pyvenv.cfg {KIT_ROOT}/runners/infer.py").split() == ["644", "755", "644", "755"]
    assert host.check_output("stat -c '%U:%G %a' /etc/shadow") == shadow

    again = host.play("runners.yml", HOST_ENV_ONLY)
    assert not again.failed and changed_count(again.output) == 0, again.output[-3000:]
