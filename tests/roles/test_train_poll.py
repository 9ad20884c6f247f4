"""playbooks/train.yml's polling: every host every round, whatever `forks` is, for days (issues 9 and 20).

The poll is a play in rounds (strategy sophon_rounds, playbooks/strategy_plugins/): each round is a few
short tasks over all hosts and one wait on the control node. Here the real round
(playbooks/tasks/train_poll.yml) runs against a stand-in job tool on the control node itself (connection
local, no test host needed) at a 0-second interval.

* One host polled for SDKIT_POLL_ROUNDS rounds: every round is printed, nothing recurses, and the control
  node's CPU per round at the end is what it was at the start. A self-including poll raised "maximum
  recursion depth exceeded" at about round 246; a retried task held a fork per host for the whole run.
* Three hosts with forks=1 whose jobs end in different rounds: every host's line in every round, each
  host's results fetched in the round its own jobs end, and a host that cannot be reached is reported
  in each round and polled to the end.

`make test` polls 30 rounds; `make test-long` 400 (see test_polling_lasts_every_round_at_a_flat_cost).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, PlayResult

ROUNDS = int(os.environ.get("SDKIT_POLL_ROUNDS", "30"))
# A stand-in for sdkit_job.py status: `running` until call FINISH, then `finished`, with one job folder
# holding a metrics file. Each call appends the control node's CPU seconds so far (ansible-playbook and
# its reaped workers, from /proc) and ansible-playbook's resident memory (kB) to a log next to itself.
FAKE_JOB_TOOL = """
import json, os, pathlib, sys
host, finish, runs, control = sys.argv[3], int(sys.argv[4]), pathlib.Path(sys.argv[5]), sys.argv[6]
counter = runs / f"{host}.count"
calls = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(calls))
fields = pathlib.Path(f"/proc/{control}/stat").read_text().rsplit(")", 1)[1].split()
rss = next(line.split()[1] for line in open(f"/proc/{control}/status") if line.startswith("VmRSS:"))
with open(runs / f"{host}.cpu", "a") as log:
    log.write(f"{calls} {sum(int(f) for f in fields[11:15]) / os.sysconf('SC_CLK_TCK')} {rss}\\n")
with open(runs / f"{host}.argv", "a") as log:
    log.write(json.dumps(sys.argv[7:]) + "\\n")  # what the playbook added to the status command
job = runs / host / "run1" / "job0"  # <runs-dir>/<run-id>/<job>, a runs folder per host
job.mkdir(parents=True, exist_ok=True)
(job / "metrics.jsonl").write_text(json.dumps({"step": calls}) + "\\n")
state = "running" if calls < finish else "finished"
print(json.dumps({"state": state, "run_dir": str(job.parent), "lines": [f"{host}-job0: {state}, round {calls}"],
                  "jobs": [{"dir": str(job), "slurm_name": f"sdkit-train-run1.{host}"}]}))
"""
PLAYBOOK = f"""
- name: Poll stand-in jobs
  hosts: "{{{{ poll_hosts | default('all') }}}}"
  gather_facts: false
  strategy: sophon_rounds
  vars:
    sophon_sd_train_python: {sys.executable}
    sophon_sd_train_poll_interval: 0
    sophon_sd_train_run_id: run1
    sophon_sd_user: root
  tasks:
    - name: Poll
      ansible.builtin.import_tasks: {REPO}/playbooks/tasks/train_poll.yml

- name: Check every reachable host
  hosts: "{{{{ poll_hosts | default('all') }}}}"
  gather_facts: false
  tasks:
    - name: The last status is the job's end and its results are here
      ansible.builtin.assert:
        that: sophon_sd_train_status.state == 'finished' and sophon_sd_train_fetched
      when: not (sophon_sd_train_status.unreachable | default(false))
"""


def poll(tmp_path: Path, finish: dict, rounds: int, forks: int = 5, unreachable: str = "",
         slurm: bool = False) -> tuple[PlayResult, Path]:
    """Run the poll play over hosts whose stand-in jobs finish at the given call; UNREACHABLE names a host
    that no SSH reaches. SLURM: the jobs are Slurm's, and a controller (the control node too) has a
    stand-in squeue that logs its calls and reports each asked name's task 16_0 as running."""
    tool = tmp_path / "fake_job.py"
    tool.write_text(FAKE_JOB_TOOL)
    runs = tmp_path / "runs"
    runs.mkdir()
    playbook = tmp_path / "poll.yml"
    playbook.write_text(PLAYBOOK)
    common = {"ansible_python_interpreter": sys.executable, "ansible_become": False,
              "sophon_sd_train_job_tool": str(tool), "sophon_sd_train_poll_rounds": rounds,
              "sophon_sd_train_fetch_dir": str(tmp_path / "fetched")}
    hosts = {host: {**common, "ansible_connection": "local", "sophon_sd_train_runs_dir": str(runs / host),
                    "sophon_sd_train_job_args": ["--host", host, str(calls), str(runs), "{{ control_pid }}"]}
             for host, calls in finish.items()}
    if unreachable:
        hosts[unreachable] = {**common, "ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody",
                              "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes",
                              "sophon_sd_train_job_args": []}
    groups = {"train": {"hosts": hosts}}
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORKS": str(forks)}
    if slurm:
        for host in hosts.values():
            host["sophon_sd_train_scheduler"] = "slurm"
        groups["slurm_controller"] = {"hosts": {"ctl": {"ansible_connection": "local",
                                                        "ansible_python_interpreter": sys.executable}}}
        (tmp_path / "bin").mkdir()
        squeue = tmp_path / "bin" / "squeue"
        squeue.write_text(f"""#!{sys.executable}
import sys
open("{runs}/squeue.calls", "a").write(" ".join(sys.argv[1:]) + "\\n")
names = next(a for a in sys.argv if a.startswith("--name=")).split("=", 1)[1].split(",")
print("\\n".join(f"{{name}}|16_0|RUNNING|None|root\\nothers-job|1|RUNNING|None|nobody" for name in names))
""")
        squeue.chmod(0o755)
        env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"children": groups}}))
    # The control node's pid reaches the stand-in through a variable whose value is only known once it runs.
    wrapper = ["sh", "-c", 'exec ansible-playbook "$@" -e control_pid=$$', "sh"]
    done = subprocess.run([*wrapper, str(playbook), "-i", str(inventory), "-e", "poll_hosts=train"],
                          capture_output=True, text=True, check=False, env=env)
    return PlayResult(done.returncode, done.stdout + done.stderr), runs


