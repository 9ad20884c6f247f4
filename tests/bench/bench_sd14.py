"""Training and inference speed at Stable Diffusion v1.4's real shapes (`make bench SIZE=sd14`).

The tiny model says nothing about the tutorial's: its VAE and text encoder cost almost nothing, so
caching them cannot show. This runs the runner (caches on, SDPA LoRA attention) and the upstream loop
(`--no_cache`: VAE and text encoder on every step, v0.20.0's non-SDPA LoRAAttnProcessor) on a random pipeline with
v1.4's shapes, each in its own process, with the tutorial's flags (`--random_flip` included) at a
resolution a CPU can afford, and reports:

- s/step at steady state and end-to-end time to the saved LoRA, for both loops;
- the speed-up at steady state and over a seed-like 10-epoch run (the uncached first epoch included);
- FLOPs per step of both loops (torch.utils.flop_counter on meta tensors), achieved GFLOP/s and its
  fraction of this machine's fp32 matmul peak on the same threads, measured in the same run;
- peak RSS of each loop's process; both loss curves (same seed) side by side;
- inference: runners/infer.py against a plain StableDiffusionPipeline, same size and steps;
- the hardware's ceiling on paper: FLOPs per step at 512 px and the steps/s that BM1684X's
  16 TFLOPS fp16 and 2 TFLOPS fp32 would allow.

The fixtures (about 4 GB) are built once into build/fixtures-sd14/ and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
RUNNERS = REPO / "runners"
sys.path.insert(0, str(RUNNERS))

import make_tiny_fixtures  # noqa: E402

# BM1684X's peaks (Sophgo's figures, see FACTS): what a chip could do per second at full use.
CHIP_PEAKS = {"fp16": 16e12, "fp32": 2e12}
SEED_EPOCHS = 10  # the tutorial's --num_train_epochs
SEED_RESOLUTION = 512


def count_flops(step: Callable[[], torch.Tensor]) -> Tuple[int, int]:
    """(forward FLOPs, forward + backward FLOPs) of ``step``, whose result is a scalar loss.

    Counts matmuls, convolutions and attention as torch.utils.flop_counter does (2 per
    multiply-add); elementwise work is not counted. The backward computes only what autograd
    needs: with frozen weights that is the input gradients (about one more forward), not the
    weight gradients, which is why a LoRA step costs about two forwards and not three.
    """
    with FlopCounterMode(display=False) as counter:
        loss = step()
        forward = counter.get_total_flops()
        if loss.requires_grad:
            loss.backward()
        return forward, counter.get_total_flops()


def lora_models(shapes: make_tiny_fixtures.PipelineShapes, rank: int = 4, sdpa: bool = False):
    """UNet (with LoRA, base frozen), VAE and text encoder of ``shapes`` on the meta device: no memory, no time.

    ``sdpa``: the runner's LoRAAttnProcessor2_0 instead of v0.20.0's LoRAAttnProcessor.
    """
    import train_lora

    with torch.device("meta"):
        unet, vae, text_encoder = make_tiny_fixtures.build_models(shapes, vocab_size=64)
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
        train_lora.add_lora(unet, rank, sdpa)
    return unet, vae, text_encoder


def step_flops(models, shapes: make_tiny_fixtures.PipelineShapes, resolution: int, cached: bool,
               batch: int = 1) -> Dict[str, int]:
    """FLOPs of one training step at ``resolution``, as the upstream loop (``cached=False``) or the runner does it.

    Upstream encodes the image with the VAE and the caption with the text encoder on every step;
    the runner reads both from its caches. Both then run the UNet forward and the LoRA backward.
    """
    unet, vae, text_encoder = models
    meta = torch.device("meta")
    latent = resolution // 2 ** (len(shapes.vae_channels) - 1)
    pixels = torch.empty(batch, 3, resolution, resolution, device=meta)
    input_ids = torch.zeros(batch, shapes.text_positions, dtype=torch.long, device=meta)
    timesteps = torch.zeros(batch, dtype=torch.long, device=meta)
    parts: Dict[str, int] = {}

    def counted(name: str, encoder: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            result = encoder()
        parts[name] = counter.get_total_flops()
        return result

    if cached:
        latents = torch.empty(batch, 4, latent, latent, device=meta)
        hidden = torch.empty(batch, shapes.text_positions, shapes.text_hidden, device=meta)
    else:
        latents = counted("vae_encode", lambda: vae.encode(pixels).latent_dist.mean)
        hidden = counted("text_encoder", lambda: text_encoder(input_ids)[0])
    forward, total = count_flops(lambda: unet(latents, timesteps, hidden).sample.float().pow(2).mean())
    parts.update(unet_forward=forward, unet_backward=total - forward)
    parts["step"] = sum(parts.values())
    return parts


def ceiling_steps_per_s(flops_per_step: float, peak_flops_per_s: float) -> float:
    """Steps/s at full use of the peak: steps/s = peak FLOP/s / FLOPs per step (batch 1, no other cost)."""
    return peak_flops_per_s / flops_per_step


def matmul_peak_flops(n: int = 4096, repeats: int = 3) -> float:
    """This machine's fp32 FLOP/s on the current threads: the best of ``repeats`` n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm the threads and the allocator
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * n ** 3 / best


