"""Benchmark of the runners on the tiny random model (a script, not a test).

Measures in one run, on one device:
- training steps/s of runners/train_lora.py against the loop upstream v0.20.0 runs per step
  (VAE encode and text encoder on every step: the runner's --no_cache);
- inference time of runners/infer.py against a plain StableDiffusionPipeline call.
Prints the ratios and writes them as JSON. Usage:
    python tests/bench/bench_runners.py [--device cpu] [--steps 40] [--out build/bench.json]
    python tests/bench/bench_runners.py --size sd14 [--resolution 256]   # SD v1.4's shapes: bench_sd14.py
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

RUNNERS = Path(__file__).resolve().parents[2] / "runners"
sys.path.insert(0, str(RUNNERS))

import bench_sd14  # noqa: E402
import infer  # noqa: E402
import make_tiny_fixtures  # noqa: E402
import train_lora  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402


def training_steps_per_second(fixtures: dict, out: Path, device: str, steps: int, cached: bool) -> float:
    """Median steps/s after the first epoch, when the runner's caches are warm."""
    argv = [
        "--pretrained_model_name_or_path", str(fixtures["model"]), "--dataset_name", str(fixtures["parquet"]),
        "--resolution", "16", "--train_batch_size", "1", "--max_train_steps", str(steps),
        "--checkpointing_steps", str(10 * steps), "--lr_warmup_steps", "0", "--seed", "42",
        "--report_to", "none", "--device", device, "--output_dir", str(out),
    ] + ([] if cached else ["--no_cache"])
    assert train_lora.main(argv) == 0
    times = [json.loads(line)["step_time_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    warm = times[len(times) // 4:]
    return 1.0 / statistics.median(warm)


def plain_pipeline_seconds(model: Path, device: str, steps: int, size: Optional[int] = None) -> float:
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None).to(device)
    pipe("cute dragon creature", num_inference_steps=steps, height=size, width=size,
         generator=torch.Generator(device).manual_seed(42))
    return time.perf_counter() - started


def runner_seconds(model: Path, out: Path, device: str, steps: int, size: Optional[int] = None) -> float:
    started = time.perf_counter()
    assert infer.main(["--model", str(model), "--steps", str(steps), "--device", device, "--dtype", "fp32",
                       "--output_dir", str(out)] + (["--height", str(size), "--width", str(size)] if size else [])) == 0
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "sd14"], default="tiny",
                        help="tiny (default): the tiny random model; sd14: SD v1.4's real shapes (bench_sd14.py)")
    parser.add_argument("--device", default="cpu", help="device for both sides of each comparison (tiny only)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (tiny only)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="inference runs per side, the median is reported (default 3; 1 with --size sd14)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the JSON goes (default build/bench.json, build/bench-sd14.json with --size sd14)")
    bench_sd14.add_arguments(parser)
    args = parser.parse_args()
    if args.size == "sd14":
        args.repeats = args.repeats or 1
        args.out = args.out or Path("build/bench-sd14.json")
        return bench_sd14.main(args)
    args.repeats = args.repeats or 3
    args.out = args.out or Path("build/bench.json")
    torch.set_num_threads(1)  # small matrices: more threads only add noise on a shared machine

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fixtures = make_tiny_fixtures.build_all(tmp / "fixtures")
        runner_sps = training_steps_per_second(fixtures, tmp / "cached", args.device, args.steps, cached=True)
        upstream_sps = training_steps_per_second(fixtures, tmp / "upstream", args.device, args.steps, cached=False)
        plain = statistics.median(plain_pipeline_seconds(fixtures["model"], args.device, 20)
                                  for _ in range(args.repeats))
        runner = statistics.median(runner_seconds(fixtures["model"], tmp / "images", args.device, 20)
                                   for _ in range(args.repeats))

    results = {
        "device": args.device,
        "torch": torch.__version__,
        "train_steps_per_s_runner": round(runner_sps, 2),
        "train_steps_per_s_upstream_loop": round(upstream_sps, 2),
        "train_speedup": round(runner_sps / upstream_sps, 3),
        "infer_s_runner": round(runner, 3),
        "infer_s_plain_pipeline": round(plain, 3),
        "infer_time_ratio_runner_over_plain": round(runner / plain, 3),
    }
    for key, value in results.items():
        print(f"{key:40s} {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