def test_the_poll_retries_and_includes_nothing():
    import yaml

    text = json.dumps(yaml.safe_load((REPO / "playbooks/tasks/train_poll.yml").read_text()))
    assert "include_tasks" not in text and "import_tasks" not in text
    assert '"until"' not in text and '"retries"' not in text
    train = yaml.safe_load((REPO / "playbooks/train.yml").read_text())
    [poll_play] = [play for play in train if play.get("strategy") == "sophon_rounds"]
    assert "tasks/train_poll.yml" in json.dumps(poll_play["tasks"])


def test_polling_lasts_every_round_at_a_flat_cost(tmp_path: Path):
    result, runs = poll(tmp_path, {"control-node": ROUNDS}, rounds=ROUNDS + 100)

    assert not result.failed, result.output[-3000:]
    assert "recursion" not in result.output
    for n in range(1, ROUNDS + 1):
        assert f"control-node-job0: {'running' if n < ROUNDS else 'finished'}, round {n}\"" in result.output, n
    fetched = tmp_path / "fetched/run1/control-node/job0/metrics.jsonl"
    assert fetched.read_text() == json.dumps({"step": ROUNDS}) + "\n"
    # The control node's CPU per round over the last tenth of the rounds is that of the first tenth.
    log = [line.split() for line in (runs / "control-node.cpu").read_text().splitlines()]
    cpu, rss = [float(entry[1]) for entry in log], [int(entry[2]) for entry in log]
    tenth = max(3, ROUNDS // 10)
    first, last = (cpu[tenth] - cpu[0]) / tenth, (cpu[-1] - cpu[-1 - tenth]) / tenth
    print(f"{ROUNDS} rounds: control node CPU {cpu[-1]:.1f} s; per round {first:.2f} s at the start, "
          f"{last:.2f} s at the end; ansible-playbook's memory {rss[tenth] // 1024} MB after round {tenth + 1}, "
          f"{rss[-1] // 1024} MB at the end")
    # Other work on the machine moves CPU seconds by a tenth or two; growth with the round count would be more.
    assert last <= first * 1.3 + 0.05, (first, last)
    assert rss[-1] <= rss[tenth] * 1.1 + 4096, (rss[tenth], rss[-1])


def test_every_host_every_round_with_one_fork_and_results_as_each_host_ends(tmp_path: Path):
    finish = {"h1": 2, "h2": 4, "h3": 6}
    result, _ = poll(tmp_path, finish, rounds=8, forks=1, unreachable="gone")

    assert not result.failed or "gone" in result.output, result.output[-3000:]
    out = result.output
    # Round n's lines: a running host's line of round n, a finished host's last line again.
    rounds = out.split("TASK [Show each host's jobs, every round]")[1:]
    # The unreachable host may still be running its jobs: the poll goes on to the last round.
    assert len(rounds) == 8, out[-3000:]
    for n, text in enumerate(rounds, start=1):
        for host, end in finish.items():
            state = "running" if n < end else "finished"
            assert f"{host}-job0: {state}, round {min(n, end)}\"" in text, (n, host, text)
        assert re.search(r"ok: \[gone\] => \{\s+\"msg\": \[\s+\"unreachable \(", text), (n, text)
    # Each host's results were fetched in the round its jobs ended, and only then.
    for host, end in finish.items():
        fetched = [n for n, text in enumerate(rounds, start=1) if re.search(rf"changed: \[{host}\] => \(item=", text)]
        assert fetched == [end], (host, fetched)
        assert (tmp_path / f"fetched/run1/{host}/job0/metrics.jsonl").read_text() == json.dumps({"step": end}) + "\n"
    # The unreachable host fails the run (the report play says why) but never stopped the others.
    assert re.search(r"gone\s+: ok=\d+ .*unreachable=0", out), out[-1500:]


def test_under_slurm_one_squeue_a_round_covers_every_host(tmp_path: Path):
    """Under Slurm every host's poller ran squeue every 3 s. Now the controller runs one squeue a round for
    the names the hosts' last status gave, and each host's status gets its own lines from it (the first
    round has no names yet: each host asks for itself)."""
    finish = {"h1": 3, "h2": 4}
    result, runs = poll(tmp_path, finish, rounds=6, forks=1, slurm=True)

    assert not result.failed, result.output[-3000:]
    calls = (runs / "squeue.calls").read_text().splitlines()
    assert len(calls) == 3, calls  # rounds 2, 3 and 4 (the last job ends in round 4)
    assert all("--name=sdkit-train-run1.h1,sdkit-train-run1.h2" in call for call in calls[:2]), calls
    for host, end in finish.items():
        argvs = [json.loads(line) for line in (runs / f"{host}.argv").read_text().splitlines()]
        assert argvs[0] == [] and len(argvs) == end
        for argv in argvs[1:]:
            assert argv == [f"--slurm-queue-names=sdkit-train-run1.{host}",
                            f"--slurm-queue=sdkit-train-run1.{host}|16_0|RUNNING|None|root"], argv
