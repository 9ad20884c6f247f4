#!/usr/bin/env python3
"""Summarise a fleet training run fetched by playbooks/train.yml into one HTML page.

Reads ``runs/<run-id>/<host>/<job>/`` (metrics.jsonl, run.json, validation/*.png, the LoRA
weights) and ``runs/<run-id>/<host>/status.json`` (what sdkit_job.py last said about the host's
jobs), writes ``runs/<run-id>/report.html`` (a table of hosts and jobs, a loss plot drawn here
as inline SVG, the validation images linked relatively so the folder can be moved or served as
is) and prints the table as text. Standard library only: it runs on the control node with any
Python 3.

Everything read here came from a host, where the runner user (who loads untrusted models) writes it:
files are read with sdkit_files.read_limited (regular files only, no blocking, bounded), numbers of
the wrong type count as unknown, and every cell is made printable before it reaches a terminal.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# The runners' stdlib-only helpers, shared with the job tool whose status.json this reads.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
from sdkit_files import count, number, printable, read_json, read_limited  # noqa: E402

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
WEIGHTS = "pytorch_lora_weights.safetensors"
# metrics.jsonl grows by about 100 bytes a step: its last 64 MiB are the last half million steps or so.
METRICS_LIMIT = 64 << 20


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

    @property
    def steps(self) -> int:
        return max(self.losses, default=0)

    @property
    def final_loss(self) -> Optional[float]:
        return self.losses[self.steps] if self.losses else None

    @property
    def steps_per_s(self) -> Optional[float]:
        return self.steps / self.train_s if self.train_s > 0 else None

    @property
    def finite_losses(self) -> Dict[int, float]:
        """The losses that can be drawn: one NaN or inf would make every point of the plot NaN."""
        return {step: loss for step, loss in self.losses.items() if math.isfinite(loss)}

    @property
    def non_finite_steps(self) -> List[int]:
        return [step for step, loss in self.losses.items() if not math.isfinite(loss)]


def read_metrics(path: Path) -> Tuple[Dict[int, float], float]:
    """Loss per step and the summed step times, each step counted once.

    A resumed job trains the steps after its checkpoint again and appends them: the later
    line wins, as those are the steps the final weights come from.
    """
    by_step: Dict[int, dict] = {}
    for line in (read_limited(path, METRICS_LIMIT, tail=True) or b"").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill (or by the limit, at the start)
        step = count(record.get("step")) if isinstance(record, dict) else None
        if step is not None:
            by_step[step] = record
    # NaN and inf losses are kept (the plot says which it leaves out); a loss that is no number is not one.
    losses = {step: float(r["loss"]) for step, r in sorted(by_step.items())
              if isinstance(r.get("loss"), (int, float)) and not isinstance(r.get("loss"), bool)}
    return losses, sum(number(r.get("step_time_s")) or 0.0 for r in by_step.values())


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
        if not names:
            results.append(JobResult(host_dir.name, "-", None, state=str(status.get("state", "no results"))))
        for name in names:
            folder = host_dir / name
            # The name is the host's folder name: shown on the console and the page, made printable once.
            result = JobResult(host_dir.name, printable(name), folder if folder.is_dir() else None)
            result.losses, result.train_s = read_metrics(folder / "metrics.jsonl")
            job_status = status_jobs.get(name, {})
            run = read_json(folder / "run.json") or {}
            result.state = str(job_status.get("state") or ("finished" if run.get("finished") is True else "?"))
            result.total_steps = count(job_status.get("total_steps"))
            result.wall_s = number(job_status.get("elapsed_s"))
            result.attempts = count(job_status.get("attempts"))
            result.images = sorted((folder / "validation").glob("*.png"))
            result.weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else None
            results.append(result)
    return results


# --------------------------------------------------------------------------- text


def table_rows(results: List[JobResult]) -> List[List[str]]:
    header = ["host", "job", "state", "steps", "final loss", "train time", "steps/s", "wall time"]
    rows = [header]
    for r in results:
        if not r.losses:
            rows.append([r.host, r.job, r.state, "no metrics", "", "", "", ""])
            continue
        steps = f"{r.steps}/{r.total_steps}" if r.total_steps else str(r.steps)
        wall = f"{r.wall_s:.0f} s" if r.wall_s is not None else ""
        if wall and r.attempts and r.attempts > 1:
            wall += f" (last of {r.attempts} attempts)"
        rows.append([r.host, r.job, r.state, steps, f"{r.final_loss:.4f}", f"{r.train_s:.1f} s",
                     f"{r.steps_per_s:.2f}" if r.steps_per_s else "", wall])
    # Host and job names, states: from the host, to a terminal and a page.
    return [[printable(cell) for cell in row] for row in rows]


def text_table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


# --------------------------------------------------------------------------- html


def skipped_losses(results: List[JobResult]) -> Optional[str]:
    """Which non-finite losses the plot leaves out, in words; None when there are none."""
    skipped = [(r, r.non_finite_steps) for r in results if r.non_finite_steps]
    if not skipped:
        return None
    total = sum(len(steps) for _, steps in skipped)
    where = "; ".join(f"{r.host}/{r.job} at step{'s' if len(steps) > 1 else ''} "
                      f"{', '.join(map(str, steps[:5]))}{', ...' if len(steps) > 5 else ''}" for r, steps in skipped)
    return f"{total} non-finite loss value{'s' if total > 1 else ''} (NaN or inf) left out of the plot: {where}"


def loss_plot(results: List[JobResult], width: int = 640, height: int = 320) -> str:
    """Loss against step, one polyline per host/job, with the axes' ranges written on them."""
    series = [r for r in results if r.finite_losses]
    if not series:
        return "<p>No metrics to plot.</p>"
    left, right, top, bottom = 60, 180, 10, 40
    max_step = max(r.steps for r in series)
    low = min(min(r.finite_losses.values()) for r in series)
    high = max(max(r.finite_losses.values()) for r in series)
    span = (high - low) or 1.0

    def x(step: int) -> float:
        return left + (width - left - right) * (step / max_step if max_step else 0)

    def y(loss: float) -> float:
        return top + (height - top - bottom) * (1 - (loss - low) / span)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="training loss per step">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>',
             f'<text x="{left - 5}" y="{top + 10}" text-anchor="end">{high:.4g}</text>',
             f'<text x="{left - 5}" y="{height - bottom}" text-anchor="end">{low:.4g}</text>',
             f'<text x="{left}" y="{height - bottom + 16}">0</text>',
             f'<text x="{width - right}" y="{height - bottom + 16}" text-anchor="end">{max_step}</text>',
             f'<text x="{(width - right + left) / 2}" y="{height - 5}" text-anchor="middle">step</text>',
             f'<text x="15" y="{(height - bottom) / 2}" transform="rotate(-90 15 {(height - bottom) / 2})" '
             'text-anchor="middle">loss</text>']
    for i, r in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in r.finite_losses.items())
        label = html.escape(f"{r.host}/{r.job}")
        parts.append(f'<polyline class="loss" fill="none" stroke="{colour}" stroke-width="1.5" points="{points}">'
                     f'<title>{label}</title></polyline>')
        parts.append(f'<text x="{width - right + 10}" y="{top + 15 + 16 * i}" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render(run_dir: Path, results: List[JobResult]) -> str:
    rows = table_rows(results)

    def link(path: Optional[Path]) -> str:
        return html.escape(path.relative_to(run_dir).as_posix(), quote=True) if path else ""

    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in rows[0] + ["LoRA weights"]) + "</tr>"]
    for r, row in zip(results, rows[1:]):
        weights = f'<a href="{link(r.weights)}">{WEIGHTS}</a>' if r.weights else ""
        table.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + f"<td>{weights}</td></tr>")
    table.append("</table>")

    gallery = []
    for r in results:
        if r.images:
            gallery.append(f"<h3>{html.escape(r.host)} / {html.escape(r.job)}</h3><div>")
            gallery += [f'<figure><a href="{link(p)}"><img src="{link(p)}" alt="{html.escape(p.name)}"></a>'
                        f"<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in r.images]
            gallery.append("</div>")
    title = html.escape(f"LoRA training run {run_dir.name}")
    skipped = skipped_losses(results)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}figure{display:inline-block;margin:4px}"
        "img{width:128px;image-rendering:pixelated}svg text{font-size:12px}</style></head><body>",
        f"<h1>{title}</h1>",
        "<p>Steps and loss from each job's metrics.jsonl (a step trained again after a resume counts once); "
        "train time sums the step times (validation excluded); wall time is the last attempt's.</p>",
        *table, "<h2>Training loss</h2>", loss_plot(results),
        *([f"<p>{html.escape(skipped)}.</p>"] if skipped else []),
        "<h2>Validation images</h2>", *(gallery or ["<p>No validation images.</p>"]),
        "</body></html>", ""])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write runs/<run-id>/report.html from the results that "
                                                 "playbooks/train.yml fetched, and print its table.")
    parser.add_argument("run_dir", type=Path, help="The run's folder on the control node, e.g. runs/my-run.")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: run folder '{args.run_dir}' does not exist; playbooks/train.yml fetches results to "
              "runs/<run-id>/", file=sys.stderr)
        return 2
    results = collect(args.run_dir)
    print(text_table(table_rows(results)))
    skipped = skipped_losses(results)
    if skipped:
        print(skipped)
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
