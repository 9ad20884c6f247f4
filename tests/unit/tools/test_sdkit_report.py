"""tools/sdkit_report.py on run folders laid out as playbooks/train.yml fetches them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
REPORT = REPO / "tools" / "sdkit_report.py"
sys.path[:0] = [str(REPO / "tools"), str(REPO / "tests" / "bench")]

import bench_report  # noqa: E402
import sdkit_report  # noqa: E402


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


def test_page_has_one_band_curve_a_section_per_host_and_relative_links(run_dir):
    run_report(run_dir)
    page = (run_dir / "report.html").read_text()
    assert page.count('<polygon class="band"') == 1 and page.count('<polyline class="median"') == 1
    assert re.findall(r'<details id="host-\d+"><summary><span class="host">([^<]+)</span>', page) == [
        "host-a", "host-b", "host-c"]
    # In the hosts' sections: a line per job with metrics, every step while a job has fewer than 100.
    lines = re.findall(r'<polyline class="loss"[^>]*points="([^"]+)"', page)
    assert [len(points.split()) for points in lines] == [6, 8]
    assert '<img src="host-a/cpu/validation/epoch-0_0.png" loading="lazy"' in page
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


def test_json_nested_too_deep_for_the_parser_counts_as_unreadable(run_dir):
    """json.loads raises RecursionError, no ValueError, on 100000 "[": a host's file crashed the report."""
    job = run_dir / "host-b" / "tpu0"
    with (job / "metrics.jsonl").open("a") as metrics:
        metrics.write("[" * 100000 + "\n")
    (job / "run.json").write_text('{"model": ' + "[" * 100000)
    out = run_report(run_dir).stdout
    assert row(out, "host-b", "tpu0") == ["host-b", "tpu0", "finished", "8/8", "0.5000", "2.0 s", "4.00", "3 s"]


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


# --------------------------------------------------------------------------- at 100 hosts (issue 20)

TINY_RUN = {"model": "/var/lib/sophon-sd/fixtures/tiny-sd",
            "dataset": "/var/lib/sophon-sd/fixtures/tiny-pokemon.parquet",
            "profile": "tutorial-2023-cpu", "mixed_precision": "no", "resolution": 16, "learning_rate": 0.0001,
            "validation_prompt": "cute dragon creature", "step": 6, "finished": True}


def test_the_run_settings_are_shown_and_where_jobs_differ_how(run_dir):
    """A TINY run's report on the demo host showed none of its settings."""
    (run_dir / "host-a" / "cpu" / "run.json").write_text(json.dumps(TINY_RUN))
    (run_dir / "host-b" / "tpu0" / "run.json").write_text(json.dumps({**TINY_RUN, "resolution": 512}))
    out = run_report(run_dir).stdout
    for label, value in [("model", "/var/lib/sophon-sd/fixtures/tiny-sd"), ("profile", "tutorial-2023-cpu"),
                         ("precision", "no"), ("learning rate", "0.0001"),
                         ("validation prompt", "cute dragon creature"),
                         ("resolution", "differs: 16 (1 job); 512 (1 job)")]:
        assert re.search(rf"^  {label} +{re.escape(value)}$", out, re.MULTILINE), (label, out)
    assert "2 of 4 jobs recorded no settings in run.json" in out
    page = (run_dir / "report.html").read_text()
    assert "<tr><td>validation prompt</td><td>cute dragon creature</td></tr>" in page
    assert "<tr><td>dataset</td><td>/var/lib/sophon-sd/fixtures/tiny-pokemon.parquet</td></tr>" in page
    assert page.index("<h2>Settings</h2>") < page.index("<h2>Failed or stopped jobs") < page.index("<svg")


def test_jobs_are_counted_by_state(run_dir):
    out = run_report(run_dir).stdout
    assert out.splitlines()[0] == "LoRA training run r1: 4 jobs on 3 hosts: 1 failed, 1 no results, 2 finished"
    page = (run_dir / "report.html").read_text()
    assert re.search(r'<p class="lead">4 jobs on 3 hosts: 1 <span class="state failed">failed</span>, '
                     r'1 <span class="state unknown">no results</span>, 2 <span class="state finished">', page)


