"""playbooks/train_status.yml under Slurm (issue 23): one sacct on the controller covers the whole run, and
each host's lines show what Slurm's accounting recorded of its own tasks that have ended.

Like test_train_poll.py, the real playbook runs on the control node itself (connection local, no test
host): a stand-in job tool on each of two hosts, a stand-in sacct on the controller that logs its calls.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# A stand-in for sdkit_job.py status: the host is its runs folder's name; its one Slurm task has id
# <n>_0 (h1: 11_0, h2: 12_0). Each call's --slurm-acct lines go into its line and a log beside the runs.
FAKE_JOB_TOOL = """
import json, pathlib, sys
argv = sys.argv[1:]
runs = pathlib.Path(argv[argv.index("--runs-dir") + 1])
host = runs.name
acct = [a.split("=", 1)[1] for a in argv if a.startswith("--slurm-acct=")]
with open(runs.parent / f"{host}.argv", "a") as log:
    log.write(json.dumps(argv) + "\\n")
print(json.dumps({"state": "finished", "jobs": [{"job": "task0", "slurm_job": f"1{host[1:]}_0"}],
                  "lines": [f"{host}: " + (" ; ".join(acct) if acct else "from files")]}))
"""
# A stand-in sacct: logs its argv, and lists each asked id (and a task of another run) as COMPLETED.
FAKE_SACCT = """#!{python}
import sys
open("{calls}", "a").write(" ".join(sys.argv[1:]) + "\\n")
if {fail}:
    sys.exit("sacct: error: Slurm accounting storage is disabled")
ids = next(a for a in sys.argv if a.startswith("--jobs=")).split("=", 1)[1].split(",")
print("\\n".join(f"{{i}}|sdkit-train-run1.x|COMPLETED|00:00:35|node|cpu=1,gres/tpu=1|0:0" for i in ids + ["99_0"]))
"""


def status_play(tmp_path: Path, fail: bool = False) -> tuple[str, Path]:
    root, runs, bin_dir, venv = tmp_path / "kit", tmp_path / "runs", tmp_path / "bin", tmp_path / "venv"
    for folder in (root / "runners", runs / "h1", runs / "h2", bin_dir, venv / "bin"):
        folder.mkdir(parents=True)
    (root / "runners" / "sdkit_job.py").write_text(FAKE_JOB_TOOL)
    (venv / "bin" / "python").symlink_to(sys.executable)
    sacct = bin_dir / "sacct"
    sacct.write_text(FAKE_SACCT.format(python=sys.executable, calls=runs / "sacct.calls", fail=fail))
    sacct.chmod(0o755)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    hosts = {host: {**local, "sophon_sd_root": str(root), "sophon_sd_venv": str(venv),
                    "sophon_sd_runs_dir": str(runs / host), "sophon_sd_user": "root"} for host in ("h1", "h2")}
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"children": {"train": {"hosts": hosts},
                                                          "slurm_controller": {"hosts": {"ctl": local}}}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["ansible-playbook", str(REPO / "playbooks" / "train_status.yml"), "-i", str(inventory),
                           "-e", "sophon_sd_hosts=train", "-e", "sophon_sd_train_run_id=run1"],
                          capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout, runs


def test_one_sacct_covers_the_run_and_each_host_gets_its_own_tasks(tmp_path):
    output, runs = status_play(tmp_path)
    calls = (runs / "sacct.calls").read_text().splitlines()
    assert len(calls) == 1, calls
    assert "--jobs=11_0,12_0" in calls[0].split() and "--user=root" in calls[0].split(), calls
    for host, job in (("h1", "11_0"), ("h2", "12_0")):
        assert f'"{host}: {job}|sdkit-train-run1.x|COMPLETED|00:00:35|node|cpu=1,gres/tpu=1|0:0"' in output, output
        accounted = json.loads((runs / f"{host}.argv").read_text().splitlines()[-1])
        assert [a for a in accounted if a.startswith("--slurm-acct=")] == \
            [f"--slurm-acct={job}|sdkit-train-run1.x|COMPLETED|00:00:35|node|cpu=1,gres/tpu=1|0:0"]
        assert "--slurm-gres=tpu" in accounted


def test_a_cluster_without_accounting_leaves_the_hosts_own_lines(tmp_path):
    output, runs = status_play(tmp_path, fail=True)
    assert len((runs / "sacct.calls").read_text().splitlines()) == 1
    assert '"h1: from files"' in output and '"h2: from files"' in output, output
    assert len((runs / "h1.argv").read_text().splitlines()) == 1
