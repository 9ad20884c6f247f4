"""The files the runners share with the roles and with each other: the env file and JSON state.

The role sophon_host_env writes ``/etc/sophon-sd/env``; it is the one place a host says where
the kit lives (SOPHON_SD_ROOT), where its state goes (SOPHON_SD_STATE_DIR), which venv and
chips to use. Every runner reads it through ``EnvFile`` so that all of them understand the file
the same way and fail the same way when the role has not run.

Standard library only, and importable by Python 3.8+: sdkit_doctor.py runs with the host's
system python3 and sdkit_job.py must not pay for importing torch on every status poll, so
neither may import sdkit_env. The runners are deployed flat into ``<root>/runners/``, which is
why this is imported as ``import sdkit_files``; the control-node tools add ``runners/`` to
their path to use it too.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

DEFAULT_ENV_FILE = "/etc/sophon-sd/env"
ROOT_KEY = "SOPHON_SD_ROOT"
STATE_DIR_KEY = "SOPHON_SD_STATE_DIR"
# The runner user (the inventory's sophon_sd_user): who runs the jobs and owns their folders.
USER_KEY = "SOPHON_SD_USER"
# What the operator provisioned the host to run on: "sophgo" (its BM1684X chips) or "none" (no chips).
RUNTIME_KEY = "SOPHON_SD_RUNTIME"
RUNTIMES = ("sophgo", "none")
# The stack the host was provisioned with (profiles/<name>/profile.yml); train_lora.py records it in run.json.
PROFILE_KEY = "SOPHON_SD_PROFILE"
# Names the file holding a Hugging Face token (0640 root:<runner user's group>). The token itself never goes
# into the env file: that one is world-readable and sourced by every login shell.
HUB_TOKEN_FILE_KEY = "SOPHON_SD_HUB_TOKEN_FILE"
ENV_FILE_FIX = "rerun the kit's site.yml (role sophon_host_env)"

PathLike = Union[str, "os.PathLike[str]"]


class EnvFileError(Exception):
    """The env file is missing, unreadable or lacks a key: the role sophon_host_env has to (re)run."""


def parse_env(text: str) -> Dict[str, str]:
    """The KEY=VALUE lines of an env file, as systemd's EnvironmentFile= and make's include read
    the unquoted lines the role writes.

    - blank lines and lines whose first non-blank character is ``#`` are skipped;
    - the key is what precedes the first ``=``, so a value may contain ``=`` (``A=b=c`` is ``b=c``);
    - whitespace around key and value is dropped; the rest of the value is kept verbatim: quotes
      and a `` # `` are part of it (make would keep them too, so the role never writes them);
    - lines without ``=`` or with an empty key are skipped, not guessed at;
    - a key given twice takes its last value, as in a shell or systemd.
    """
    values: Dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, separator, value = stripped.partition("=")
        key = key.strip()
        if separator and key:
            values[key] = value.strip()
    return values


class EnvFile:
    """An env file read once; ``require`` names the file and the fix when a key is missing."""

    def __init__(self, path: PathLike, values: Dict[str, str]):
        self.path = Path(path)
        self.values = values

    @classmethod
    def read(cls, path: PathLike) -> "EnvFile":
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise EnvFileError(f"environment file '{path}' not found: {ENV_FILE_FIX}, or pass --env-file") from None
        except OSError as exc:
            raise EnvFileError(f"environment file '{path}' cannot be read ({exc.strerror}): run as root or "
                               f"pass --env-file") from None
        return cls(path, parse_env(text))

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.values.get(key, default)

    def require(self, key: str) -> str:
        """The value of ``key``; empty counts as missing, since every required key is a path."""
        value = self.values.get(key, "")
        if not value:
            raise EnvFileError(f"{self.path} has no {key}: {ENV_FILE_FIX}")
        return value


# How much of a run-folder file a reader takes: job.json, run.json and status.json are a few KiB.
JSON_LIMIT = 1 << 20
# ESC followed by a CSI/OSC/DCS/... sequence (up to its terminator), a lone ESC with the next
# character, or any other C0 (but tab and newline), DEL or C1 character. The sequences go whole, so
# that no "]0;title" is left behind to read as text.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|.?)"
                      r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]", re.DOTALL)


def printable(value: Any, newlines: bool = False) -> str:
    """``value`` as text that cannot steer a terminal: escape sequences (which can fake a state, set
    the title or write the clipboard) and control characters go; tab and, when ``newlines``, newline
    stay. For anything that came from a host (file and folder names, metrics, logs) before it is
    printed."""
    text = _ESCAPES.sub("", str(value))
    return text if newlines else text.replace("\n", " ")


def read_limited(path: PathLike, limit: int, tail: bool = False) -> Optional[bytes]:
    """Up to ``limit`` bytes of the regular file ``path`` (its last ones with ``tail``); None when it is
    missing, unreadable, a link, or not a regular file.

    The files of a run folder are written by the runner user, who loads untrusted models: a FIFO
    put in place of job.json would block a reader forever and a device or a huge file would have
    it read without end. So: no link followed (O_NOFOLLOW), no blocking on open (O_NONBLOCK, which
    a FIFO without a writer would otherwise do), fstat of what was opened, and a bounded read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if tail and info.st_size > limit:
            os.lseek(fd, info.st_size - limit, os.SEEK_SET)
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_json(path: PathLike, limit: int = JSON_LIMIT) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``; None when it is missing, unreadable, cut short, too long, not a
    regular file or not an object.

    Callers poll files that other processes write or that a kill may have truncated: absent
    and unusable mean the same to them ("nothing recorded yet").
    """
    data = read_limited(path, limit + 1)
    if data is None or len(data) > limit:
        return None
    try:
        parsed = json.loads(data)
    # UnicodeDecodeError is a ValueError; a file of 100000 "[" (the runner user's to write) a RecursionError.
    except (ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None


def number(value: Any) -> Optional[float]:
    """``value`` when it is a finite int or float read from JSON (not a bool, string or NaN), else None:
    what a host wrote may be of any type, and a report shows "unknown" rather than crash on it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def count(value: Any) -> Optional[int]:
    """A count read from a run's files (steps, attempts): a whole number of at least 0, else None."""
    found = number(value)
    return int(found) if found is not None and found >= 0 and found == int(found) else None


