"""Aspect-ratio buckets at SD v1.4's size: the runner against the REAL upstream script, non-square photos and square images.

`make bench SIZE=sd14 DATASET=photos UPSTREAM=<diffusers v0.20.0 checkout>` (a script that prints numbers,
never a test). The upstream side is diffusers v0.20.0's examples/text_to_image/train_text_to_image_lora.py,
byte for byte (its sha256 is checked; the PyPI sdist has no examples/, so it comes from a git checkout of
the tag), run as its own process by .venv-ml's python, with the tutorial's fp32 flags (seed; `--random_flip`,
batch 1, seed 42) except the paths, resolution, epochs and output folder. Its torchvision (which .venv-ml
lacks) comes from build/bench-upstream-site on that process's PYTHONPATH only (pinned with its hash in
tests/bench/upstream-requirements.txt), and tests/bench/upstream_hook/sitecustomize.py records its loss
and time per step without editing it. Both sides train on SD v1.4's shapes with random weights
(build/fixtures-sd14/):

- photos: images 144 px wide and 160-208 px tall, like phone pictures scaled down: the upstream script
  (random crop) against the runner with `--buckets` (and, with `--also-default`, the runner with its
  default random crop, whose cache almost never hits on such images);
- square: 512 px images (the tutorial's pokemon shape), the upstream script against the runner's defaults.

The two sides of each pair run back to back, pair after pair, so that load from others on a shared
machine falls on both alike; the 1-minute load average and `nproc` are printed with the ratios. It
prints the speed-up end to end (process start to the saved LoRA) and per step (median from epoch 2,
when the runner's cache is warm), CPU seconds, peak RSS, the latent cache's size on disk, and the loss
curves side by side with how far they are apart (the two sides draw different noise and, with
buckets, see different pixels, so the curves differ by more than rounding).
"""

from __future__ import annotations

import argparse
import hashlib
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
UPSTREAM_SCRIPT = Path("examples/text_to_image/train_text_to_image_lora.py")  # in a diffusers checkout
# sha256 of that file at diffusers' tag v0.20.0 (commit e3380c02cf), the version the tutorial pins.
UPSTREAM_SHA256 = "ad7c3b653b2346558e448b08a717e646a54d578b8c710eac7075c5ecf3a32200"
UPSTREAM_HOOK = Path(__file__).resolve().parent / "upstream_hook"
UPSTREAM_SITE = REPO / "build" / "bench-upstream-site"
UPSTREAM_REQUIREMENTS = Path(__file__).resolve().parent / "upstream-requirements.txt"


def upstream_script(path: Path) -> Path:
    """The v0.20.0 script at ``path`` (the file, or a diffusers checkout holding it); SystemExit for anything else."""
    script = path / UPSTREAM_SCRIPT if path.is_dir() else path
    if not script.is_file():
        raise SystemExit(f"--upstream-script {path}: no such file. Give diffusers v0.20.0's {UPSTREAM_SCRIPT} "
                         "or the checkout holding it (git clone the diffusers repository, git checkout v0.20.0).")
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    if digest != UPSTREAM_SHA256:
        raise SystemExit(f"--upstream-script {script}: sha256 {digest} is not that of diffusers v0.20.0's "
                         f"{UPSTREAM_SCRIPT.name} ({UPSTREAM_SHA256}). The comparison is against the unmodified "
                         "script the tutorial uses: check out the tag v0.20.0 and leave the file as it is.")
    return script


def upstream_site(site: Path) -> Path:
    """The folder with torchvision for the upstream process; SystemExit saying how to fill it when it has none."""
    if not (site / "torchvision" / "__init__.py").is_file():
        raise SystemExit(f"{site} has no torchvision, which the upstream script imports. Install it there (not into "
                         f".venv-ml): pip install --no-deps --require-hashes --target {site} "
                         f"-r {UPSTREAM_REQUIREMENTS.relative_to(REPO)}  (make bench SIZE=sd14 DATASET=photos does).")
    return site


def upstream_argv(script: Path, model: Path, dataset: Path, args: argparse.Namespace, out: Path) -> List[str]:
    """The upstream command line: the tutorial's flags as the runner gets them, minus the runner's own."""
    return [sys.executable, str(script)] + bench_sd14.tutorial_flags(model, dataset, args.resolution, args.epochs,
                                                                    args.images, out)


def upstream_env(metrics: Path, site: Path, threads: int, cache: Path) -> Dict[str, str]:
    """The upstream process's environment: the hook and torchvision on its PYTHONPATH, and nothing else changed."""
    path = [str(UPSTREAM_HOOK), str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), SDKIT_UPSTREAM_METRICS=str(metrics),
                OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                HF_DATASETS_CACHE=str(cache))  # its dataset cache in the run's folder, not the user's home


def upstream_metrics(rows: List[Dict[str, Any]], steps_per_epoch: int) -> List[Dict[str, Any]]:
    """The hook's lines as the runner's metrics.jsonl rows: step, epoch (from 0), loss, step_time_s."""
    steps = [row for row in rows if "step" in row]
    if not steps or not any("saved" in row for row in rows):
        raise SystemExit("the upstream script logged no step or never saved its LoRA; see its log")
    previous, metrics = 0.0, []
    for row in steps:
        metrics.append({"step": row["step"], "epoch": (row["step"] - 1) // steps_per_epoch, "loss": row["loss"],
                        "step_time_s": round(row["time"] - previous, 6)})
        previous = row["time"]
    return metrics