def tutorial_flags(model: Path, dataset: Path, resolution: int, epochs: int, images: int, out: Path) -> List[str]:
    """The tutorial's fp32 training flags (seed, roles/sophon_runners/templates/Makefile.j2), for either side.

    Changed: the model and dataset paths, the resolution, the epochs, the output folder, and
    --max_train_samples (the same ``images`` rows on both sides). Left out: --validation_prompt, which
    generates images each epoch, the same work in both loops, and would bury the training in it.
    """
    return [
        "--mixed_precision", "no", "--pretrained_model_name_or_path", str(model),
        "--dataset_name", str(dataset), "--caption_column", "text", "--max_train_samples", str(images),
        "--resolution", str(resolution), "--random_flip", "--train_batch_size", "1",
        "--num_train_epochs", str(epochs), "--checkpointing_steps", "500",
        "--learning_rate", "1e-04", "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--seed", "42",
        "--output_dir", str(out),
    ]


def run_process(argv: List[str], env: Dict[str, str], log: Path, what: str) -> Dict[str, Any]:
    """Run ``argv`` to its end, output to ``log``: wall seconds, its own CPU seconds and peak RSS, load around it."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own rusage, not all children's
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training ({what}) failed; see {log}")
    # The 1-minute load average around the run: on a shared machine, how many others wanted the cores.
    return {"wall_s": wall, "max_rss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def run_loop(fixtures: Dict[str, Path], out: Path, args: argparse.Namespace, cached: bool,
             extra: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """One runner training in its own process, so its peak RSS and start-up are its own; ``extra``: more flags."""
    argv = [sys.executable, str(RUNNERS / "train_lora.py")] + tutorial_flags(
        fixtures["model"], fixtures["parquet"], args.resolution, args.epochs, args.images, out
    ) + ["--report_to", "none", "--device", "cpu"] + ([] if cached else ["--no_cache"]) + list(extra)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run = run_process(argv, env, out.with_suffix(".log"), "runner" if cached else "runner --no_cache")
    run["metrics"] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return run


def summarise(run: Dict[str, Any]) -> Dict[str, Any]:
    """Steady-state s/step, per-epoch cost and the projection of a seed-like 10-epoch run."""
    metrics = run["metrics"]
    epochs: Dict[int, List[float]] = {}
    for row in metrics:
        epochs.setdefault(row["epoch"], []).append(row["step_time_s"])
    last = max(epochs)
    # With --random_flip each image has two latents, so the runner's cache can still miss in
    # epoch 1; from epoch 2 on (or the last epoch of a shorter run) it is warm.
    steady = [t for epoch, times in epochs.items() if epoch >= min(2, last) for t in times]
    epoch_s = [sum(epochs[e]) for e in sorted(epochs)]
    overhead = run["wall_s"] - sum(epoch_s)  # start-up, loading, saving the LoRA
    measured = len(epoch_s)
    seed_like = overhead + sum(epoch_s[:SEED_EPOCHS]) + max(0, SEED_EPOCHS - measured) * epoch_s[-1]
    return {
        "s_per_step_steady": statistics.median(steady), "epoch_s": [round(s, 2) for s in epoch_s],
        # Spread of the steady steps, which do the same work: on a shared machine, mostly others' load.
        "s_per_step_steady_min_max": [round(min(steady), 3), round(max(steady), 3)],
        "end_to_end_s": round(run["wall_s"], 2), "overhead_s": round(overhead, 2),
        f"projected_{SEED_EPOCHS}_epochs_s": round(seed_like, 2),
        "peak_rss_mib": round(run["max_rss_kib"] / 1024), "losses": [row["loss"] for row in metrics],
        "cpu_s": round(run.get("cpu_s", 0.0), 1), "load_average_before_after": run.get("load_average"),
    }


def build_fixtures(args: argparse.Namespace) -> Dict[str, Path]:
    started = time.perf_counter()
    # Images at 512 px so any --resolution up to the model's own is a resize, as with the real dataset.
    fixtures = make_tiny_fixtures.build_cached(args.fixtures, make_tiny_fixtures.SHAPES[args.shapes],
                                               num_images=max(args.images, 4), image_size=SEED_RESOLUTION)
    print(f"fixtures: {args.fixtures} ({time.perf_counter() - started:.0f} s; reused when complete)")
    return fixtures


def flop_table(resolution: int, shapes: make_tiny_fixtures.PipelineShapes = make_tiny_fixtures.SD14
               ) -> Dict[str, Dict[str, int]]:
    """FLOPs per step (batch 1) of the runner and of the upstream loop, by part, each with its attention processor."""
    return {name: step_flops(lora_models(shapes, sdpa=cached), shapes, resolution, cached=cached)
            for name, cached in (("runner", True), ("upstream_loop", False))}


def print_table(results: Dict[str, Any]) -> None:
    runner, upstream = results["runner"], results["upstream_loop"]
    rows = [("s/step, steady state", "s_per_step_steady"), ("end to end, s", "end_to_end_s"),
            ("seconds per epoch", "epoch_s"),
            (f"{SEED_EPOCHS} epochs (projected), s", f"projected_{SEED_EPOCHS}_epochs_s"),
            ("GFLOP per step", "gflop_per_step"), ("achieved GFLOP/s", "achieved_gflop_per_s"),
            ("fraction of matmul peak", "fraction_of_peak"), ("peak RSS, MiB", "peak_rss_mib"),
            ("CPU seconds", "cpu_s"), ("load average before, after", "load_average_before_after"),
            ("s/step steady, min and max", "s_per_step_steady_min_max")]
    title = f"{results['shapes']} shapes, {results['resolution']} px"
    print(f"\n{title:34s} {'runner':>22s} {'upstream loop':>22s}")
    for label, key in rows:
        print(f"{label:34s} {str(runner[key]):>22s} {str(upstream[key]):>22s}")
    print(f"\nmatmul peak on {results['threads']} threads: {results['matmul_peak_gflop_per_s']} GFLOP/s")
    for key in ("speedup_steady", "speedup_end_to_end", "speedup_cpu_s", f"speedup_{SEED_EPOCHS}_epochs_projected",
                "infer_s_runner", "infer_s_plain_pipeline", "infer_time_ratio_runner_over_plain"):
        print(f"{key:40s} {results.get(key, 'not measured')}")
    print("\nloss per step (same seed): step, runner, upstream loop")
    for step, (ours, theirs) in enumerate(zip(runner["losses"], upstream["losses"]), start=1):
        print(f"  {step:4d} {ours:10.5f} {theirs:10.5f}")
    print(f"\nceiling at {SEED_RESOLUTION} px (steps/s = peak FLOP/s / FLOPs per step, batch 1, full use):")
    for name, row in results["ceiling_512px"].items():
        print(f"  {name:14s} {row['tflop_per_step']:.2f} TFLOP/step: "
              + ", ".join(f"{precision} {row[f'steps_per_s_{precision}']:.2f} steps/s" for precision in CHIP_PEAKS))


def write_results(path: Path, results: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def main(args: argparse.Namespace) -> int:
    import bench_runners  # the inference helpers; imported here because bench_runners imports this module

    torch.set_num_threads(args.threads)
    args.fixtures = args.fixtures or REPO / "build" / f"fixtures-{args.shapes}"
    fixtures = build_fixtures(args)
    peak = matmul_peak_flops()
    flops = flop_table(args.resolution, make_tiny_fixtures.SHAPES[args.shapes])
    # On paper, always for the real model at the tutorial's 512 px, whatever was trained here.
    ceiling = {name: {"tflop_per_step": parts["step"] / 1e12,
                      **{f"steps_per_s_{precision}": ceiling_steps_per_s(parts["step"], chip_peak)
                         for precision, chip_peak in CHIP_PEAKS.items()}}
               for name, parts in flop_table(SEED_RESOLUTION).items()}

    results: Dict[str, Any] = {"shapes": args.shapes, "resolution": args.resolution,
                               "images": args.images, "epochs": args.epochs, "threads": args.threads,
                               "torch": torch.__version__, "matmul_peak_gflop_per_s": round(peak / 1e9, 1)}
    # Kept after the run (logs, metrics, the LoRA weights); the next run replaces it.
    work = args.out.with_suffix("")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Inference first: shorter, and a failure there does not cost the long training runs.
    # Alternated, so that a burst of load from others on a shared machine falls on both sides alike.
    plain_s, ours_s = [], []
    for _ in range(args.repeats if args.infer_steps else 0):
        plain_s.append(bench_runners.plain_pipeline_seconds(fixtures["model"], "cpu", args.infer_steps,
                                                            args.resolution))
        ours_s.append(bench_runners.runner_seconds(fixtures["model"], work / "images", "cpu", args.infer_steps,
                                                   args.resolution))
    if plain_s:
        plain, ours = statistics.median(plain_s), statistics.median(ours_s)
        results.update(infer_s_runner=round(ours, 2), infer_s_plain_pipeline=round(plain, 2),
                       infer_time_ratio_runner_over_plain=round(ours / plain, 3),
                       infer_s_each={"runner": [round(t, 2) for t in ours_s], "plain": [round(t, 2) for t in plain_s]})
    write_results(args.out, results)
    for name, cached in (("runner", True), ("upstream_loop", False)):
        summary = summarise(run_loop(fixtures, work / name, args, cached))
        achieved = flops[name]["step"] / summary["s_per_step_steady"]
        summary.update(gflop_per_step=round(flops[name]["step"] / 1e9, 3), flops_parts=flops[name],
                       achieved_gflop_per_s=round(achieved / 1e9, 1), fraction_of_peak=round(achieved / peak, 3))
        summary["s_per_step_steady"] = round(summary["s_per_step_steady"], 3)
        results[name] = summary
        write_results(args.out, results)  # partial results survive a failure in the next, long, part
    # The peak again after the long runs: on a shared machine it varies; the better of the two counts.
    peak = max(peak, matmul_peak_flops())
    results["matmul_peak_gflop_per_s"] = round(peak / 1e9, 1)
    for name in ("runner", "upstream_loop"):
        achieved = flops[name]["step"] / results[name]["s_per_step_steady"]
        results[name].update(achieved_gflop_per_s=round(achieved / 1e9, 1), fraction_of_peak=round(achieved / peak, 3))
    runner, upstream = results["runner"], results["upstream_loop"]
    key = f"projected_{SEED_EPOCHS}_epochs_s"
    results.update(
        speedup_steady=round(upstream["s_per_step_steady"] / runner["s_per_step_steady"], 3),
        speedup_end_to_end=round(upstream["end_to_end_s"] / runner["end_to_end_s"], 3),
        # CPU seconds are the work itself; wall time also holds the time others had the cores.
        speedup_cpu_s=round(upstream["cpu_s"] / runner["cpu_s"], 3),
        **{f"speedup_{SEED_EPOCHS}_epochs_projected": round(upstream[key] / runner[key], 3)},
        loss_max_abs_difference=max((abs(a - b) for a, b in zip(runner["losses"], upstream["losses"])), default=0.0),
    )
    results["ceiling_512px"] = ceiling
    print_table(results)
    write_results(args.out, results)
    print(f"written to {args.out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only --size sd14 reads (bench_runners.py owns the parser)."""
    group = parser.add_argument_group("--size sd14")
    group.add_argument("--resolution", type=int, default=256,
                       help="training and inference size in pixels (default 256: what 2 CPU cores afford)")
    group.add_argument("--images", type=int, default=4, help="images trained on (default 4)")
    group.add_argument("--epochs", type=int, default=4,
                       help="epochs per loop (default 4: epoch 0 fills the cache, from epoch 2 it is warm)")
    group.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                       help="torch threads for both loops and the matmul peak (default: all cores)")
    group.add_argument("--infer_steps", type=int, default=20,
                       help="denoising steps of each inference (default 20; 0 skips inference, for training repeats)")
    group.add_argument("--fixtures", type=Path, default=None,
                       help="cache folder of the fixtures, built once (default build/fixtures-SHAPES; "
                            "sd14: about 4 GB)")
    group.add_argument("--shapes", choices=sorted(make_tiny_fixtures.SHAPES), default="sd14",
                       help="model shapes (default sd14); tiny rehearses this whole benchmark in seconds")


if __name__ == "__main__":
    # The FLOP table alone, cheap on meta tensors: python tests/bench/bench_sd14.py [RESOLUTION]
    print(json.dumps(flop_table(int(sys.argv[1]) if len(sys.argv) > 1 else SEED_RESOLUTION), indent=2))