def read_hub_token(environ: Mapping[str, str]) -> Optional[str]:
    """The token in the file named by SOPHON_SD_HUB_TOKEN_FILE; None when the key is absent or empty.

    An empty file also means no token (a role may create it before anyone has one). A file that
    is named but unreadable is an error, not "no token": the run would otherwise fail later, at
    the hub, with a message that says nothing about the file.
    """
    name = environ.get(HUB_TOKEN_FILE_KEY, "").strip()
    if not name:
        return None
    try:
        token = Path(name).read_text().strip()
    except OSError as exc:
        raise EnvFileError(f"hub token file '{name}' ({HUB_TOKEN_FILE_KEY}) cannot be read ({exc.strerror}): it "
                           f"should be 0640 root:{environ.get(USER_KEY) or '<the runner user>'}; {ENV_FILE_FIX}") from None
    return token or None


def fsync_tree(path: PathLike) -> None:
    """fsync every file and folder under ``path`` (and ``path`` itself), so a rename after it
    publishes content that is on disk, not only in the page cache."""
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def fsync_dir(path: PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (the folder's own metadata)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new file, never part of one.

    The temporary file is in the same folder (a rename across filesystems is not atomic), is named
    after this process (concurrent writers do not clobber each other's) and is created with mode
    0666 less the umask, as a plain write would; fsync before the rename so that a crash cannot
    leave the new name pointing at empty content, and fsync the folder after it so that the rename
    survives a crash too.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    # O_NOFOLLOW: a link planted under the temporary name is refused rather than written through.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself, or a crash could bring back the old file


def write_json_atomic(path: PathLike, data: Any) -> None:
    """``data`` as indented, key-sorted JSON (stable diffs, readable by people), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
