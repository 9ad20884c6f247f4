"""sdkit_files: the env file as every runner reads it, and JSON state read and written safely."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sdkit_files import (HUB_TOKEN_FILE_KEY, ROOT_KEY, EnvFile, EnvFileError, count, fsync_tree, number, parse_env,
                         printable, read_hub_token, read_json, read_limited, write_json_atomic, write_text_atomic)

# What the role sophon_host_env writes (roles/sophon_host_env/templates/env.j2), plus the edge cases.
ENV_TEXT = """\
# Ansible managed (role sophon_host_env): edits are overwritten.
# SOPHON_SD_ROOT=/commented/out

SOPHON_SD_ROOT=/srv/kit
  SOPHON_SD_STATE_DIR = /srv/state
SOPHON_SD_DEVICES=
HF_ENDPOINT=http://mirror.invalid/?a=1&b=2
SOPHON_SD_EXTRA="kept as written" # not a comment
not a key value line
=no key
SOPHON_SD_DEVICES=tpu:0,tpu:1
"""


def test_parse_env_reads_the_roles_lines_and_skips_the_rest():
    assert parse_env(ENV_TEXT) == {
        "SOPHON_SD_ROOT": "/srv/kit",
        "SOPHON_SD_STATE_DIR": "/srv/state",
        "SOPHON_SD_DEVICES": "tpu:0,tpu:1",  # the last of a repeated key
        "HF_ENDPOINT": "http://mirror.invalid/?a=1&b=2",  # split at the first '=' only
        "SOPHON_SD_EXTRA": '"kept as written" # not a comment',
    }


def test_parse_env_of_nothing():
    assert parse_env("") == {} and parse_env("\n  \n# only comments\n") == {}


def test_require_names_the_file_the_key_and_the_fix(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_STATE_DIR=/srv/state\nSOPHON_SD_ROOT=\n")
    env = EnvFile.read(env_file)
    assert env.require("SOPHON_SD_STATE_DIR") == "/srv/state"
    with pytest.raises(EnvFileError) as info:
        env.require(ROOT_KEY)  # empty is as good as missing: every required key is a path
    assert str(info.value) == f"{env_file} has no SOPHON_SD_ROOT: rerun the kit's site.yml (role sophon_host_env)"


def test_missing_env_file_is_one_error_with_the_fix(tmp_path):
    with pytest.raises(EnvFileError) as info:
        EnvFile.read(tmp_path / "nope")
    message = str(info.value)
    assert f"'{tmp_path / 'nope'}' not found" in message and "role sophon_host_env" in message
    assert "--env-file" in message and "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_env_file_says_why(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("SOPHON_SD_ROOT=/srv/kit\n")
    env_file.chmod(0)
    with pytest.raises(EnvFileError, match="cannot be read"):
        EnvFile.read(env_file)


# The last: nested deeper than the parser recurses, which raised RecursionError (no ValueError) out of the reader.
@pytest.mark.parametrize("content", [None, "", '{"step": 3', "[1, 2]", "not json", '{"a": ' + "[" * 100000])
def test_read_json_is_none_for_anything_but_an_object(tmp_path, content):
    path = tmp_path / "state.json"
    if content is not None:
        path.write_text(content)
    assert read_json(path) is None


def test_atomic_writes_replace_the_file_and_leave_nothing_behind(tmp_path):
    path = tmp_path / "job.json"
    path.write_text("old")
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert read_json(path) == {"a": [1, 2], "b": 1}
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    write_text_atomic(str(path), "130\n")
    assert path.read_text() == "130\n"
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]


def test_atomic_write_keeps_the_umask_mode(tmp_path):
    old_umask = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "exit_status", "0\n")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "exit_status").stat().st_mode & 0o777 == 0o640


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"kept": true}')
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "half written \ud800")  # fails inside the write, after the temporary file exists
    assert read_json(path) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]


def test_hub_token_comes_from_the_file_the_env_key_names(tmp_path):
    """Issue 9 item 6 (tokens): the token lives in its own 0640 file, never in the world-readable env file."""
    token_file = tmp_path / "hub_token"
    token_file.write_text("hf_secret\n")
    assert read_hub_token({HUB_TOKEN_FILE_KEY: str(token_file)}) == "hf_secret"
    assert read_hub_token({}) is None and read_hub_token({HUB_TOKEN_FILE_KEY: ""}) is None
    token_file.write_text("\n")
    assert read_hub_token({HUB_TOKEN_FILE_KEY: str(token_file)}) is None  # created before anyone had a token
    with pytest.raises(EnvFileError) as info:
        read_hub_token({HUB_TOKEN_FILE_KEY: str(tmp_path / "nope"), "SOPHON_SD_USER": "trainer"})
    # The group the inventory chose (sophon_sd_user), as the env file records it.
    assert "SOPHON_SD_HUB_TOKEN_FILE" in str(info.value) and "0640 root:trainer" in str(info.value)


def test_fsync_tree_walks_files_and_folders(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.bin").write_bytes(b"x")
    (tmp_path / "a" / "b" / "y.bin").write_bytes(b"y")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    fsync_tree(tmp_path / "a")
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in synced) == ["a", "a/b", "a/b/y.bin", "a/x.bin"]


def test_the_module_is_stdlib_only():
    """sdkit_doctor.py runs with the host's system python3 and no venv: nothing outside the stdlib."""
    source = Path(sys.modules["sdkit_files"].__file__).read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines()
                if line.startswith(("import ", "from ")) and "__future__" not in line}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# --------------------------------------------------------------------------- host data (issue 21 item 9)


