#!/usr/bin/python3
"""What a hostile runner command tries with root's terminal, and what it runs as and with.

Prints one line, ``PROBE {json}``: TIOCSTI on fds 0-2 ("typed" or the error), opening /dev/tty, whether
it leads a session of its own, its uid, HF_HOME and what its stdin is. Run locally by
tests/unit/runners/test_sdkit_as_runner.py and on a test host by tests/roles/test_host_boundaries.py.
"""
import fcntl
import json
import os
import termios

found = {"sid_is_own": os.getsid(0) == os.getpid(), "user": os.getuid(), "hf_home": os.environ.get("HF_HOME"),
         "stdin": os.readlink("/proc/self/fd/0")}
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"x")
        found[f"tiocsti{fd}"] = "typed"
    except OSError as error:
        found[f"tiocsti{fd}"] = error.strerror
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    found["dev_tty"] = "opened"
except OSError as error:
    found["dev_tty"] = error.strerror
print("PROBE " + json.dumps(found))