def test_failed_jobs_come_first_with_their_last_log_line(run_dir):
    write_metrics(run_dir / "host-a" / "tpu3", [{"step": 1, "loss": 0.5, "step_time_s": 1.0}])
    (run_dir / "host-a" / "tpu3" / "train.log").write_text("Steps: 50%\rSteps: 100%\ninterrupted: checkpoint saved\n")
    status = json.loads((run_dir / "host-a" / "status.json").read_text())
    status["jobs"].append({"job": "tpu3", "state": "stopped", "exit_status": 3})
    (run_dir / "host-a" / "status.json").write_text(json.dumps(status))
    (run_dir / "host-b" / "tpu1" / "train.log").write_text(
        "Traceback (most recent call last):\n  File x\nRuntimeError: TPU out of memory\nSteps: 0%|  |\n")
    out = run_report(run_dir).stdout
    section = out[out.index("failed or stopped: 3 jobs"):out.index("all jobs:")].strip()
    assert [line.split()[:3] for line in section.splitlines()[2::2]] == [
        ["host-b", "tpu1", "failed"], ["host-a", "tpu3", "stopped"], ["host-c", "-", "no"]]
    assert [line.strip() for line in section.splitlines()[3::2]] == [
        "-> RuntimeError: TPU out of memory", "-> exit 3: interrupted: checkpoint saved",
        "-> nothing came back from the host"]
    page = (run_dir / "report.html").read_text()
    failed = page[page.index("<h2>Failed or stopped jobs: 3</h2>"):page.index("<svg")]
    assert re.search(r'<a href="#host-1">host-b</a></td><td>tpu1</td>.*RuntimeError: TPU out of memory', failed)
    assert failed.index("tpu1") < failed.index("tpu3") < failed.index("host-c")


def test_the_band_median_and_percentiles_match_a_hand_computation():
    """Five jobs, three steps, two buckets (steps 1-2 and 3): per bucket, each job's mean, then across jobs the
    median and the 10th and 90th percentiles, interpolated between ranks as numpy does."""
    pairs = [(1, 3), (4, 4), (5, 7), (8, 8), (20, 40)]  # bucket means 2, 4, 6, 8, 30
    jobs = [sdkit_report.JobResult("h", f"j{i}", None, losses={1: a, 2: b, 3: 1.0 if i < 4 else float("nan")})
            for i, (a, b) in enumerate(pairs)]
    size, band = sdkit_report.loss_band(jobs, buckets=2)
    assert size == 2
    # 10th: rank 0.4 between 2 and 4 = 2.8; 90th: rank 3.6 between 8 and 30 = 21.2. The NaN is left out.
    assert band == [(2, pytest.approx(2.8), 6.0, pytest.approx(21.2), 5), (3, 1.0, 1.0, 1.0, 4)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The simulated run of tests/bench/bench_report.py at 100 hosts x 8 chips, with 20 steps a job."""
    run = tmp_path_factory.mktemp("fleet") / "sim"
    bench_report.make_run(run, hosts=100, jobs=8, steps=20, images=1)
    return run, run_report(run).stdout, (run / "report.html").read_text()


def test_800_jobs_give_one_loss_curve_and_a_section_per_host(fleet):
    _, _, page = fleet
    assert page.count("<polygon") == 1 and page.count('<polyline class="median"') == 1
    assert len(re.findall(r'<details id="host-\d+">', page)) == 100
    assert page.count('<polyline class="loss"') == 799  # per host, inside its section; one job has no metrics
    assert page.count('loading="lazy"') == page.count("<img ") == 789  # the finished jobs' images
    assert "<h2>Slowest jobs" in page and page.index("host-050") < page.index("<svg")


def test_the_console_reads_at_800_jobs(fleet):
    _, out, _ = fleet
    lines = out.splitlines()
    assert len(lines) < 40
    assert lines[0] == "LoRA training run sim: 800 jobs on 100 hosts: 2 failed, 1 stopped, 8 running, 789 finished"
    assert row(out, "host-003", "tpu5")[:3] == ["host-003", "tpu5", "failed"]
    slowest = out[out.index("slowest 5 by steps/s"):]
    assert row(slowest, "host-050", "tpu7")[2] == "finished"  # three times slower: first among the slowest
    assert "resolution         differs: 512 (791 jobs); 256 (8 jobs)" in out


def test_html_and_control_characters_from_a_host_are_escaped(run_dir):
    job = run_dir / "host-a" / "<img src=x onerror=alert(1)>"
    write_metrics(job, [{"step": 1, "loss": 0.5}])
    (job / "run.json").write_text(json.dumps({**TINY_RUN, "validation_prompt": "</td><script>alert(1)</script>",
                                              "model": "tiny\x1b]0;owned\x07-sd", "dataset": ["a", "list"]}))
    (run_dir / "host-b" / "tpu1" / "train.log").write_text("error: \x1b[2Kdone <b>bold</b>\n")
    out = run_report(run_dir).stdout
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)
    assert re.search(r"^  model +tiny-sd$", out, re.MULTILINE) and re.search(r"^  dataset +\?$", out, re.MULTILINE)
    assert "-> error: done <b>bold</b>" in out
    page = (run_dir / "report.html").read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<b>bold" not in page and "\x1b" not in page
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
