"""Pure helpers of the simulated-fleet benchmark (bench_fleet_sim.py): reading /proc, the console and the
fetched metrics, and turning them into figures. No podman, SSH or Ansible here, so tests/unit/bench/ tests it."""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

# `ok: [sim-007] => {` heads a host's result; the debug task's lines follow it, one job each.
RESULT_HEAD = re.compile(r"^(?:ok|changed|failed|fatal): \[(?P<host>[^\]]+)\]")
# A job line of runners/sdkit_job.py's describe(): "cpu7: running, step 3/8, loss 0.1000, 40 s".
JOB_LINE = re.compile(r'^\s*"(?P<job>[A-Za-z0-9._]+): (?P<state>[a-z]+), step (?P<step>\d+)/')
TASK_HEAD = re.compile(r"^TASK \[(?P<name>[^\]]*)\]")
PLAY_HEAD = re.compile(r"^PLAY \[(?P<name>[^\]]*)\]")


def proc_stat_cpu(stat_text: str, ticks_per_s: int) -> tuple[str, float]:
    """(command name, user + system CPU seconds) from the text of /proc/PID/stat. The name sits in
    parentheses and may hold spaces or ')' itself, so the fields are counted from its last ')'."""
    head, _, rest = stat_text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    # After the name: state(0) ppid(1) ... utime(11) stime(12), i.e. fields 14 and 15 of proc(5).
    return name, (int(fields[11]) + int(fields[12])) / ticks_per_s


def proc_status_rss_kib(status_text: str) -> int:
    """VmRSS of /proc/PID/status in KiB (0 for a process without memory, such as a zombie)."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", status_text, re.MULTILINE)
    return int(match[1]) if match else 0


@dataclass
class Console:
    """What ansible-playbook printed, each line with the monotonic-free wall time (time.time()) it arrived at."""

    lines: list[tuple[float, str]]

    def job_steps(self) -> dict[tuple[str, str], list[tuple[float, int]]]:
        """(host, job) -> [(time printed, step)] for every job line of a host's result."""
        seen: dict[tuple[str, str], list[tuple[float, int]]] = {}
        host = None
        for when, line in self.lines:
            head = RESULT_HEAD.match(line)
            if head:
                host = head["host"]
                continue
            job = JOB_LINE.match(line)
            if job and host:
                seen.setdefault((host, job["job"]), []).append((when, int(job["step"])))
        return seen

    def first(self, pattern: re.Pattern, name: str) -> float | None:
        """When the first task or play header named NAME arrived."""
        return next((when for when, line in self.lines if (m := pattern.match(line)) and m["name"] == name), None)

    def all_of(self, pattern: re.Pattern, name: str) -> list[float]:
        return [when for when, line in self.lines if (m := pattern.match(line)) and m["name"] == name]


def step_times(metrics_jsonl: str) -> dict[int, float]:
    """step -> when the (stand-in) trainer wrote it, from its metrics.jsonl lines {"step", "time"}."""
    times = {}
    for line in metrics_jsonl.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("time"), float):
            times[record["step"]] = record["time"]
    return times


def console_delays(written: dict[int, float], printed: list[tuple[float, int]],
                   round_starts: list[float]) -> list[tuple[float, int]]:
    """For each step the trainer wrote: (seconds until the console first showed that step or a later one,
    poll rounds begun in between). A round begun after the step and at or before the line counts: a step
    shown in the round after it was written took 1 round. Steps never shown are left out (the caller
    counts them)."""
    delays = []
    for step, at in sorted(written.items()):
        shown = next((when for when, seen in sorted(printed) if seen >= step and when >= at), None)
        if shown is None:
            continue
        delays.append((shown - at, sum(1 for start in round_starts if at < start <= shown)))
    return delays


def summary(values: list[float]) -> dict[str, float | None]:
    """Median, 95th percentile and maximum, rounded for printing (None for no values)."""
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 2), "p95": round(p95, 2), "max": round(ordered[-1], 2)}


def training_figures(console: Console, fetched_run_dir: Path, poll_task: str, fetched_play: str) -> dict:
    """The poll's figures from the console and the fetched metrics: console delay per step (seconds and
    rounds), the rounds' lengths, and the time from the last job's end to the end of the poll play (every
    host's results fetched)."""
    printed = console.job_steps()
    round_starts = console.all_of(TASK_HEAD, poll_task)
    seconds: list[float] = []
    rounds: list[float] = []
    never_shown = 0
    last_end = 0.0
    jobs = 0
    for metrics in sorted(fetched_run_dir.glob("*/*/metrics.jsonl")):
        host, job = metrics.parent.parent.name, metrics.parent.name
        written = step_times(metrics.read_text())
        if not written:
            continue
        jobs += 1
        last_end = max(last_end, max(written.values()))
        delays = console_delays(written, printed.get((host, job), []), round_starts)
        never_shown += len(written) - len(delays)
        seconds += [delay for delay, _ in delays]
        rounds += [float(count) for _, count in delays]
    fetched_at = console.first(PLAY_HEAD, fetched_play)
    lengths = [b - a for a, b in zip(round_starts, round_starts[1:])]
    return {"jobs_with_metrics": jobs, "steps_never_shown": never_shown,
            "console_delay_s": summary(seconds), "console_delay_rounds": summary(rounds),
            "rounds": len(round_starts), "round_length_s": summary(lengths),
            "last_end_to_all_fetched_s": round(fetched_at - last_end, 1) if fetched_at and last_end else None}
