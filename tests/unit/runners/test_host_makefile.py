"""The host Makefile (role sophon_runners' template), rendered with stand-in values and run with make -n."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "roles" / "sophon_runners" / "templates" / "Makefile.j2"
TRAIN_FLAGS = REPO / "data" / "train-flags.yml"


@pytest.fixture
def makefile(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("ACCELERATE_TORCH_DEVICE=cpu\n")
    values = {"ansible_managed": "test", "sophon_runners_env_file": env_file, "sophon_runners_user": "sophon-sd",
              "sophon_runners_tutorial": yaml.safe_load(TRAIN_FLAGS.read_text()),
              **{f"sophon_runners_{name}": tmp_path / name
                 for name in ("venv_path", "dir", "outputs_dir", "lora", "prompt")},
              # As the role's defaults have them.
              "sophon_runners_model": "CompVis/stable-diffusion-v1-4", "sophon_runners_dataset": "lambdalabs/pokemon-blip-captions"}
    path = tmp_path / "Makefile"
    # Ansible's template module: trim_blocks, and its quote filter (shlex.quote).
    environment = jinja2.Environment(keep_trailing_newline=True, trim_blocks=True)
    environment.filters["quote"] = shlex.quote
    path.write_text(environment.from_string(TEMPLATE.read_text()).render(**values))
    return path


def make_n(makefile, *args):
    return subprocess.run(["make", "-n", "-f", str(makefile), *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("extra", ["--hub_token=hf_SECRET", "--seed=1 --hub_tok hf_SECRET"])
def test_a_hub_token_in_extra_is_refused(makefile, extra):
    """Issue 21 item 4: make train-fp16 EXTRA=--hub_token=X put the token into the trainer's argv for hours."""
    result = make_n(makefile, "train-fp16", f"EXTRA={extra}")
    assert result.returncode != 0
    assert "EXTRA holds --hub_token" in result.stderr and "SOPHON_SD_HUB_TOKEN_FILE" in result.stderr
    assert "hf_SECRET" not in result.stdout + result.stderr


def test_other_extra_flags_pass(makefile):
    result = make_n(makefile, "train-fp16", "EXTRA=--hub_model_id=x --max_train_steps=3")
    assert result.returncode == 0, result.stderr
    assert "--max_train_steps=3" in result.stdout


def train_yml_flags(tmp_path: Path, precision: str) -> list[str]:
    """sophon_sd_train_flags as playbooks/vars/train.yml gives them to the job tool, evaluated by Ansible on the
    control node (the playbook sits in a folder beside a link to data/, as playbooks/ sits beside data/)."""
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "play").mkdir()
    out = tmp_path / "flags.json"
    (tmp_path / "play" / "flags.yml").write_text(yaml.safe_dump([{
        "name": "Flags", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars_files": [str(REPO / "playbooks" / "vars" / "train.yml")],
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [{"ansible.builtin.copy": {"content": "{{ sophon_sd_train_flags | to_json }}", "dest": str(out),
                                             "mode": "0644"}}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PRECISION": precision}
    result = subprocess.run(["ansible-playbook", "-i", "localhost,", str(tmp_path / "play" / "flags.yml")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_train_yml_starts_jobs_with_the_host_makefiles_flags(makefile, tmp_path, precision):
    """Issue 22: train.yml read the tutorial's flags by running make train-flags on each host; now both read
    data/train-flags.yml, and must still agree flag for flag (the model and dataset, the precision, the rest)."""
    listed = subprocess.run(["make", "-s", "-f", str(makefile), "train-flags", f"PRECISION={precision}"],
                            capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert listed[0] == f"--mixed_precision={'fp16' if precision == 'fp16' else 'no'}"
    assert "--validation_prompt=cute dragon creature" in listed
    assert train_yml_flags(tmp_path, precision) == listed
