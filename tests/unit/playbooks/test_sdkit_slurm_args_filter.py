"""train.yml's check of SLURM_ARGS (playbooks/filter_plugins/sdkit_slurm_args.py) is the job tool's own rule
(runners/sdkit_slurm.py): the allowed sbatch options have one home, so the control node and the hosts agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("sdkit_slurm_args", REPO / "playbooks/filter_plugins/sdkit_slurm_args.py")
plugin = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(plugin)
sys.path.insert(0, str(REPO / "runners"))
import sdkit_slurm  # noqa: E402


@pytest.mark.parametrize("text, ok", [
    ("", True), ("--partition=tpu --time=2-00:00:00", True), ("--account=lab --qos=normal --reservation=r1", True),
    ("--partition=tpu --output=/etc/motd", False), ("--partition tpu", False), ("--time=", False),
    ("--qos=a;b", False), ("--partition=" + "x" * 201, False)])
def test_the_control_node_accepts_what_the_job_tool_accepts(text, ok):
    filters = plugin.FilterModule().filters()
    assert filters["sdkit_slurm_args_ok"](text) is ok
    try:
        sdkit_slurm.site_args(text)
    except sdkit_slurm.SlurmError:
        assert not ok
    else:
        assert ok


def test_an_option_added_to_the_job_tool_reaches_the_playbooks_check_and_message(monkeypatch):
    filters = plugin.FilterModule().filters()
    assert filters["sdkit_slurm_site_options"]("") == "--partition=, --account=, --qos=, --time= or --reservation="
    monkeypatch.setattr(sdkit_slurm, "SITE_OPTIONS", (*sdkit_slurm.SITE_OPTIONS, "--comment"))
    assert filters["sdkit_slurm_args_ok"]("--comment=lab-42")
    assert filters["sdkit_slurm_site_options"]("").endswith(", --reservation= or --comment=")


def test_train_yml_has_no_list_of_its_own():
    text = (REPO / "playbooks/train.yml").read_text()
    assert "sdkit_slurm_args_ok" in text and "partition|account" not in text
