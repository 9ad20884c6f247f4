"""The fleet report names each failed or unreachable host with its reason, and only those."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PLAYBOOK = """
- name: The control node's own checks
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Check the bundle
      ansible.builtin.debug:
        msg: the control node is not counted as a fleet host

- name: A fleet where one host fails and one cannot be reached
  hosts: all
  gather_facts: false
  tasks:
    - name: Reach the host
      ansible.builtin.ping:
    - name: Check the disk
      ansible.builtin.fail:
        msg: "only 3 GB free under /opt: free some space and rerun"
      when: inventory_hostname == 'node-bad'
    - name: A failure that a rescue handles
      block:
        - name: Try something optional
          ansible.builtin.fail:
            msg: this one is rescued
      rescue:
        - name: Carry on
          ansible.builtin.debug:
            msg: rescued
    - name: A loop where one item fails
      ansible.builtin.fail:
        msg: "item {{ item }} is broken\\e]0;owned\\a"
      loop: [1, 2]
      when: inventory_hostname == 'node-loop' and item == 2
    - name: Ask the job tool
      ansible.builtin.command:
        argv: [sh, -c, "echo 'error: run id is not usable: use letters' >&2; exit 2"]
      changed_when: false
      when: inventory_hostname == 'node-tool'
    - name: A second failure on a host that already failed is not its cause
      ansible.builtin.fail:
        msg: consequence
      when: inventory_hostname == 'node-bad'
"""

INVENTORY = """
fleet:
  hosts:
    node-ok: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
    node-bad: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
    node-loop: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
    node-tool: {ansible_connection: local, ansible_python_interpreter: "{{ ansible_playbook_python }}"}
    node-gone: {ansible_connection: ssh, ansible_host: 127.0.0.1, ansible_port: 1, ansible_timeout: 5}
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("fleet")
    (folder / "play.yml").write_text(PLAYBOOK)
    (folder / "hosts.yml").write_text(INVENTORY)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(["ansible-playbook", "-i", str(folder / "hosts.yml"), str(folder / "play.yml")],
                            capture_output=True, text=True, env=env, check=False, cwd=REPO)
    assert result.returncode != 0, "a failed and an unreachable host must fail the run"
    return result.stdout.split("FLEET REPORT", 1)[-1].split("TASKS RECAP", 1)[0]


def test_the_failed_host_is_named_with_its_first_failure(report):
    assert 'node-bad: FAILED at "Check the disk": only 3 GB free under /opt: free some space and rerun' in report
    assert "consequence" not in report


def test_a_failed_loop_names_the_failed_item(report):
    assert 'node-loop: FAILED at "A loop where one item fails": One or more items failed: item 2 is broken' in report


def test_a_failed_command_is_named_with_its_stderr(report):
    """Issue 20: the poll's status task fails as a plain command; "non-zero return code" alone says nothing."""
    assert ('node-tool: FAILED at "Ask the job tool": non-zero return code: error: run id is not usable: '
            'use letters') in report


def test_the_unreachable_host_is_named_with_the_connection_error(report):
    line = next(line for line in report.splitlines() if line.startswith("node-gone:"))
    assert "UNREACHABLE" in line and "port 1" in line


def test_completed_hosts_and_rescued_failures_are_not_reported(report):
    assert "1 of 5 hosts completed." in report
    assert "node-ok:" not in report and "rescued" not in report


def test_escape_sequences_in_a_hosts_message_do_not_reach_the_terminal(report):
    """Issue 21 item 9: a failure message is the host's text; an OSC sequence in it set the terminal's title."""
    assert "\x1b" not in report and "\x07" not in report
