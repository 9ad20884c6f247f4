"""Aspect-ratio buckets at SD v1.4's size: non-square photos and square images, runner against the upstream loop.

`make bench SIZE=sd14 DATASET=photos` (a script that prints numbers, never a test). The upstream loop is
the runner's `--no_cache` (VAE and text encoder on every step, v0.20.0's LoRAAttnProcessor, upstream's
random crop), as in bench_sd14.py. Each run is its own process with the tutorial's fp32 flags
(`--random_flip`, batch 1, seed 42) on SD v1.4's shapes with random weights (build/fixtures-sd14/):

- photos: images 144 px wide and 160-208 px tall, like phone pictures scaled down: the upstream loop
  (random crop) against the runner with `--buckets` (and, with `--also-default`, the runner with its
  default random crop, whose cache almost never hits on such images);
- square: 512 px images (the tutorial's pokemon shape), upstream loop against the runner's defaults.

The two sides of each pair run back to back, pair after pair, so that load from others on a shared
machine falls on both alike; the 1-minute load average and `nproc` are printed with the ratios. It
prints the speed-up end to end and per step (median from epoch 2, when the cache is warm), CPU
seconds, peak RSS, the latent cache's size on disk, and the loss curves side by side with how far
they are apart (with buckets the images differ from upstream's crops, so the curves do too).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sd14  # noqa: E402

REPO = bench_sd14.REPO
PHOTO_WIDTH = 144
PHOTO_HEIGHTS = (160, 176, 192, 208)  # cycled over the images


def build_photos(folder: Path, images: int, seed: int = 0) -> Path:
    """A parquet like pokemon-blip-captions of non-square images (PHOTO_WIDTH x PHOTO_HEIGHTS), built once."""
    import datasets

    path = folder / f"photos-{images}.parquet"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cells, captions = [], []
    for i in range(images):
        height = PHOTO_HEIGHTS[i % len(PHOTO_HEIGHTS)]
        pixels = rng.integers(0, 256, size=(height, PHOTO_WIDTH, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
        captions.append(f"a photo of thing number {i}")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    partial = path.with_suffix(".partial")
    datasets.Dataset.from_dict({"image": cells, "text": captions}, features=features).to_parquet(str(partial))
    partial.rename(path)
    return path


def loss_comparison(ours: List[float], theirs: List[float]) -> Dict[str, float]:
    """How far two loss curves are apart: mean of each, largest and mean absolute step-wise difference."""
    pairs = list(zip(ours, theirs))
    return {"mean_runner": round(statistics.mean(ours), 5), "mean_upstream_loop": round(statistics.mean(theirs), 5),
            "max_abs_difference": round(max(abs(a - b) for a, b in pairs), 5),
            "mean_abs_difference": round(statistics.mean(abs(a - b) for a, b in pairs), 5)}


def compare(name: str, fixtures: Dict[str, Path], work: Path, args: argparse.Namespace,
            runner_flags: Tuple[str, ...]) -> Dict[str, Any]:
    """Upstream loop then runner on the same data; the ratios upstream / runner (above 1: the runner is faster)."""
    upstream = bench_sd14.summarise(bench_sd14.run_loop(fixtures, work / f"{name}-upstream", args, cached=False))
    run = bench_sd14.run_loop(fixtures, work / f"{name}-runner", args, cached=True, extra=runner_flags)
    runner = bench_sd14.summarise(run)
    cache = json.loads((work / f"{name}-runner" / "run.json").read_text()).get("latent_cache") or {}
    return {
        "runner_flags": list(runner_flags), "runner": runner, "upstream_loop": upstream,
        "speedup_end_to_end": round(upstream["end_to_end_s"] / runner["end_to_end_s"], 3),
        "speedup_steady_per_step": round(upstream["s_per_step_steady"] / runner["s_per_step_steady"], 3),
        "speedup_cpu_s": round(upstream["cpu_s"] / runner["cpu_s"], 3),
        "latent_cache": {k: cache.get(k) for k in ("entries", "bytes", "encoded", "hits_ram", "hits_disk")},
        "losses": loss_comparison(runner["losses"], upstream["losses"]),
    }


def print_pair(name: str, result: Dict[str, Any]) -> None:
    runner, upstream = result["runner"], result["upstream_loop"]
    print(f"\n{name}: runner {' '.join(result['runner_flags']) or '(defaults)'} against the upstream loop")
    for label, key in (("end to end, s", "end_to_end_s"), ("s/step from epoch 2, median", "s_per_step_steady"),
                       ("CPU seconds", "cpu_s"), ("peak RSS, MiB", "peak_rss_mib"),
                       ("load average before, after", "load_average_before_after")):
        ours, theirs = (round(v, 3) if isinstance(v, float) else v for v in (runner[key], upstream[key]))
        print(f"  {label:32s} {str(ours):>16s} {str(theirs):>16s}")
    print(f"  speed-up end to end x{result['speedup_end_to_end']}, per step x{result['speedup_steady_per_step']}, "
          f"CPU seconds x{result['speedup_cpu_s']}")
    print(f"  latent cache: {result['latent_cache']}")
    print(f"  loss curves: {result['losses']}")
    print("  step   runner   upstream loop")
    for step, (ours, theirs) in enumerate(zip(runner["losses"], upstream["losses"]), start=1):
        print(f"  {step:4d} {ours:9.5f} {theirs:9.5f}")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sd14.add_arguments(parser)
    parser.add_argument("--datasets", nargs="+", choices=["photos", "square"], default=["photos", "square"],
                        help="which comparisons to run, in this order (default both)")
    parser.add_argument("--also-default", action="store_true",
                        help="photos: also the runner with its default random crop (a third run)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-photos.json", help="where the JSON goes")
    parser.set_defaults(epochs=10)  # the tutorial's --num_train_epochs, rather than bench_sd14's 4
    args = parser.parse_args(argv)
    args.fixtures = args.fixtures or REPO / "build" / f"fixtures-{args.shapes}"
    fixtures = bench_sd14.build_fixtures(args)  # the model, and 512 px square images
    photos = dict(fixtures, parquet=build_photos(REPO / "build" / "fixtures-photos", max(args.images, 4)))
    work = args.out.with_suffix("")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: Dict[str, Any] = {"shapes": args.shapes, "resolution": args.resolution, "images": args.images,
                               "epochs": args.epochs, "threads": args.threads, "nproc": os.cpu_count(),
                               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    for name in args.datasets:
        if name == "photos":
            results["photos_buckets"] = compare("photos-buckets", photos, work, args, ("--buckets",))
            if args.also_default:
                results["photos_default"] = compare("photos-default", photos, work, args, ())
        else:
            results["square_default"] = compare("square", fixtures, work, args, ())
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive a later failure
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{results['shapes']} shapes, {args.resolution} px, {args.images} images x {args.epochs} epochs, "
          f"nproc {results['nproc']}, load average {results['load_average_at_start']} -> "
          f"{results['load_average_at_end']}")
    for key in ("photos_buckets", "photos_default", "square_default"):
        if key in results:
            print_pair(key, results[key])
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
