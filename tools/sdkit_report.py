#!/usr/bin/env python3
"""Summarise a fleet training run fetched by playbooks/train.yml into one HTML page and a console summary.

Reads ``runs/<run-id>/<host>/<job>/`` (metrics.jsonl, run.json, train.log, validation/*.png, the
LoRA weights) and ``runs/<run-id>/<host>/status.json`` (what sdkit_job.py last said about the
host's jobs), writes ``runs/<run-id>/report.html`` and prints the summary that train.yml shows.

Both are built to read at 100 hosts x 8 chips. First what an operator looks for: the run's
settings (from run.json; where jobs differ, how), the jobs counted by state, the failed jobs with
their last log line, the slowest jobs, and one loss curve across all jobs (per bucket of steps, the
median and the 10th-90th percentile band of the jobs' mean losses). Then, on the page only, one
collapsed section per host with its jobs' table, loss lines and validation images (linked
relatively and loaded lazily, so the folder can be moved or served as is). The page is one file:
inline SVG and <details>, no script and nothing from the network (the fleet is air-gapped).
Standard library only: it runs on the control node with any Python 3.

Everything read here came from a host, where the runner user (who loads untrusted models) writes it:
files are read with sdkit_files.read_limited (regular files only, no blocking, bounded), numbers of
the wrong type count as unknown, and every cell is made printable before it reaches a terminal.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

# The runners' stdlib-only helpers, shared with the job tool whose status.json this reads.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
from sdkit_files import count, number, printable, read_json, read_limited  # noqa: E402

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
WEIGHTS = "pytorch_lora_weights.safetensors"
# metrics.jsonl grows by about 100 bytes a step: its last 64 MiB are the last half million steps or so.
METRICS_LIMIT = 64 << 20
# The end of a failed job's train.log that is searched for its last error line.
LOG_TAIL = 64 << 10

# run.json's keys shown as the run's settings, in the order an operator checks them. train_lora.py
# records the weights' fingerprint there, and the profile and validation prompt beside it.
SETTINGS = (("model", "model"), ("dataset", "dataset"), ("profile", "profile"), ("mixed_precision", "precision"),
            ("resolution", "resolution"), ("learning_rate", "learning rate"), ("train_batch_size", "batch size"),
            ("total_steps", "steps"), ("num_processes", "processes per job"), ("rank", "LoRA rank"),
            ("lora", "LoRA flow"), ("seed", "seed"), ("validation_prompt", "validation prompt"))
# The states of sdkit_job.py that need no look: every other one (failed, stopped, absent, a host
# without results, a state of the wrong type) is listed with its job's last log line.
FINE_STATES = ("finished", "running", "queued")
# The order of the counts; a state not named here comes after them.
STATE_ORDER = ("failed", "stopped", "absent", "no results", "?", "queued", "running", "finished")
# Up to this many jobs the console prints every job's line; above it, the failed and slowest few.
CONSOLE_ALL_JOBS = 16
FAILED_SHOWN = {"console": 20, "page": 100}
SLOWEST_SHOWN = 5
# Points per curve: the band has one per bucket of steps, a host's plot one per job and bucket.
BAND_BUCKETS = 200
HOST_BUCKETS = 100
BAND = (10, 90)  # percentiles


@dataclass
class JobResult:
    host: str
    job: str
    folder: Optional[Path]
    state: str = "?"
    losses: Dict[int, float] = field(default_factory=dict)
    train_s: float = 0.0
    total_steps: Optional[int] = None
    wall_s: Optional[float] = None
    attempts: Optional[int] = None
    images: List[Path] = field(default_factory=list)
    weights: Optional[Path] = None
    exit_status: Optional[int] = None
    last_log: str = ""
    # Label -> value as printable text, for the SETTINGS run.json records.
    settings: Dict[str, str] = field(default_factory=dict)

    @property
    def fine(self) -> bool:
        return self.state in FINE_STATES

    # Cached: the summaries sort and filter 800 jobs by these. The losses are set once, before any is read.
    @cached_property
    def steps(self) -> int:
        return max(self.losses, default=0)

    @property
    def final_loss(self) -> Optional[float]:
        return self.losses[self.steps] if self.losses else None

    @property
    def steps_per_s(self) -> Optional[float]:
        return self.steps / self.train_s if self.train_s > 0 else None

    @cached_property
    def finite_losses(self) -> Dict[int, float]:
        """The losses that can be drawn: one NaN or inf would make every point of the plot NaN."""
        return {step: loss for step, loss in self.losses.items() if math.isfinite(loss)}

    @property
    def non_finite_steps(self) -> List[int]:
        return [step for step, loss in self.losses.items() if not math.isfinite(loss)]


def json_lines(data: bytes) -> List[Any]:
    """The JSON value of each line; a line that is no JSON (cut short by a kill, or by the limit at the
    start) is left out. One json.loads of all lines as an array first, several times faster than one call
    a line (2000 lines a job, 800 jobs), which is what a bad line falls back to."""
    lines = [line for line in data.splitlines() if line.strip()]
    try:
        values = json.loads(b"[" + b",".join(lines) + b"]")
        if len(values) == len(lines):  # else a line held two values: read line by line, as the fallback does
            return values
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; "[" * 100000 a RecursionError
        pass
    values = []
    for line in lines:
        try:
            values.append(json.loads(line))
        except (ValueError, RecursionError):
            continue
    return values


def read_metrics(path: Path) -> Tuple[Dict[int, float], float]:
    """Loss per step and the summed step times, each step counted once.

    A resumed job trains the steps after its checkpoint again and appends them: the later
    line wins, as those are the steps the final weights come from. The checks of the values' types
    take the trainer's int and float at once and the rest through count() and number().
    """
    by_step: Dict[int, dict] = {}
    for record in json_lines(read_limited(path, METRICS_LIMIT, tail=True) or b""):
        if isinstance(record, dict):
            step = record.get("step")
            step = step if type(step) is int and step >= 0 else count(step)
            if step is not None:
                by_step[step] = record
    losses: Dict[int, float] = {}
    train_s = 0.0
    for step in sorted(by_step):
        record = by_step[step]
        loss = record.get("loss")
        # NaN and inf losses are kept (the plot says which it leaves out); a loss that is no number is not one.
        if type(loss) in (int, float):
            losses[step] = float(loss)
        seconds = record.get("step_time_s")
        train_s += seconds if type(seconds) is float and math.isfinite(seconds) else number(seconds) or 0.0
    return losses, train_s


def setting_text(value: Any) -> str:
    """A run.json value as one printable line: the host wrote it, so a list or an object is unknown."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return "?"
    text = printable(value)
    return text if len(text) <= 200 else text[:199] + "\u2026"


