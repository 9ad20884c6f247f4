#!/usr/bin/env python3
"""Run a command as the runner user, from root, with no terminal.

`runuser -u USER -- CMD` alone leaves CMD in root's session with root's terminal on fds 0-2: CMD (code
the runner user can influence: its Hugging Face cache, its pickles) could type into root's shell with
the TIOCSTI ioctl once root's `make` returns, or change the terminal's settings. Here CMD gets a
session of its own (no controlling terminal: /dev/tty does not open, TIOCSTI fails), stdin from
/dev/null, and its output through pipes that this process copies to its own stdout and stderr, so it
never holds a descriptor of root's terminal.

Ctrl-C still stops it: the terminal's SIGINT reaches only root's foreground process group, so this
process passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the command's whole process group, kills what
is left of that group once the command has exited, and exits with the command's status (128+N for
signal N), as a shell would.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import sys
from collections.abc import Sequence

PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
CHUNK = 65536


def start(user: str, command: Sequence[str]) -> tuple[int, int, int]:
    """Fork the command as USER in a new session; returns its pid and the read ends of its stdout, stderr."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    # The output goes through pipes: Python's block buffering there would hold back progress lines.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            # An ignored signal stays ignored across exec: Ctrl-C must reach the command.
            for sig in PASSED_ON:
                signal.signal(sig, signal.SIG_DFL)
            os.execvpe("runuser", ["runuser", "-u", user, "--", *command], env)
        except BaseException as error:  # noqa: BLE001 - nothing may return into the parent's code
            os.write(2, f"sdkit_as_runner: cannot start {command[0]} as {user}: {error}\n".encode())
        finally:
            os._exit(127)
    os.close(out_write)
    os.close(err_write)
    return pid, out_read, err_read


def pass_on(pid: int, passed: list[int]) -> None:
    """Send our signals on to the command's process group (the child itself until its setsid has run);
    PASSED records them."""
    def handler(sig: int, _frame: object) -> None:
        passed.append(sig)
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    for sig in PASSED_ON:
        signal.signal(sig, handler)


def write_all(fd: int, data: bytes) -> None:
    """Write DATA to FD; a closed or gone terminal drops it, so that the command never blocks on a full pipe."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def relay(pid: int, out_read: int, err_read: int) -> int:
    """Copy the command's output until the command has exited and its pipes are drained; its exit code.
    A process it left behind that keeps the pipes open does not hold us: once the command has exited,
    we stop at the first quiet moment."""
    selector = selectors.DefaultSelector()
    selector.register(out_read, selectors.EVENT_READ, 1)
    selector.register(err_read, selectors.EVENT_READ, 2)
    status: int | None = None
    while selector.get_map():
        ready = selector.select(timeout=0.2 if status is not None else 1.0)
        for key, _ in ready:
            data = os.read(key.fd, CHUNK)
            if data:
                write_all(key.data, data)
            else:
                selector.unregister(key.fd)
                os.close(key.fd)
        if status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = raw if done else None
        elif not ready:
            break
    if status is None:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run COMMAND as USER (root only, through runuser) in a session of its own with no terminal: "
                    "stdin from /dev/null, output relayed, Ctrl-C and kill passed on. The host Makefile runs "
                    "the runner user's targets through it.")
    parser.add_argument("user", help="The runner user (sophon_runners_user), e.g. sophon-sd.")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="The command and its arguments, after --, e.g. -- env DEVICE=cpu python infer.py.")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: give it after --")
    pid, out_read, err_read = start(args.user, command)
    passed: list[int] = []
    pass_on(pid, passed)
    code = relay(pid, out_read, err_read)
    if passed:
        # Stopped from outside: what the command left in its group (a shell's background job ignores
        # SIGINT) goes too, so that nothing of it outlives root's make.
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
