"""A simulated fleet run for tools/sdkit_report.py, and the time and size of its report (a script, not a test).

Writes HOSTS x JOBS job folders laid out as playbooks/train.yml fetches them (runs/<run-id>/<host>/<job>/:
metrics.jsonl with STEPS lines, run.json, job.json, train.log, validation images, the LoRA weights; and each
host's status.json), with a few jobs failed, stopped, running, slow or of another resolution, then runs the
report on it and prints how long it took and how large report.html is. Look at the page in a browser:
    python tests/bench/bench_report.py [--hosts 100] [--jobs 8] [--steps 2000] [--run-dir build/report-run/sim]
        [--out build/bench-report.json]
    chromium --headless --screenshot=/tmp/report.png --window-size=1400,2000 \
        file://$PWD/build/report-run/sim/report.html
The unit tests build small runs with make_run().
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "tools" / "sdkit_report.py"


def png(size: int, colour: tuple) -> bytes:
    """A plain RGB PNG of one colour: a validation image stand-in, written without any imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(colour) * size for _ in range(size))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_run(run_dir: Path, hosts: int = 100, jobs: int = 8, steps: int = 2000, images: int = 2,
             seed: int = 0) -> None:
    """The fleet run. Jobs are tpu0..tpuN-1 on host-000..; host-003 tpu5 fails at a third of its steps,
    host-011 tpu2 failed before its first step, host-042 tpu0 was stopped, host-077's jobs still run,
    host-050 tpu7 is three times slower than the rest, and host-090 trained at another resolution."""
    rng = random.Random(seed)
    settings = {"model": "/var/lib/sophon-sd/assets/stable-diffusion-v1-4",
                "dataset": "lambdalabs/pokemon-blip-captions",
                "profile": "tutorial-2023", "mixed_precision": "fp16", "resolution": 512, "learning_rate": 1e-4,
                "train_batch_size": 1, "total_steps": steps, "num_processes": 1, "rank": 4, "lora": "attn_procs",
                "seed": 42, "validation_prompt": "cute dragon creature"}
    image = png(16, (200, 120, 40))
    for h in range(hosts):
        host = f"host-{h:03d}"
        statuses = []
        for j in range(jobs):
            name = f"tpu{j}"
            folder = run_dir / host / name
            state, done, code, log = "finished", steps, 0, "Steps: 100%|##########| done\n"
            if (h, j) == (3, 5):
                state, done, code = "failed", steps // 3, 1
                log += "RuntimeError: TPU memory allocation failed (bm_malloc_device_byte: 1073741824 bytes)\n"
            elif (h, j) == (11, 2):
                state, done, code = "failed", 0, 2
                log = "error: dataset 'pokemon' not found under /var/lib/sophon-sd/assets\n"
            elif (h, j) == (42, 0):
                state, done, code, log = "stopped", steps // 2, 3, "interrupted: checkpoint-1000 saved\n"
            elif h == 77:
                state, done, code = "running", steps * (j + 1) // 10, None
            folder.mkdir(parents=True, exist_ok=True)
            step_time = 0.9 * (3 if (h, j) == (50, 7) else 1) * rng.uniform(0.95, 1.05)
            lines = []
            for step in range(1, done + 1):
                # A diffusion loss: a decaying mean under a lot of per-step noise (random timesteps).
                loss = 0.08 + 0.12 * math.exp(-step / (steps / 4)) + rng.gauss(0, 0.04) + 0.01 * (h % 7) / 7
                lines.append(json.dumps({"step": step, "epoch": step * 10 // max(steps, 1), "loss": abs(loss),
                                         "lr": 1e-4, "step_time_s": round(step_time * rng.uniform(0.9, 1.1), 4)}))
            if lines:
                (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            if done:
                run = {**settings, "step": done, "finished": state == "finished"}
                if h == 90:
                    run["resolution"] = 256
                (folder / "run.json").write_text(json.dumps(run))
            (folder / "job.json").write_text(json.dumps({"job": name, "device": f"tpu:{j}", "attempts": [{}]}))
            (folder / "train.log").write_text(log)
            if state == "finished":
                (folder / "validation").mkdir(exist_ok=True)
                for i in range(images):
                    (folder / "validation" / f"epoch-9_{i}.png").write_bytes(image)
                (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
            statuses.append({"job": name, "state": state, "step": done or None, "total_steps": steps,
                             "elapsed_s": round(done * step_time + 60, 1), "exit_status": code, "attempts": 1})
        states = {s["state"] for s in statuses}
        host_state = next((s for s in ("running", "failed", "stopped") if s in states), "finished")
        (run_dir / host / "status.json").write_text(json.dumps({"state": host_state, "jobs": statuses}))


def main() -> int:
    parser = argparse.ArgumentParser(description="Simulate a fleet run's fetched results and time "
                                                 "tools/sdkit_report.py on them.")
    parser.add_argument("--hosts", type=int, default=100, help="Hosts in the simulated run.")
    parser.add_argument("--jobs", type=int, default=8, help="Jobs per host (one per chip: 8 on an 8-chip host).")
    parser.add_argument("--steps", type=int, default=2000, help="Steps, so metrics.jsonl lines, per finished job.")
    parser.add_argument("--run-dir", type=Path, default=Path("build/report-run/sim"),
                        help="Where to write the run (replaced if it exists).")
    parser.add_argument("--out", type=Path, default=Path("build/bench-report.json"), help="Where to write the figures.")
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    started = time.monotonic()
    make_run(args.run_dir, args.hosts, args.jobs, args.steps)
    made = time.monotonic() - started
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPORT), str(args.run_dir)], capture_output=True, text=True,
                            check=True)
    seconds = time.monotonic() - started
    page = args.run_dir / "report.html"
    figures = {"hosts": args.hosts, "jobs_per_host": args.jobs, "steps": args.steps,
               "metrics_bytes": sum(p.stat().st_size for p in args.run_dir.glob("*/*/metrics.jsonl")),
               "report_seconds": round(seconds, 2), "report_bytes": page.stat().st_size,
               "console_lines": len(result.stdout.splitlines())}
    print(result.stdout)
    print(f"simulated run written in {made:.1f} s; {json.dumps(figures)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
