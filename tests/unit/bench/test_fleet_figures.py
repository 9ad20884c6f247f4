"""The simulated-fleet benchmark's figures (tests/bench/fleet_figures.py): /proc parsing, the console's
job lines, and the console delay counted in seconds and in poll rounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "tests" / "bench")]

import fleet_figures  # noqa: E402
from fleet_figures import Console, console_delays, proc_stat_cpu, proc_status_rss_kib, step_times, summary  # noqa: E402


def test_proc_stat_cpu_counts_fields_after_a_name_with_spaces_and_parentheses():
    # utime 250 and stime 50 ticks, after a command name that holds ") (" itself.
    text = "4242 (ssh: /tmp/x) (mux)) S 1 4242 4242 0 -1 4194560 300 0 0 0 250 50 0 0 20 0 1 0 100 0 0"
    assert proc_stat_cpu(text, 100) == ("ssh: /tmp/x) (mux)", 3.0)


def test_proc_status_rss_is_zero_without_a_vmrss_line():
    assert proc_status_rss_kib("Name:\tssh\nVmRSS:\t    5120 kB\n") == 5120
    assert proc_status_rss_kib("Name:\tssh\nState:\tZ (zombie)\n") == 0


def test_job_lines_are_attributed_to_the_host_whose_result_they_follow():
    console = Console([
        (10.0, "TASK [Show each host's jobs, every round] ***"),
        (11.0, "ok: [sim-001] => {"),
        (11.0, '        "cpu1: running, step 3/8, 40 s"'),
        (12.0, "ok: [sim-002] => {"),
        (12.0, '        "cpu2: running, step ?/8, 2 s"'),  # no step yet: nothing to time
        (13.0, '        "cpu2b: finished, step 8/8, loss 0.1250, 90 s"'),
    ])
    assert console.job_steps() == {("sim-001", "cpu1"): [(11.0, 3)], ("sim-002", "cpu2b"): [(13.0, 8)]}


def test_a_step_shown_in_the_next_round_took_one_round_and_a_skipped_step_counts_from_its_own_time():
    written = {1: 100.0, 2: 110.0, 3: 130.0}
    # Rounds start at 90, 120 and 150; the poll shows step 1 at 121 and step 3 at 151 (step 2 never by itself).
    printed = [(121.0, 1), (151.0, 3)]
    assert console_delays(written, printed, [90.0, 120.0, 150.0]) == [(21.0, 1), (41.0, 2), (21.0, 1)]


def test_a_line_printed_before_the_step_was_written_does_not_count_for_it():
    # A later attempt's step 1 (written at 200) is not the first attempt's line of step 1 printed at 150.
    assert console_delays({1: 200.0}, [(150.0, 1), (230.0, 1)], [220.0]) == [(30.0, 1)]


def test_steps_never_shown_are_left_out():
    assert console_delays({1: 10.0, 2: 20.0}, [(15.0, 1)], []) == [(5.0, 0)]


def test_step_times_skip_half_written_and_foreign_lines():
    text = '{"step": 1, "time": 5.5}\n{"step": "2", "time": 6.0}\nnot json\n{"step": 3, "time": 7.25}\n{"step": 4'
    assert step_times(text) == {1: 5.5, 3: 7.25}


def test_summary_of_nothing_is_none_and_of_values_their_median_p95_and_max():
    assert summary([]) == {"median": None, "p95": None, "max": None}
    assert summary([float(v) for v in range(1, 101)]) == {"median": 50.5, "p95": 95.0, "max": 100.0}


def test_training_figures_from_a_console_and_fetched_metrics(tmp_path):
    for host, job, times in (("sim-001", "cpu1", [100.0, 110.0]), ("sim-002", "cpu2", [105.0, 125.0])):
        folder = tmp_path / host / job
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": n, "time": t}) + "\n" for n, t in enumerate(times, 1)))
    poll = "Count the round and note when it began"
    lines = [(95.0, f"TASK [{poll}] ***"),
             (112.0, f"TASK [{poll}] ***"), (113.0, "ok: [sim-001] => {"), (113.0, '  "cpu1: finished, step 2/2, 13 s"'),
             (114.0, "ok: [sim-002] => {"), (114.0, '  "cpu2: running, step 1/2, 9 s"'),
             (130.0, f"TASK [{poll}] ***"), (131.0, "ok: [sim-002] => {"), (131.0, '  "cpu2: finished, step 2/2, 26 s"'),
             (140.0, "PLAY [Report the run and check that every job finished] ***")]
    figures = fleet_figures.training_figures(Console(lines), tmp_path, poll,
                                             "Report the run and check that every job finished")
    assert figures["jobs_with_metrics"] == 2 and figures["steps_never_shown"] == 0
    # Delays: cpu1 13 and 3 s, cpu2 9 and 6 s; each shown in the round after it was written.
    assert figures["console_delay_s"] == {"median": 7.5, "p95": 13.0, "max": 13.0}
    assert figures["console_delay_rounds"]["max"] == 1.0
    assert figures["rounds"] == 3 and figures["round_length_s"]["median"] == 17.5
    assert figures["last_end_to_all_fetched_s"] == 15.0