def test_read_limited_takes_regular_files_only_and_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opened without O_NONBLOCK, this would wait for a writer for ever
    (tmp_path / "file").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert read_limited(tmp_path / "fifo", 10) is None
    assert read_limited(tmp_path / "link", 10) is None
    assert read_limited(tmp_path / "missing", 10) is None
    assert read_limited(tmp_path, 10) is None
    assert read_limited(tmp_path / "file", 4) == b"0123"
    assert read_limited(tmp_path / "file", 4, tail=True) == b"6789"
    assert read_limited(tmp_path / "file", 40, tail=True) == b"0123456789"


def test_read_json_refuses_a_file_over_its_limit(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"pad": "x" * 100}))
    assert read_json(path, limit=50) is None and read_json(path)["pad"] == "x" * 100
    os.unlink(path)
    os.mkfifo(path)
    assert read_json(path) is None


@pytest.mark.parametrize("text, shown", [
    ("a\x1b]0;title\x07b", "ab"),  # OSC: the terminal's title
    ("a\x1b]52;c;cm0gLXJmIH4=\x1b\\b", "ab"),  # OSC 52: the clipboard, ended by ST
    ("a\x1b[2K\r\x1b[1Afinished", "afinished"),  # CSI: erase the line, move up
    ("a\x9b31mb\x7f\x00c", "a31mbc"),  # C1 CSI, DEL and NUL go; what follows them is harmless text
    ("tab\there\nnext", "tab\there next"),
    (3.5, "3.5"),
])
def test_printable_strips_what_steers_a_terminal(text, shown):
    assert printable(text) == shown


def test_printable_keeps_newlines_when_asked():
    assert printable("one\n\x1b[31mtwo", newlines=True) == "one\ntwo"


@pytest.mark.parametrize("value, as_number, as_count", [
    (3, 3.0, 3), (0.5, 0.5, None), ("3", None, None), (True, None, None), (float("nan"), None, None),
    (float("inf"), None, None), (-1, -1.0, None), (None, None, None), ([1], None, None),
])
def test_numbers_of_the_wrong_type_are_unknown(value, as_number, as_count):
    assert number(value) == as_number and count(value) == as_count