def run_upstream(fixtures: Dict[str, Path], out: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """The upstream script on ``fixtures`` in its own process; the same dict as bench_sd14.run_loop."""
    # load_dataset(folder) reads the folder's data files: a folder of this parquet alone, the train split.
    folder = out.with_name(out.name + "-data")
    folder.mkdir(parents=True)
    shutil.copyfile(fixtures["parquet"], folder / "train.parquet")
    metrics = out.with_name(out.name + "-steps.jsonl")
    env = upstream_env(metrics, args.upstream_site, args.threads, out.with_name(out.name + "-datasets-cache"))
    argv = upstream_argv(args.upstream_script, fixtures["model"], folder, args, out)
    run = bench_sd14.run_process(argv, env, out.with_suffix(".log"), "upstream v0.20.0 script")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    run["metrics"] = upstream_metrics(rows, args.images)  # batch 1: one step per image
    return run


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
    return {"mean_runner": round(statistics.mean(ours), 5), "mean_upstream": round(statistics.mean(theirs), 5),
            "max_abs_difference": round(max(abs(a - b) for a, b in pairs), 5),
            "mean_abs_difference": round(statistics.mean(abs(a - b) for a, b in pairs), 5)}


def compare(name: str, fixtures: Dict[str, Path], work: Path, args: argparse.Namespace,
            runner_flags: Tuple[str, ...]) -> Dict[str, Any]:
    """Upstream script then runner on the same data; the ratios upstream / runner (above 1: the runner is faster)."""
    upstream = bench_sd14.summarise(run_upstream(fixtures, work / f"{name}-upstream", args))
    run = bench_sd14.run_loop(fixtures, work / f"{name}-runner", args, cached=True, extra=runner_flags)
    runner = bench_sd14.summarise(run)
    cache = json.loads((work / f"{name}-runner" / "run.json").read_text()).get("latent_cache") or {}
    return {
        "runner_flags": list(runner_flags), "runner": runner, "upstream": upstream,
        "speedup_end_to_end": round(upstream["end_to_end_s"] / runner["end_to_end_s"], 3),
        "speedup_steady_per_step": round(upstream["s_per_step_steady"] / runner["s_per_step_steady"], 3),
        "speedup_cpu_s": round(upstream["cpu_s"] / runner["cpu_s"], 3),
        "latent_cache": {k: cache.get(k) for k in ("entries", "bytes", "encoded", "hits_ram", "hits_disk")},
        "losses": loss_comparison(runner["losses"], upstream["losses"]),
    }


def print_pair(name: str, result: Dict[str, Any]) -> None:
    runner, upstream = result["runner"], result["upstream"]
    print(f"\n{name}: runner {' '.join(result['runner_flags']) or '(defaults)'} against the upstream v0.20.0 script")
    print(f"  {'':32s} {'runner':>16s} {'upstream':>16s}")
    for label, key in (("end to end, s", "end_to_end_s"), ("s/step from epoch 2, median", "s_per_step_steady"),
                       ("CPU seconds", "cpu_s"), ("peak RSS, MiB", "peak_rss_mib"),
                       ("load average before, after", "load_average_before_after")):
        ours, theirs = (round(v, 3) if isinstance(v, float) else v for v in (runner[key], upstream[key]))
        print(f"  {label:32s} {str(ours):>16s} {str(theirs):>16s}")
    print(f"  speed-up end to end x{result['speedup_end_to_end']}, per step x{result['speedup_steady_per_step']}, "
          f"CPU seconds x{result['speedup_cpu_s']}")
    print(f"  latent cache: {result['latent_cache']}")
    print(f"  loss curves: {result['losses']}")
    print("  step    runner  upstream")
    for step, (ours, theirs) in enumerate(zip(runner["losses"], upstream["losses"]), start=1):
        print(f"  {step:4d} {ours:9.5f} {theirs:9.5f}")


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sd14.add_arguments(parser)
    parser.add_argument("--upstream-script", type=Path, required=True,
                        help="diffusers v0.20.0's examples/text_to_image/train_text_to_image_lora.py, or the "
                             "checkout holding it: the unmodified upstream side (its sha256 is checked)")
    parser.add_argument("--upstream-site", type=Path, default=UPSTREAM_SITE,
                        help="folder with torchvision for the upstream process only (default "
                             "build/bench-upstream-site; see tests/bench/upstream-requirements.txt)")
    parser.add_argument("--datasets", nargs="+", choices=["photos", "square"], default=["photos", "square"],
                        help="which comparisons to run, in this order (default both)")
    parser.add_argument("--also-default", action="store_true",
                        help="photos: also the runner with its default random crop (a third run)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-photos.json", help="where the JSON goes")
    parser.set_defaults(epochs=10)  # the tutorial's --num_train_epochs, rather than bench_sd14's 4
    args = parser.parse_args(argv)
    # Both refusals before the fixtures, which take minutes the first time.
    args.upstream_script = upstream_script(args.upstream_script)
    args.upstream_site = upstream_site(args.upstream_site)
    args.fixtures = args.fixtures or REPO / "build" / f"fixtures-{args.shapes}"
    fixtures = bench_sd14.build_fixtures(args)  # the model, and 512 px square images
    photos = dict(fixtures, parquet=build_photos(REPO / "build" / "fixtures-photos", max(args.images, 4)))
    work = args.out.with_suffix("")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: Dict[str, Any] = {"shapes": args.shapes, "resolution": args.resolution, "images": args.images,
                               "epochs": args.epochs, "threads": args.threads, "nproc": os.cpu_count(),
                               "upstream": f"diffusers v0.20.0 {UPSTREAM_SCRIPT} (sha256 {UPSTREAM_SHA256})",
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
