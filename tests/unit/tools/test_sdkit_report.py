"""tools/sdkit_report.py on run folders laid out as playbooks/train.yml fetches them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[3] / "tools" / "sdkit_report.py"


def write_metrics(folder: Path, records) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "runs" / "r1"
    # host-a: one CPU job, killed after step 3 and resumed from checkpoint-2: steps 3.. logged twice.
    job = run / "host-a" / "cpu"
    write_metrics(job, [{"step": s, "loss": 1.0, "step_time_s": 0.5} for s in (1, 2, 3)]
                  + [{"step": s, "loss": 1.0 / s, "step_time_s": 0.5} for s in (3, 4, 5, 6)])
    (job / "run.json").write_text(json.dumps({"step": 6, "finished": True}))
    (job / "validation").mkdir()
    (job / "validation" / "epoch-0_0.png").write_bytes(b"\x89PNG fake")
    (job / "pytorch_lora_weights.safetensors").write_bytes(b"fake")
    (run / "host-a" / "status.json").write_text(json.dumps({"state": "finished", "jobs": [
        {"job": "cpu", "state": "finished", "total_steps": 6, "elapsed_s": 12.0, "attempts": 2}]}))
    # host-b: two chips, one done, one that failed before its first step.
    write_metrics(run / "host-b" / "tpu0", [{"step": s, "loss": 0.5, "step_time_s": 0.25} for s in range(1, 9)])
    (run / "host-b" / "tpu1").mkdir(parents=True)
    (run / "host-b" / "tpu1" / "train.log").write_text("error: something\n")
    (run / "host-b" / "status.json").write_text(json.dumps({"state": "failed", "jobs": [
        {"job": "tpu0", "state": "finished", "total_steps": 8, "elapsed_s": 3.0, "attempts": 1},
        {"job": "tpu1", "state": "failed", "total_steps": None, "elapsed_s": 1.0, "attempts": 1}]}))
    # host-c: nothing came back at all.
    (run / "host-c").mkdir()
    return run


def run_report(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), str(run_dir)], capture_output=True, text=True, check=True)


def row(text: str, *first_cells: str) -> list:
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[: len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row {first_cells} in\n{text}")


def test_table_numbers(run_dir):
    out = run_report(run_dir).stdout
    # Steps counted once: 6 steps x 0.5 s = 3 s, 2 steps/s; final loss from the resumed pass.
    assert row(out, "host-a", "cpu") == ["host-a", "cpu", "finished", "6/6", "0.1667", "3.0 s", "2.00",
                                         "12 s (last of 2 attempts)"]
    assert row(out, "host-b", "tpu0") == ["host-b", "tpu0", "finished", "8/8", "0.5000", "2.0 s", "4.00", "3 s"]


def test_hosts_and_jobs_without_metrics_say_so(run_dir):
    out = run_report(run_dir).stdout
    assert row(out, "host-b", "tpu1") == ["host-b", "tpu1", "failed", "no metrics"]
    assert row(out, "host-c", "-") == ["host-c", "-", "no results", "no metrics"]
    page = (run_dir / "report.html").read_text()
    assert page.count("no metrics") == 2


def test_page_has_a_plot_line_per_job_with_metrics_and_relative_links(run_dir):
    run_report(run_dir)
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") == 1
    lines = re.findall(r'<polyline class="loss"[^>]*points="([^"]+)"', page)
    assert len(lines) == 2
    assert len(lines[0].split()) == 6 and len(lines[1].split()) == 8
    assert '<img src="host-a/cpu/validation/epoch-0_0.png"' in page
    assert 'href="host-a/cpu/pytorch_lora_weights.safetensors"' in page
    assert str(run_dir) not in page  # relative links only: the folder can be moved


def test_rerun_leaves_the_page_alone(run_dir):
    assert "wrote" in run_report(run_dir).stdout
    assert "unchanged" in run_report(run_dir).stdout


def test_missing_run_folder(tmp_path):
    result = subprocess.run([sys.executable, str(REPORT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 2 and "playbooks/train.yml" in result.stderr


def test_a_nan_loss_leaves_the_other_points_and_curves_drawn(run_dir):
    """Issue 9 (one NaN loss blanks every curve in report.html): non-finite points skipped, and counted."""
    job = run_dir / "host-b" / "tpu0"
    records = [{"step": s, "loss": 0.5, "step_time_s": 0.25} for s in range(1, 9)]
    records[2]["loss"], records[5]["loss"] = float("nan"), float("inf")
    write_metrics(job, records)  # json.dumps writes NaN and Infinity, as the trainer's json.dumps does
    out = run_report(run_dir).stdout
    assert "2 non-finite loss values (NaN or inf) left out of the plot: host-b/tpu0 at steps 3, 6" in out
    page = (run_dir / "report.html").read_text()
    lines = re.findall(r'<polyline class="loss"[^>]*points="([^"]+)"', page)
    assert [len(points.split()) for points in lines] == [6, 6]
    assert "nan" not in " ".join(lines).lower()
    assert "2 non-finite loss values" in page


# --------------------------------------------------------------------------- what a host sends (issue 21 item 9)


def test_escape_sequences_from_a_host_do_not_reach_the_console(run_dir):
    """Folder names, states and numbers come from the hosts: an OSC sequence could set the title or write the
    clipboard, a CSI one erase the line and fake 'finished'."""
    write_metrics(run_dir / "host-a" / "tpu9\x1b]52;c;cm0gLXJmIH4=\x07", [{"step": 1, "loss": 0.5}])
    status = json.loads((run_dir / "host-b" / "status.json").read_text())
    status["jobs"][1]["state"] = "failed\x1b[2K\rfinished\x9b1A"
    (run_dir / "host-b" / "status.json").write_text(json.dumps(status))
    out = run_report(run_dir).stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)
    assert row(out, "host-a", "tpu9")[:3] == ["host-a", "tpu9", "?"]
    assert row(out, "host-b", "tpu1")[:3] == ["host-b", "tpu1", "failedfinished1A"]
    assert "\x1b" not in (run_dir / "report.html").read_text()


def test_values_of_the_wrong_type_show_as_unknown(run_dir):
    """A string loss or total_steps used to crash the report (float('x'), ':.0f' of a string)."""
    write_metrics(run_dir / "host-b" / "tpu0", [{"step": 1, "loss": "x", "step_time_s": "fast"},
                                                {"step": True, "loss": 0.9}, {"step": "2", "loss": 0.8},
                                                ["a list"], {"step": 3, "loss": 0.5, "step_time_s": 1.0}])
    status = json.loads((run_dir / "host-b" / "status.json").read_text())
    status["jobs"][0].update(total_steps="8", elapsed_s="3 s", attempts=[2])
    (run_dir / "host-b" / "status.json").write_text(json.dumps(status))
    (run_dir / "host-c" / "status.json").write_text(json.dumps({"state": "failed", "jobs": "none"}))
    out = run_report(run_dir).stdout
    assert row(out, "host-b", "tpu0") == ["host-b", "tpu0", "finished", "3", "0.5000", "1.0 s", "3.00"]
    assert row(out, "host-c", "-") == ["host-c", "-", "failed", "no metrics"]


def test_fifos_and_oversized_files_from_a_host_neither_hang_nor_count(run_dir):
    """A FIFO blocks a plain open() for ever; a status.json over the limit is not read."""
    job = run_dir / "host-a" / "cpu"
    for name in ("metrics.jsonl", "run.json"):
        (job / name).unlink()
        os.mkfifo(job / name)
    oversized = {"state": "finished", "jobs": [], "pad": "x" * (2 << 20)}
    (run_dir / "host-b" / "status.json").write_text(json.dumps(oversized))
    out = subprocess.run([sys.executable, str(REPORT), str(run_dir)], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert row(out, "host-a", "cpu")[:4] == ["host-a", "cpu", "finished", "no metrics"]
    assert row(out, "host-b", "tpu1")[:3] == ["host-b", "tpu1", "?"]