ERROR_LINE = re.compile(r"error|exception|killed|out of memory", re.IGNORECASE)


def last_log_line(path: Path) -> str:
    """The last line of a log that reads like an error (a traceback's last line, the runner's
    'error: ...'), else its last line; empty without a log. Made printable: the host wrote it."""
    data = read_limited(path, LOG_TAIL, tail=True) or b""
    # splitlines() also splits progress bars' carriage returns: each redraw is a line of its own.
    lines = [line for line in (printable(raw).strip() for raw in data.decode("utf-8", "replace").splitlines()) if line]
    line = next((line for line in reversed(lines) if ERROR_LINE.search(line)), lines[-1] if lines else "")
    return line if len(line) <= 300 else line[:299] + "\u2026"


def collect(run_dir: Path) -> List[JobResult]:
    """One result per host and job; a host that brought nothing back still gets a row."""
    results = []
    for host_dir in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        status = read_json(host_dir / "status.json") or {}
        jobs = status.get("jobs")
        status_jobs = {j.get("job"): j for j in (jobs if isinstance(jobs, list) else []) if isinstance(j, dict)}
        status_jobs = {name: j for name, j in status_jobs.items() if isinstance(name, str) and "/" not in name}
        job_dirs = sorted(p for p in host_dir.iterdir() if p.is_dir())
        names = sorted({p.name for p in job_dirs} | set(status_jobs))
        # Folder names and states are the host's words: shown on the console and the page, made printable once.
        host = printable(host_dir.name)
        if not names:
            results.append(JobResult(host, "-", None, state=printable(status.get("state", "no results"))))
        for name in names:
            folder = host_dir / name
            result = JobResult(host, printable(name), folder if folder.is_dir() else None)
            result.losses, result.train_s = read_metrics(folder / "metrics.jsonl")
            job_status = status_jobs.get(name, {})
            run = read_json(folder / "run.json") or {}
            result.state = printable(job_status.get("state") or ("finished" if run.get("finished") is True else "?"))
            result.total_steps = count(job_status.get("total_steps"))
            result.wall_s = number(job_status.get("elapsed_s"))
            result.attempts = count(job_status.get("attempts"))
            result.images = sorted((folder / "validation").glob("*.png"))
            result.weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else None
            result.settings = {label: setting_text(run[key]) for key, label in SETTINGS if key in run}
            code = job_status.get("exit_status")
            result.exit_status = code if isinstance(code, int) and not isinstance(code, bool) else None
            if not result.fine:
                result.last_log = last_log_line(folder / "train.log")
            results.append(result)
    return results


