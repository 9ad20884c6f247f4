"""Memory against dataset size (`make bench-data-scale`; a script that prints numbers, not a test).

Trains a few steps of the tiny model on synthetic datasets of 1k, 10k and 100k small images (64 px,
one flat colour each: distinct images whose PNGs are about a hundred bytes, so that building 100k
takes seconds) and prints, for each size, the training process's peak RSS, its latent cache on disk
(bytes, entries) and its wall time. Each run is its own process (peak RSS is per process, from
wait4). The aim: peak RSS at 100k images within x1.2 of that at 1k, as nothing the runner keeps in
RAM may grow with the dataset (columns are read a chunk at a time, latents and caption embeddings
sit in byte-bounded LRUs, the rest is on disk or memory-mapped).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[2]
RUNNERS = REPO / "runners"
sys.path.insert(0, str(RUNNERS))


def build_dataset(path: Path, rows: int) -> Path:
    """A pokemon-blip-captions-like parquet of ``rows`` distinct 64 px flat-colour PNGs; built once."""
    import datasets
    from PIL import Image

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    def cells():
        for i in range(rows):
            colour = (i % 256, (i // 256) % 256, (i // 65536) % 256)
            buffer = io.BytesIO()
            Image.new("RGB", (64, 48 + 16 * (i % 3)), colour).save(buffer, format="PNG")
            yield {"image": {"bytes": buffer.getvalue(), "path": None}, "text": f"a flat colour number {i}"}

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    partial = path.with_suffix(".partial")
    datasets.Dataset.from_generator(cells, features=features, cache_dir=str(path.parent / "hf-cache")
                                    ).to_parquet(str(partial))
    partial.rename(path)
    return path


def train(model: Path, dataset: Path, out: Path, args: argparse.Namespace) -> Dict[str, Any]:
    argv = [sys.executable, str(RUNNERS / "train_lora.py"), "--pretrained_model_name_or_path", str(model),
            "--dataset_name", str(dataset), "--cache_dir", str(out.parent / "hf-cache"),
            "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
            "--max_train_steps", str(args.steps), "--checkpointing_steps", "100000", "--lr_warmup_steps", "0",
            "--seed", "42", "--report_to", "none", "--device", "cpu", "--output_dir", str(out),
            *args.train_args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    started = time.perf_counter()
    with out.with_suffix(".log").open("w") as handle:
        proc = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training on {dataset} failed; see {out.with_suffix('.log')}")
    cache = json.loads((out / "run.json").read_text())["latent_cache"]
    return {"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(time.perf_counter() - started, 1),
            "cache_bytes": cache["bytes"], "cache_entries": cache["entries"]}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000],
                        help="dataset sizes in images (default 1k, 10k, 100k)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per size (default 20)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--resolution", type=int, default=32, help="training size in pixels (default 32)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "data-scale",
                        help="datasets (kept and reused) and runs (replaced) go here")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-data-scale.json", help="JSON results")
    parser.add_argument("train_args", nargs="*", help="more train_lora.py flags after --, e.g. -- --buckets")
    args = parser.parse_args(argv)

    import shutil

    import make_tiny_fixtures

    model = args.work / "tiny-sd"
    if not (model / "model_index.json").is_file():
        make_tiny_fixtures.build_tiny_pipeline(model)
    results: Dict[str, Any] = {"steps": args.steps, "batch": args.batch, "resolution": args.resolution,
                               "train_args": args.train_args, "sizes": {}}
    for rows in args.sizes:
        started = time.perf_counter()
        dataset = build_dataset(args.work / f"rows-{rows}.parquet", rows)
        built = time.perf_counter() - started
        out = args.work / f"run-{rows}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(args.work / "hf-cache", ignore_errors=True)
        result = train(model, dataset, out, args)
        result["dataset_build_s"] = round(built, 1)
        result["dataset_bytes"] = dataset.stat().st_size
        results["sizes"][str(rows)] = result
        print(f"{rows:>7d} images: peak RSS {result['peak_rss_mib']:8.1f} MiB, latent cache "
              f"{result['cache_bytes']:>8d} bytes in {result['cache_entries']} entries, train {result['wall_s']} s, "
              f"parquet {result['dataset_bytes']} bytes", flush=True)
    first, last = (results["sizes"][str(n)]["peak_rss_mib"] for n in (args.sizes[0], args.sizes[-1]))
    results["peak_rss_ratio_largest_over_smallest"] = round(last / first, 3)
    print(f"peak RSS at {args.sizes[-1]} images over {args.sizes[0]}: x{results['peak_rss_ratio_largest_over_smallest']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
