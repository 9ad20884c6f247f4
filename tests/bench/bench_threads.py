"""Trainer threads when several jobs share a host's CPUs (a script, not a test).

sdkit_job.py gives each trainer process OMP_NUM_THREADS = the host's CPUs / its jobs, and TINY runs
one thread. This runs JOBS copies of runners/train_lora.py side by side on the tiny random model
(6 steps, a checkpoint, one validation image: make train TINY=1's sizes), once with each copy on
torch's default (one thread per CPU) and once with the share, and prints the wall time until all
end and the CPU seconds they used. Usage:
    python tests/bench/bench_threads.py [--jobs 1 2 4] [--steps 6] [--out build/bench-threads.json]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNERS = Path(__file__).resolve().parents[2] / "runners"
sys.path.insert(0, str(RUNNERS))

import make_tiny_fixtures  # noqa: E402


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_side_by_side(fixtures: dict, work: Path, jobs: int, threads: int, steps: int) -> dict:
    """JOBS trainers at once with THREADS threads each: wall seconds until the last ends, CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_TORCH_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, str(RUNNERS / "train_lora.py"),
            "--pretrained_model_name_or_path", str(fixtures["model"]), "--dataset_name", str(fixtures["parquet"]),
            "--caption_column", "text", "--resolution", "16", "--train_batch_size", "1", "--seed", "42",
            "--max_train_steps", str(steps), "--checkpointing_steps", str(max(1, steps // 2)),
            "--validation_prompt", "cute dragon creature", "--num_validation_images", "1", "--report_to", "none"]
    cpu_before, started = children_cpu_seconds(), time.monotonic()
    processes = [subprocess.Popen([*argv, "--output_dir", str(work / f"t{threads}-j{jobs}-{i}")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(jobs)]
    for process in processes:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a trainer failed ({process.returncode}): {stderr[-2000:]}")
    return {"jobs": jobs, "threads": threads, "wall_s": round(time.monotonic() - started, 2),
            "cpu_s": round(children_cpu_seconds() - cpu_before, 2)}


def main() -> int:
    cpus = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, cpus, 2 * cpus],
                        help=f"Trainers side by side, one measurement each (default 1, {cpus}, {2 * cpus}).")
    parser.add_argument("--steps", type=int, default=6, help="Training steps of each trainer (default 6).")
    parser.add_argument("--out", type=Path, default=Path("build/bench-threads.json"), help="JSON results.")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="sdkit-bench-threads-") as tmp:
        fixtures = make_tiny_fixtures.build_all(Path(tmp) / "fixtures", num_images=8)
        print(f"{cpus} CPUs; {args.steps} steps per trainer, tiny model")
        print(f"{'jobs':>4} {'threads':>8} {'wall s':>8} {'CPU s':>8}   threads: torch's default (CPUs), then the share")
        for jobs in args.jobs:
            for threads in (cpus, max(1, cpus // jobs), 1):
                if any(r["jobs"] == jobs and r["threads"] == threads for r in results):
                    continue
                result = run_side_by_side(fixtures, Path(tmp), jobs, threads, args.steps)
                results.append(result)
                print(f"{jobs:>4} {threads:>8} {result['wall_s']:>8} {result['cpu_s']:>8}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": cpus, "steps": args.steps, "results": results}, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
