"""sdkit_as_runner: the runner user's command gets no terminal, and Ctrl-C still stops it.

`runuser` is a stand-in here (it drops its `-u USER --` and runs the rest as this user): what is
checked is what the wrapper gives the command. tests/roles/test_host_boundaries.py runs the real
runuser through the host Makefile as root in a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RUNNERS

WRAPPER = RUNNERS / "sdkit_as_runner.py"
FAKE_RUNUSER = """#!/bin/sh
[ "$1" = -u ] && [ "$3" = -- ] || { echo "runuser stand-in: unexpected $*" >&2; exit 99; }
shift 3
exec "$@"
"""
# Tries what a hostile command would: type into the terminal on fds 0-2, and open /dev/tty.
PROBE = str(Path(__file__).resolve().parents[2] / "standins" / "terminal_probe.py")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    runuser = tmp_path / "bin" / "runuser"
    runuser.parent.mkdir()
    runuser.write_text(FAKE_RUNUSER)
    runuser.chmod(0o755)
    return {**os.environ, "PATH": f"{runuser.parent}:{os.environ['PATH']}"}


def in_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run ARGV as the session leader of a new pseudo-terminal (as root's shell is); its output."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    return output.decode()


def probe_result(output: str) -> dict:
    """The probe's JSON line (the terminal echoes what was typed into it before the line)."""
    line = next(line for line in output.splitlines() if "{" in line)
    return json.loads(line[line.index("{"):])


def test_plain_runuser_stand_in_lets_the_command_type_into_the_terminal(env):
    """The check below is meaningful: run as today's Makefile did, the probe types into the terminal."""
    found = probe_result(in_a_terminal(["runuser", "-u", "nobody", "--", sys.executable, PROBE], env))
    if found["tiocsti0"] != "typed":
        pytest.skip(f"this kernel refuses TIOCSTI to everyone ({found['tiocsti0']})")
    assert found["dev_tty"] == "opened"


def test_command_has_its_own_session_and_no_terminal(env):
    found = probe_result(in_a_terminal([sys.executable, str(WRAPPER), "nobody", "--", sys.executable, PROBE], env))

    assert found["sid_is_own"] and found["stdin"] == "/dev/null"
    assert all(found[f"tiocsti{fd}"] != "typed" for fd in (0, 1, 2)), found
    assert found["dev_tty"] == "No such device or address", found


def test_exit_status_and_output_come_through(env):
    done = subprocess.run([sys.executable, str(WRAPPER), "nobody", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
                          env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")


SPAWNERS = {
    "child": "import subprocess; p = subprocess.Popen(['sleep', '300']); open('{pidfile}', 'w').write(str(p.pid)); p.wait()",
    # A non-interactive shell's background job ignores SIGINT: it is killed once the shell has exited.
    "background job": "import subprocess; subprocess.run(['sh', '-c', 'sleep 300 & echo $! > {pidfile}; wait'])",
}


@pytest.mark.parametrize("spawner", SPAWNERS)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_command_and_leaves_nothing_running(env, tmp_path, sig, spawner):
    """Ctrl-C reaches root's foreground group (make, the wrapper), not the command's own session: the
    wrapper passes it on to the command's whole process group."""
    pidfile = tmp_path / "pid"
    wrapper = subprocess.Popen([sys.executable, str(WRAPPER), "nobody", "--", sys.executable, "-c",
                                SPAWNERS[spawner].format(pidfile=pidfile)], env=env)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    sleeper = int(pidfile.read_text())

    wrapper.send_signal(sig)

    assert wrapper.wait(timeout=10) in (128 + sig, 1)  # Python's KeyboardInterrupt exits 1
    for _ in range(100):
        if not Path(f"/proc/{sleeper}").exists() or "Z" in Path(f"/proc/{sleeper}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"sleep {sleeper} still runs after {sig.name}")


def test_no_command_is_refused_with_a_message(env):
    done = subprocess.run([sys.executable, str(WRAPPER), "nobody", "--"], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "no command: give it after --" in done.stderr
