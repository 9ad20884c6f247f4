"""The host Makefile (role sophon_runners' template), rendered with stand-in values and run with make -n."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jinja2
import pytest

TEMPLATE = Path(__file__).resolve().parents[3] / "roles" / "sophon_runners" / "templates" / "Makefile.j2"


@pytest.fixture
def makefile(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("ACCELERATE_TORCH_DEVICE=cpu\n")
    values = {"ansible_managed": "test", "sophon_runners_env_file": env_file, "sophon_runners_user": "sophon-sd",
              **{f"sophon_runners_{name}": tmp_path / name
                 for name in ("venv_path", "dir", "outputs_dir", "model", "dataset", "lora", "prompt")}}
    path = tmp_path / "Makefile"
    path.write_text(jinja2.Template(TEMPLATE.read_text(), keep_trailing_newline=True).render(**values))
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