# --------------------------------------------------------------------------- summaries


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def state_counts(results: List[JobResult]) -> List[Tuple[str, int]]:
    """(state, jobs) with the states that need a look first."""
    counts = Counter(r.state for r in results)
    rank = {state: i for i, state in enumerate(STATE_ORDER)}
    return sorted(counts.items(), key=lambda item: (rank.get(item[0], len(rank) // 2), item[0]))


def headline(run_dir: Path, results: List[JobResult]) -> str:
    hosts = len({r.host for r in results})
    counts = ", ".join(f"{n} {state}" for state, n in state_counts(results))
    return f"{plural(len(results), 'job')} on {plural(hosts, 'host')}: {counts}"


def settings_summary(results: List[JobResult]) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    """(label, value) for each setting some job recorded, the value "differs: ..." where jobs differ,
    and a note on the jobs that recorded none (they failed before run.json was written)."""
    recorded = [r for r in results if r.settings]
    rows = []
    for _, label in SETTINGS:
        values = Counter(r.settings.get(label, "not recorded") for r in recorded)
        if not values or set(values) == {"not recorded"}:
            continue
        if len(values) == 1:
            rows.append((label, next(iter(values))))
            continue
        common = values.most_common(3)
        text = "; ".join(f"{value} ({plural(n, 'job')})" for value, n in common)
        more = len(values) - len(common)
        rows.append((label, f"differs: {text}" + (f"; {more} more value{'s' if more > 1 else ''}" if more else "")))
    missing = len(results) - len(recorded)
    # A job that failed before training wrote no run.json; one of an older kit has no profile or prompt.
    note = f"{missing} of {plural(len(results), 'job')} recorded no settings in run.json" if missing else None
    return rows, note


def percentile(ordered: List[float], q: float) -> float:
    """The q-th percentile of sorted values, interpolated between the two nearest ranks (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Iterable[float]) -> Optional[Tuple[float, float, float]]:
    """(10th percentile, median, 90th percentile) of the values; None without any."""
    ordered = sorted(values)
    if not ordered:
        return None
    return percentile(ordered, BAND[0]), percentile(ordered, 50), percentile(ordered, BAND[1])


def bucket_size(max_step: int, buckets: int) -> int:
    return max(1, math.ceil(max_step / buckets))


def bucket_means(job: "JobResult", size: int, max_step: int) -> Dict[int, float]:
    """The mean finite loss of each bucket of ``size`` steps of a job, keyed by the bucket's last step
    (at most max_step): plotting is downsampled this way, and each job counts once per bucket in the band."""
    sums: Dict[int, float] = {}
    counts: Dict[int, int] = {}
    for step, loss in job.finite_losses.items():
        key = -(-step // size) * size
        sums[key] = sums.get(key, 0.0) + loss
        counts[key] = counts.get(key, 0) + 1
    # Only the last bucket can end past max_step, and it holds no step past it.
    return {min(key, max_step): sums[key] / counts[key] for key in sorted(sums)}


Band = List[Tuple[int, float, float, float, int]]


def loss_band(results: List[JobResult], buckets: int = BAND_BUCKETS) -> Tuple[int, Band]:
    """(bucket size, [(step, 10th percentile, median, 90th percentile, jobs)]) of the jobs' bucket means."""
    max_step = max((r.steps for r in results), default=0)
    size = bucket_size(max_step, buckets)
    per_step: Dict[int, List[float]] = {}
    for r in results:
        for step, loss in bucket_means(r, size, max_step).items():
            per_step.setdefault(step, []).append(loss)
    band = []
    for step, losses in sorted(per_step.items()):
        low, median, high = spread(losses)  # type: ignore[misc]  # never empty
        band.append((step, low, median, high, len(losses)))
    return size, band


def failed_jobs(results: List[JobResult]) -> List[JobResult]:
    rank = {state: i for i, state in enumerate(STATE_ORDER)}
    return sorted((r for r in results if not r.fine), key=lambda r: (rank.get(r.state, len(rank)), r.host, r.job))


def slowest_jobs(results: List[JobResult]) -> Tuple[List[JobResult], Optional[float]]:
    """The SLOWEST_SHOWN jobs with the fewest steps per second, and the median over all that have a speed."""
    timed = sorted((r for r in results if r.steps_per_s), key=lambda r: (r.steps_per_s, r.host, r.job))
    middle = spread(r.steps_per_s for r in timed)  # type: ignore[misc]
    return timed[:SLOWEST_SHOWN], middle[1] if middle else None


def final_loss_line(results: List[JobResult]) -> Optional[str]:
    finals = [r.final_loss for r in results if r.final_loss is not None and math.isfinite(r.final_loss)]
    middle = spread(finals)
    if not middle:
        return None
    return (f"final loss over {plural(len(finals), 'job')}: median {middle[1]:.4f}, "
            f"{BAND[0]}th-{BAND[1]}th percentile {middle[0]:.4f}-{middle[2]:.4f}")


def failure_text(r: JobResult) -> str:
    """Why a job needs a look, in a line: its exit status and its log's last error line."""
    parts = [f"exit {r.exit_status}" if r.exit_status is not None else ""]
    if r.last_log:
        parts.append(r.last_log)
    elif r.folder is None and r.job == "-":
        parts.append("nothing came back from the host")
    elif not parts[0]:
        parts.append("no train.log")
    return ": ".join(p for p in parts if p)


# --------------------------------------------------------------------------- text


HEADER = ["host", "job", "state", "steps", "final loss", "train time", "steps/s", "wall time"]


def job_row(r: JobResult) -> List[str]:
    if not r.losses:
        row = [r.host, r.job, r.state, "no metrics", "", "", "", ""]
    else:
        steps = f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps)
        wall = f"{r.wall_s:.0f} s" if r.wall_s is not None else ""
        if wall and r.attempts and r.attempts > 1:
            wall += f" (last of {r.attempts} attempts)"
        row = [r.host, r.job, r.state, steps, f"{r.final_loss:.4f}", f"{r.train_s:.1f} s",
               f"{r.steps_per_s:.2f}" if r.steps_per_s else "", wall]
    # Host and job names, states: from the host, to a terminal and a page.
    return [printable(cell) for cell in row]


def table_rows(results: List[JobResult]) -> List[List[str]]:
    return [HEADER] + [job_row(r) for r in results]


def text_table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def console_summary(run_dir: Path, results: List[JobResult]) -> str:
    """What train.yml prints: a screen at 800 jobs (counts, settings, failed and slowest), every job's line
    only for a small run; the page has the rest."""
    lines = [printable(f"LoRA training run {run_dir.name}: {headline(run_dir, results)}")]
    settings, note = settings_summary(results)
    width = max((len(label) for label, _ in settings), default=0)
    lines += [f"  {label.ljust(width)}  {value}" for label, value in settings] + ([f"  ({note})"] if note else [])
    for extra in (final_loss_line(results), skipped_losses(results)):
        if extra:
            lines.append(extra)
    # Sections of job lines, the columns aligned across all of them.
    sections: List[Tuple[str, List[JobResult], bool]] = []
    failed = failed_jobs(results)
    shown = failed[:FAILED_SHOWN["console"]]
    if failed:
        more = f", the first {len(shown)} here, all in report.html" if len(shown) < len(failed) else ""
        sections.append((f"failed or stopped: {plural(len(failed), 'job')}{more}", shown, True))
    if len(results) <= CONSOLE_ALL_JOBS:
        sections.append(("all jobs:", results, False))
    else:
        slow, median = slowest_jobs(results)
        if slow:
            sections.append((f"slowest {len(slow)} by steps/s (median {median:.2f}); every job in report.html:",
                             slow, False))
    rows = [HEADER] + [job_row(r) for _, jobs, _ in sections for r in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for title, jobs, reasons in sections:
        lines += ["", title, "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip()]
        for r in jobs:
            lines.append("  ".join(c.ljust(w) for c, w in zip(job_row(r), widths)).rstrip())
            if reasons:
                lines.append(f"    -> {failure_text(r)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- svg


def skipped_losses(results: List[JobResult]) -> Optional[str]:
    """Which non-finite losses the plots leave out, in words; None when there are none."""
    skipped = [(r, r.non_finite_steps) for r in results if r.non_finite_steps]
    if not skipped:
        return None
    total = sum(len(steps) for _, steps in skipped)
    where = "; ".join(f"{r.host}/{r.job} at step{'s' if len(steps) > 1 else ''} "
                      f"{', '.join(map(str, steps[:5]))}{', ...' if len(steps) > 5 else ''}"
                      for r, steps in skipped[:10])
    if len(skipped) > 10:
        where += f"; {len(skipped) - 10} more jobs"
    return f"{total} non-finite loss value{'s' if total > 1 else ''} (NaN or inf) left out of the plot: {where}"


@dataclass
class Frame:
    """An SVG plot's axes: steps 0..max_step across, losses low..high up."""

    width: int
    height: int
    max_step: int
    low: float
    high: float
    left: int = 60
    right: int = 170
    top: int = 10
    bottom: int = 40

    def x(self, step: float) -> float:
        return self.left + (self.width - self.left - self.right) * (step / self.max_step if self.max_step else 0)

    def y(self, loss: float) -> float:
        span = (self.high - self.low) or 1.0
        return self.top + (self.height - self.top - self.bottom) * (1 - (loss - self.low) / span)

    def points(self, pairs: Iterable[Tuple[float, float]]) -> str:
        return " ".join(f"{self.x(s):.1f},{self.y(v):.1f}" for s, v in pairs)

    def open(self, label: str) -> List[str]:
        w, h, left, right, top, bottom = self.width, self.height, self.left, self.right, self.top, self.bottom
        return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
                f'aria-label="{html.escape(label, quote=True)}">',
                f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
                'fill="none" stroke="#999"/>',
                f'<text x="{left - 5}" y="{top + 10}" text-anchor="end">{self.high:.4g}</text>',
                f'<text x="{left - 5}" y="{h - bottom}" text-anchor="end">{self.low:.4g}</text>',
                f'<text x="{left}" y="{h - bottom + 16}">0</text>',
                f'<text x="{w - right}" y="{h - bottom + 16}" text-anchor="end">{self.max_step}</text>',
                f'<text x="{(w - right + left) / 2}" y="{h - 5}" text-anchor="middle">step</text>',
                f'<text x="15" y="{(h - bottom) / 2}" transform="rotate(-90 15 {(h - bottom) / 2})" '
                'text-anchor="middle">loss</text>']

    def legend(self, i: int, colour: str, text: str) -> str:
        return (f'<text x="{self.width - self.right + 10}" y="{self.top + 15 + 16 * i}" fill="{colour}">'
                f"{html.escape(text)}</text>")


def band_plot(size: int, band: Band) -> str:
    """All jobs' loss as one curve (loss_band's): the median per bucket of steps and a 10th-90th percentile band."""
    if not band:
        return "<p>No metrics to plot.</p>"
    frame = Frame(820, 340, band[-1][0], min(b[1] for b in band), max(b[3] for b in band))
    jobs = max(b[4] for b in band)
    parts = frame.open("training loss per step across jobs: median and percentile band")
    outline = [(b[0], b[3]) for b in band] + [(b[0], b[1]) for b in reversed(band)]
    parts.append(f'<polygon class="band" fill="#1f77b4" fill-opacity="0.25" stroke="none" '
                 f'points="{frame.points(outline)}"><title>{BAND[0]}th-{BAND[1]}th percentile</title></polygon>')
    parts.append(f'<polyline class="median" fill="none" stroke="#1f77b4" stroke-width="2" '
                 f'points="{frame.points((b[0], b[2]) for b in band)}"><title>median</title></polyline>')
    parts.append(frame.legend(0, "#1f77b4", f"median of {plural(jobs, 'job')}"))
    parts.append(frame.legend(1, "#6a9ccc", f"{BAND[0]}th-{BAND[1]}th percentile"))
    parts.append(frame.legend(3, "#555", f"{plural(size, 'step')} a point"))
    parts.append("</svg>")
    return "\n".join(parts)


def host_plot(jobs: List[JobResult]) -> str:
    """A host's jobs, one line each (eight on a host of eight chips), downsampled to HOST_BUCKETS points."""
    drawn = [r for r in jobs if r.finite_losses]
    if not drawn:
        return "<p>No metrics to plot.</p>"
    max_step = max(r.steps for r in drawn)
    size = bucket_size(max_step, HOST_BUCKETS)
    lines = [(r, bucket_means(r, size, max_step)) for r in drawn]
    frame = Frame(640, 260, max_step, min(min(m.values()) for _, m in lines), max(max(m.values()) for _, m in lines))
    parts = frame.open(f"training loss per step of {drawn[0].host}'s jobs")
    for i, (r, means) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline class="loss" fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{frame.points(means.items())}"><title>{html.escape(r.job)}</title></polyline>')
        parts.append(frame.legend(i, colour, r.job))
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- html


STYLE = """
body{font-family:sans-serif;margin:1.5em 2em;max-width:1300px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
table.settings th{background:none;font-weight:normal;color:#555}
.lead{font-size:1.1em}.state{padding:1px 6px;border-radius:3px;white-space:nowrap}
.failed,.absent,.unknown{background:#fbd5d5}.stopped{background:#fde7c3}.running,.queued{background:#dce9f9}
.finished{background:#d7f0d7}.log{font-family:monospace;font-size:.9em;max-width:60em;overflow-wrap:anywhere}
details{border:1px solid #ddd;border-radius:4px;margin:3px 0;padding:2px 8px}
details[open]{padding-bottom:8px}summary{cursor:pointer;padding:3px 0}summary .host{font-weight:bold;
display:inline-block;min-width:10em}figure{display:inline-block;margin:2px 4px}
table.jobs td{white-space:nowrap}table.jobs td:last-child{white-space:normal}
img{width:128px;height:128px;image-rendering:pixelated;background:#eee}figcaption{font-size:.8em}
svg text{font-size:12px}.note{color:#555}
"""


def state_badge(state: str) -> str:
    known = {"failed", "absent", "stopped", "running", "queued", "finished"}
    css = state if state in known else "unknown"
    return f'<span class="state {css}">{html.escape(state)}</span>'


def cells(values: Iterable[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{v}</{tag}>" for v in values) + "</tr>"


def render(run_dir: Path, results: List[JobResult]) -> str:
    hosts: Dict[str, List[JobResult]] = {}
    for r in results:
        hosts.setdefault(r.host, []).append(r)
    anchors = {host: f"host-{i}" for i, host in enumerate(hosts)}  # ids of our own: host names are the host's

    def link(path: Optional[Path]) -> str:
        return html.escape(path.relative_to(run_dir).as_posix(), quote=True) if path else ""

    def host_link(r: JobResult) -> str:
        return f'<a href="#{anchors[r.host]}">{html.escape(r.host)}</a>'

    esc = html.escape
    title = esc(printable(f"LoRA training run {run_dir.name}"))
    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
            f"<style>{STYLE}</style></head><body>", f"<h1>{title}</h1>"]
    counts = ", ".join(f"{n} {state_badge(state)}" for state, n in state_counts(results))
    page.append(f'<p class="lead">{plural(len(results), "job")} on {plural(len(hosts), "host")}: {counts}</p>')

    settings, note = settings_summary(results)
    page.append("<h2>Settings</h2>")
    if settings:
        page += ['<table class="settings">'] + [cells([esc(label), esc(value)]) for label, value in settings]
        page.append("</table>")
    else:
        page.append("<p>No job recorded its settings (run.json).</p>")
    if note:
        page.append(f'<p class="note">{esc(note)}.</p>')

    failed = failed_jobs(results)
    page.append(f"<h2>Failed or stopped jobs: {len(failed)}</h2>")
    if failed:
        shown = failed[:FAILED_SHOWN["page"]]
        page += ["<table>", cells(["host", "job", "state", "steps", "exit", "last log line"], "th")]
        for r in shown:
            steps = str(r.steps) + (f"/{r.total_steps}" if r.total_steps else "") if r.losses else "none"
            page.append(cells([host_link(r), esc(r.job), state_badge(r.state), steps,
                               "" if r.exit_status is None else str(r.exit_status),
                               f'<span class="log">{esc(r.last_log or failure_text(r))}</span>']))
        page.append("</table>")
        if len(shown) < len(failed):
            page.append(f'<p class="note">The other {len(failed) - len(shown)}: in their hosts\' sections.</p>')
    else:
        page.append("<p>None: every job finished or is running.</p>")

    slow, median = slowest_jobs(results)
    if slow and median:
        page.append(f"<h2>Slowest jobs (median of {plural(sum(1 for r in results if r.steps_per_s), 'job')}: "
                    f"{median:.2f} steps/s)</h2>")
        page += ["<table>", cells(["host", "job", "state", "steps", "steps/s", "s/step", "of the median"], "th")]
        for r in slow:
            speed = r.steps_per_s or 0.0
            page.append(cells([host_link(r), esc(r.job), state_badge(r.state), str(r.steps), f"{speed:.2f}",
                               f"{1 / speed:.3f}", f"{speed / median:.0%}"]))
        page.append("</table>")

    size, band = loss_band(results)
    page.append("<h2>Training loss across jobs</h2>")
    page.append(band_plot(size, band))
    page.append(f'<p class="note">Each job\'s loss is averaged over buckets of {plural(size, "step")}; the line is '
                f"the median of those means across jobs, the band their {BAND[0]}th to {BAND[1]}th percentile. "
                "Steps come from each job's metrics.jsonl (a step trained again after a resume counts once).</p>")
    skipped = skipped_losses(results)
    if skipped:
        page.append(f"<p>{esc(skipped)}.</p>")
    final = final_loss_line(results)
    if final:
        page.append(f"<p>{esc(final[0].upper() + final[1:])}.</p>")

    page.append(f"<h2>Hosts: {len(hosts)}</h2>")
    page.append('<p class="note">Each host\'s jobs, loss and validation images: open a host to see them. Train time '
                "sums the step times (validation excluded); wall time is the last attempt's.</p>")
    for host, jobs in hosts.items():
        page += host_section(host, anchors[host], jobs, link)
    page += ["</body></html>", ""]
    return "\n".join(page)


def host_section(host: str, anchor: str, jobs: List[JobResult], link) -> List[str]:
    """One host, collapsed: its summary line names its states, speed and final losses."""
    esc = html.escape
    states = ", ".join(f"{n} {state_badge(state)}" for state, n in state_counts(jobs))
    speeds = spread(r.steps_per_s for r in jobs if r.steps_per_s)
    finals = spread(r.final_loss for r in jobs if r.final_loss is not None and math.isfinite(r.final_loss))
    summary = [f"{plural(len(jobs), 'job')}: {states}"]
    if speeds:
        summary.append(f"median {speeds[1]:.2f} steps/s")
    if finals:
        summary.append(f"final loss {finals[1]:.4f}" if len(jobs) == 1 else
                       f"final loss median {finals[1]:.4f}")
    part = [f'<details id="{anchor}"><summary><span class="host">{esc(host)}</span> {" &middot; ".join(summary)}'
            "</summary>", '<table class="jobs">',
            cells([esc(h) for h in HEADER[1:] + ["LoRA weights", "last log line"]], "th")]
    for r in jobs:
        weights = f'<a href="{link(r.weights)}">safetensors</a>' if r.weights else ""
        row = [esc(c) for c in job_row(r)[1:]]  # the host is the section's
        row[1] = state_badge(r.state)
        log = f'<span class="log">{esc(failure_text(r))}</span>' if not r.fine else ""
        part.append(cells(row + [weights, log]))
    part.append("</table>")
    part.append(host_plot(jobs))
    with_images = [r for r in jobs if r.images]
    if with_images:
        # A row of images per job: eight jobs of a few images each stay within a screen.
        part.append('<table class="images"><tr><th>job</th><th>validation images</th></tr>')
        for r in with_images:
            figures = "".join(f'<figure><a href="{link(p)}"><img src="{link(p)}" loading="lazy" '
                              f'alt="{esc(printable(p.name))}"></a><figcaption>{esc(printable(p.name))}</figcaption>'
                              "</figure>" for p in r.images)
            part.append(f"<tr><td>{esc(r.job)}</td><td>{figures}</td></tr>")
        part.append("</table>")
    part.append("</details>")
    return part


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write runs/<run-id>/report.html from the results that "
                                                 "playbooks/train.yml fetched, and print its summary: counts by "
                                                 "state, settings, the failed and the slowest jobs (every job's "
                                                 f"line when there are at most {CONSOLE_ALL_JOBS}).")
    parser.add_argument("run_dir", type=Path, help="The run's folder on the control node, e.g. runs/my-run.")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: run folder '{args.run_dir}' does not exist; playbooks/train.yml fetches results to "
              "runs/<run-id>/", file=sys.stderr)
        return 2
    results = collect(args.run_dir)
    print(console_summary(args.run_dir, results))
    report = args.run_dir / "report.html"
    page = render(args.run_dir, results)
    # Rewritten only when it changes, so that a rerun over the same results reports no change.
    if report.is_file() and report.read_text() == page:
        print(f"{report} unchanged")
    else:
        report.write_text(page)
        print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
