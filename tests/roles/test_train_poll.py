"""playbooks/train.yml's polling survives a days-long run (issue 9, item 2).

The poll used to be a task file that included itself once per round: ansible-core 2.19 raised
"maximum recursion depth exceeded" at about round 246 (2 hours at 30 s a round), so a long run's
results were never fetched. Here the real poll (playbooks/tasks/train_poll.yml) runs against a
stand-in job tool that reports `running` for SDKIT_POLL_ROUNDS rounds, at a 0-second interval, and
each round's progress must be printed. The rounds are retries of one task whatever the connection,
so this runs on the control node itself (connection local): no test host needed.

Each round costs Ansible about half a second of CPU, so `make test` polls 30 rounds, and checks that
the poll is one retried task that includes nothing (what cannot recurse); `make test-long` polls 300,
past the old limit with room to spare (passed: 300 rounds in 153 s and 159 CPU seconds on a quiet
2-core machine, December 2026).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, PlayResult

ROUNDS = int(os.environ.get("SDKIT_POLL_ROUNDS", "30"))
# Prints the job tool's status JSON; counts its calls in a file next to itself.
FAKE_JOB_TOOL = f"""
import json, pathlib, sys
counter = pathlib.Path(sys.argv[0]).with_suffix(".count")
calls = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(calls))
state = "running" if calls < {ROUNDS} else "finished"
print(json.dumps({{"state": state, "lines": [f"job0: {{state}}, round {{calls}}"], "jobs": []}}))
"""
PLAYBOOK = f"""
- name: Poll a stand-in job for {ROUNDS} rounds
  hosts: "{{{{ sophon_sd_hosts }}}}"
  gather_facts: false
  vars:
    sophon_sd_train_python: {sys.executable}
    sophon_sd_train_job_tool: "{{{{ fake_job_tool }}}}"
    sophon_sd_train_job_args: []
    sophon_sd_train_poll_interval: 0
    sophon_sd_train_poll_rounds: {ROUNDS + 100}
  tasks:
    - name: Poll
      ansible.builtin.import_tasks: {REPO}/playbooks/tasks/train_poll.yml

    - name: The last status is the job's end
      ansible.builtin.assert:
        that: sophon_sd_train_status.state == 'finished'
"""


def test_the_poll_is_one_retried_task_that_includes_nothing():
    import yaml

    tasks = yaml.safe_load((REPO / "playbooks/tasks/train_poll.yml").read_text())
    text = json.dumps(tasks)
    assert "include_tasks" not in text and "import_tasks" not in text
    [poll] = [task for task in tasks[0]["block"] if "until" in task]
    assert poll["retries"] == "{{ (sophon_sd_train_poll_rounds | int) - 1 }}"


def test_polling_lasts_every_round_and_prints_each(tmp_path: Path):
    tool = tmp_path / "fake_job.py"
    tool.write_text(FAKE_JOB_TOOL)
    playbook = tmp_path / "poll.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"control-node": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))

    done = subprocess.run(["ansible-playbook", str(playbook), "-i", str(inventory), "-e", "sophon_sd_hosts=all",
                           "-e", f"fake_job_tool={tool}"], capture_output=True, text=True, check=False,
                          env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})
    result = PlayResult(done.returncode, done.stdout + done.stderr)
    host_name = "control-node"

    assert not result.failed, result.output[-3000:]
    assert "recursion" not in result.output
    # The callback printed the progress of every round but the last (which the debug task shows).
    rounds = [line for line in result.output.splitlines() if f"[{host_name}] job0: running, round" in line]
    assert len(rounds) == ROUNDS - 1, result.output[-3000:]
    assert f"job0: finished, round {ROUNDS}" in result.output
