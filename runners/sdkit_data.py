"""Dataset loading and image preprocessing for the LoRA trainer, without torchvision.

torchvision cannot be installed beside the CPU torch builds the kit deploys (and Sophgo's
torch_tpu pins its own torch), so resize / crop / flip / normalise are done with PIL and
torch. The resize goes through PIL's bilinear filter, which is what torchvision's Resize
does for PIL images too, so the pixels match upstream's pipeline.

Randomness (crop offset, flip) comes from a generator seeded by (seed, epoch, row): the
same row in the same epoch always gets the same augmentation, which is what lets a
resumed run repeat an uninterrupted one exactly.

A dataset that ships a loading script (``<name>.py``) is Python that datasets would import, as the
runner user; datasets 2.14 does so without asking. Such a dataset is refused unless the operator
passes ``--allow_dataset_script``. Local parquet files, image folders and save_to_disk folders are
read as data only.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from sdkit_env import RunnerError, assets_root, hub_error, resolve_source

logger = logging.getLogger("sdkit")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ALLOW_SCRIPT_FLAG = "--allow_dataset_script"
# Where datasets keeps the builders it ships (parquet, imagefolder, ...): data readers, no hub code.
PACKAGED_MODULES = "datasets.packaged_modules."


def _load_local(path: Path, cache_dir: Optional[str]):
    """Load a local parquet file/folder, an imagefolder or a save_to_disk folder as one split."""
    try:
        return _load_local_split(path, cache_dir)
    except ValueError as exc:  # datasets 2.19 refuses an empty split, where 2.14 returned one without rows
        if "corresponds to no data" not in str(exc):
            raise
        raise RunnerError(f"the dataset '{path}' has no rows") from None


def _load_local_split(path: Path, cache_dir: Optional[str]):
    import datasets

    if path.is_file():
        if path.suffix != ".parquet":
            raise RunnerError(f"dataset file '{path}' is not a parquet file")
        return datasets.load_dataset("parquet", data_files=[str(path)], cache_dir=cache_dir, split="train")
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    parquet_files = sorted(str(p) for p in path.rglob("*.parquet"))
    if parquet_files:
        # The hub copy of pokemon-blip-captions is data/train-*.parquet: every parquet file is training data.
        return datasets.load_dataset("parquet", data_files=parquet_files, cache_dir=cache_dir, split="train")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
        return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir, split="train")
    raise RunnerError(
        f"dataset folder '{path}' holds neither parquet files nor images; expected the pokemon-blip-captions "
        "parquet (columns image, text) or an imagefolder with metadata.jsonl"
    )


def local_script(path: Path) -> Optional[Path]:
    """The loading script of a local dataset, where datasets would look for one: the path itself when it
    is a .py file, else <folder>/<folder>.py."""
    if path.is_file():
        return path if path.suffix == ".py" else None
    script = path / f"{path.name}.py"
    return script if script.is_file() else None


def script_refused(dataset_name: str, script: str) -> RunnerError:
    return RunnerError(f"dataset '{dataset_name}' ships a loading script ({script}): Python that would run as this "
                       f"user. Use a parquet or image-folder copy of it, or pass {ALLOW_SCRIPT_FLAG} if you trust "
                       "where it came from")


def trust_kwargs(function, allow_script: bool) -> Dict[str, bool]:
    """datasets >= 2.16 asks before it runs a script (trust_remote_code); 2.14 has no such argument."""
    return {"trust_remote_code": allow_script} if "trust_remote_code" in inspect.signature(function).parameters else {}


def hub_script(source: str, cache_dir: Optional[str]) -> Optional[str]:
    """The module a hub (or hub cache) dataset resolves to, when it is a loading script rather than one of
    datasets' own readers. Resolving copies the script into the modules cache; nothing imports it."""
    from datasets.load import dataset_module_factory

    cache = {"cache_dir": cache_dir} if cache_dir else {}
    # Trusted here only so that 2.16+ resolves the module instead of refusing: it is refused below.
    module = dataset_module_factory(source, **cache, **trust_kwargs(dataset_module_factory, True))
    return None if module.module_path.startswith(PACKAGED_MODULES) else module.module_path


def load_train_split(dataset_name: Optional[str], train_data_dir: Optional[str], dataset_config_name: Optional[str] = None,
                     cache_dir: Optional[str] = None, assets: Optional[Path] = None, allow_script: bool = False):
    """Return the training split as a ``datasets.Dataset``.

    ``--dataset_name`` may be a hub name (mapped to the download share when SOPHON_SD_ASSETS
    is set), a local parquet file or folder; ``--train_data_dir`` is an imagefolder. One that ships
    a loading script only with ``allow_script``.
    """
    import datasets

    if dataset_name is None and train_data_dir is None:
        raise RunnerError("give --dataset_name (hub name or local parquet) or --train_data_dir (image folder)")
    if dataset_name is not None:
        source = resolve_source(dataset_name, assets)
        if os.path.exists(source):
            script = local_script(Path(source))
            if script is None:
                return _load_local(Path(source), cache_dir)
            if not allow_script:
                raise script_refused(dataset_name, str(script))
        try:
            script = None if allow_script else hub_script(source, cache_dir)
        except Exception as exc:  # hub unreachable, dataset removed (pokemon was taken down in 2024), typo
            raise hub_error("dataset", dataset_name, exc) from None
        if script:
            raise script_refused(dataset_name, script)
        try:
            loaded = datasets.load_dataset(source, dataset_config_name, cache_dir=cache_dir, data_dir=train_data_dir,
                                           **trust_kwargs(datasets.load_dataset, allow_script))
        except Exception as exc:
            raise hub_error("dataset", dataset_name, exc) from None
        return loaded["train"]
    folder = Path(train_data_dir)
    if not folder.is_dir():
        raise RunnerError(f"--train_data_dir '{folder}' does not exist")
    return _load_local(folder, cache_dir)


def check_columns(dataset, image_column: str, caption_column: str) -> None:
    """Fail early, listing the columns found, instead of a KeyError deep inside the data loader."""
    found = dataset.column_names
    for flag, column in (("--image_column", image_column), ("--caption_column", caption_column)):
        if column not in found:
            raise RunnerError(f"{flag} '{column}' is not a column of the dataset; columns found: {', '.join(found)}")


def undecoded(dataset, image_column: str):
    """Ask datasets for raw {"bytes", "path"} so that we decode, and can name the row that fails."""
    import datasets

    feature = dataset.features.get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def describe_row(value: Any, row: int) -> str:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return f"row {row}" + (f" ('{path}')" if path else "")


def read_image(value: Any, row: int) -> Tuple[Image.Image, str]:
    """Decode one image cell ({"bytes", "path"}, a file path, raw bytes, or an already decoded image) and
    return it with its content hash, which keys the latent cache.

    The hash is the sha256 of the encoded file's bytes where there are bytes (the runner asks datasets for
    them, see undecoded), and of the decoded pixels (mode, size, RGB bytes) for a cell that is already an
    image: either way a changed image gets another hash, so never a stale latent.
    """
    try:
        if isinstance(value, Image.Image):
            image = value.convert("RGB")
            digest = hashlib.sha256(f"pixels:{image.mode}:{image.size}:".encode() + image.tobytes())
            return image, digest.hexdigest()
        if isinstance(value, dict) and value.get("bytes"):
            data = value["bytes"]
        elif isinstance(value, dict) and value.get("path"):
            data = Path(value["path"]).read_bytes()
        elif isinstance(value, str):
            data = Path(value).read_bytes()
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        else:
            raise ValueError(f"unsupported image cell of type {type(value).__name__}")
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return image, hashlib.sha256(b"bytes:" + data).hexdigest()
    except Exception as exc:
        raise RunnerError(f"cannot read the image of {describe_row(value, row)}: {exc}") from None


def open_image(value: Any, row: int) -> Image.Image:
    return read_image(value, row)[0]


def image_size(value: Any, row: int) -> Tuple[int, int]:
    """(width, height) of an image cell from its header, without decoding the pixels."""
    try:
        if isinstance(value, Image.Image):
            return value.size
        if isinstance(value, dict) and value.get("bytes"):
            source: Any = io.BytesIO(value["bytes"])
        elif isinstance(value, dict) and value.get("path"):
            source = value["path"]
        elif isinstance(value, (bytes, bytearray)):
            source = io.BytesIO(value)
        else:
            source = value
        with Image.open(source) as image:
            return image.size
    except Exception as exc:
        raise RunnerError(f"cannot read the image of {describe_row(value, row)}: {exc}") from None


def column_chunks(dataset, column: str, chunk: int = 1000) -> Iterator[Tuple[int, Any]]:
    """(row, value) of one column, read a chunk at a time: ``dataset[column]`` would hold the whole column
    (every image's bytes) in memory at once, which grows with the dataset."""
    for start in range(0, len(dataset), chunk):
        values = dataset[start:start + chunk][column]
        yield from enumerate(values, start=start)


def verify_images(dataset, image_column: str) -> None:
    """Open every image once before training, so a broken file stops the run at minute 0, not hour 3."""
    for row, value in column_chunks(dataset, image_column):
        open_image(value, row)


# ------------------------------------------------------------------ aspect-ratio buckets


def bucket_step(resolution: int) -> int:
    """Bucket sides are multiples of 64 (8 latents of SD's VAE); below 128 px (the tests' tiny model), of
    resolution / 4 rounded down to 8, so that there are buckets at all."""
    return 64 if resolution >= 128 else max(8, resolution // 4 // 8 * 8)


def bucket_sizes(resolution: int) -> List[Tuple[int, int]]:
    """Candidate (width, height): multiples of the step, area at most resolution², each side at least
    resolution / 2 (so at most 4:1), the largest height for each width, as kohya-ss's sd-scripts does."""
    step = bucket_step(resolution)
    area = resolution * resolution
    sizes = set()
    for width in range(step, 2 * resolution + 1, step):
        height = area // width // step * step
        if width >= resolution // 2 and height >= resolution // 2:
            sizes.add((width, height))
    return sorted(sizes)


def assign_bucket(width: int, height: int, sizes: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (compared in log space, so 2:1 and 1:2 are
    as far from 1:1), the larger one on a tie."""
    ratio = np.log(width / height)
    return min(sizes, key=lambda s: (abs(np.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def image_buckets(dataset, image_column: str, resolution: int) -> List[Tuple[int, int]]:
    """The bucket of every row, from the images' headers."""
    sizes = bucket_sizes(resolution)
    return [assign_bucket(*image_size(value, row), sizes) for row, value in column_chunks(dataset, image_column)]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB to a CHW float tensor in [-1, 1], as upstream's ToTensor + Normalize([0.5], [0.5])."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (torch.from_numpy(array).permute(2, 0, 1).contiguous() - 0.5) / 0.5


class TrainTransform:
    """Resize shorter side, crop to a square, optional flip, to [-1, 1]: upstream's transforms without torchvision."""

    def __init__(self, resolution: int, center_crop: bool, random_flip: bool):
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, image: Image.Image, rng: random.Random, row: int) -> Tuple[torch.Tensor, Tuple]:
        """Return the tensor and what was done to the image (mode, size, top, left, flipped), which with the
        image's content hash keys the latent cache."""
        size = self.resolution
        width, height = image.size
        # torchvision's Resize(int): shorter side to `size`, the other keeps the aspect ratio (truncated).
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        if self.center_crop:
            top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        else:
            top, left = rng.randint(0, new_h - size), rng.randint(0, new_w - size)
        image = image.crop((left, top, left + size, top + size))
        flipped = self.random_flip and rng.random() < 0.5
        if flipped:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image), ("crop", size, size, top, left, flipped)


class BucketTransform:
    """Resize to cover the row's bucket and crop the small remainder at the centre, optional flip.

    Nothing is cut away but the sliver between the image's aspect ratio and its bucket's (the bucket
    is the nearest ratio on a 64 px grid), the crop never moves, and so the only augmentation is the
    flip: each image has at most two latents, which the cache keeps whatever the aspect ratio.
    """

    def __init__(self, buckets: Sequence[Tuple[int, int]], random_flip: bool):
        self.buckets = buckets
        self.random_flip = random_flip

    def __call__(self, image: Image.Image, rng: random.Random, row: int) -> Tuple[torch.Tensor, Tuple]:
        target_w, target_h = self.buckets[row]
        width, height = image.size
        scale = max(target_w / width, target_h / height)
        new_w, new_h = max(target_w, round(width * scale)), max(target_h, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
        image = image.crop((left, top, left + target_w, top + target_h))
        flipped = self.random_flip and rng.random() < 0.5
        if flipped:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image), ("bucket", target_w, target_h, top, left, flipped)


class CaptionedImages(torch.utils.data.Dataset):
    """Rows of (image, caption) turned into model inputs, with per-(epoch, row) seeded augmentation."""

    def __init__(self, dataset, image_column: str, caption_column: str, tokenizer, transform: Any, seed: int):
        self.dataset = dataset
        self.image_column = image_column
        self.caption_column = caption_column
        self.tokenizer = tokenizer
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int) -> Dict[str, Any]:
        rng = random.Random(f"{self.seed}-{self.epoch}-{row}")
        record = self.dataset[row]
        image, content = read_image(record[self.image_column], row)
        pixels, augmentation = self.transform(image, rng, row)
        caption = record[self.caption_column]
        if isinstance(caption, (list, tuple, np.ndarray)):
            caption = rng.choice(list(caption))  # several captions per image: one at random, as upstream
        if not isinstance(caption, str):
            raise RunnerError(
                f"caption of row {row} in column '{self.caption_column}' is {type(caption).__name__}, "
                "expected a string or a list of strings"
            )
        input_ids = self.tokenizer(
            caption, max_length=self.tokenizer.model_max_length, padding="max_length", truncation=True,
            return_tensors="pt",
        ).input_ids[0]
        return {"pixel_values": pixels, "input_ids": input_ids, "key": (content,) + augmentation}


def collate(examples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
        "keys": [e["key"] for e in examples],
    }


class EpochShuffleSampler(torch.utils.data.Sampler):
    """Shuffle with a permutation fixed by (seed, epoch); optionally start some samples in.

    Upstream shuffles with the global RNG, so a resumed run sees a different order and
    replays the skipped batches through the whole loader. A seeded permutation plus
    ``skip`` gives the resumed run exactly the batches the interrupted one would have had,
    without decoding the skipped images.
    """

    def __init__(self, num_rows: int, seed: int):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: Optional[int] = None) -> None:
        """Without ``skip``, a skip already set for this same epoch is kept: accelerate 0.30's loader
        calls ``set_epoch(epoch)`` itself each time it starts iterating, after the trainer's call."""
        if skip is None:
            skip = self.skip if epoch == self.epoch else 0
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order: List[int] = torch.randperm(self.num_rows, generator=generator).tolist()
        return iter(order[self.skip:])

    def __len__(self) -> int:
        return self.num_rows - self.skip


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of rows of one bucket each (images of one size stack into one tensor), in an order fixed by
    (seed, epoch): each bucket's rows shuffled and cut into batches, then all batches shuffled together.

    The last batch of a bucket may be short, as upstream's last batch of an epoch is. ``skip`` counts
    batches, so a resumed run gets exactly the batches the interrupted one would have had.
    """

    def __init__(self, buckets: Sequence[Tuple[int, int]], batch_size: int, seed: int):
        self.seed = seed
        self.batch_size = batch_size
        self.epoch = 0
        self.skip = 0
        groups: Dict[Tuple[int, int], List[int]] = {}
        for row, bucket in enumerate(buckets):
            groups.setdefault(tuple(bucket), []).append(row)
        self.groups = [groups[key] for key in sorted(groups)]
        self.num_batches = sum(-(-len(rows) // batch_size) for rows in self.groups)

    def set_epoch(self, epoch: int, skip: Optional[int] = None) -> None:
        """As EpochShuffleSampler.set_epoch, with ``skip`` in batches."""
        if skip is None:
            skip = self.skip if epoch == self.epoch else 0
        self.epoch, self.skip = epoch, skip

    def batches(self) -> List[List[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = []
        for rows in self.groups:
            order = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches()[self.skip:])

    def __len__(self) -> int:
        return self.num_batches - self.skip


def check_captions(dataset, caption_column: str) -> None:
    """Every caption a string or a non-empty list of strings, checked before training starts.

    Otherwise the first batch that draws a bad row fails, which may be hours in (or, with
    --dataloader_num_workers, inside a worker with a traceback).
    """
    for row, caption in column_chunks(dataset, caption_column):
        if isinstance(caption, (list, tuple, np.ndarray)) and len(caption) and all(isinstance(c, str) for c in caption):
            continue
        if not isinstance(caption, str):
            raise RunnerError(f"caption of row {row} in column '{caption_column}' is {type(caption).__name__} "
                              f"({str(caption)[:40]!r}), expected a string or a list of strings")


def load_rows(args, seed: int):
    """The training rows described by the trainer's arguments, checked: columns, rows, captions, images."""
    assets = assets_root(getattr(args, "assets", None))
    dataset = load_train_split(args.dataset_name, args.train_data_dir, args.dataset_config_name, args.cache_dir, assets,
                               getattr(args, "allow_dataset_script", False))
    check_columns(dataset, args.image_column, args.caption_column)
    dataset = undecoded(dataset, args.image_column)
    if args.max_train_samples is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(args.max_train_samples, len(dataset))))
    if len(dataset) == 0:
        source = args.dataset_name or args.train_data_dir
        raise RunnerError(f"the dataset '{source}' has no rows" + (f" (--max_train_samples {args.max_train_samples})"
                                                                   if args.max_train_samples is not None else ""))
    check_captions(dataset, args.caption_column)
    verify_images(dataset, args.image_column)
    return dataset


def build_dataset(args, rows, tokenizer, seed: int) -> CaptionedImages:
    """Wrap the checked rows into model inputs with the trainer's preprocessing: upstream's square crop,
    or with ``--buckets`` each row resized into its aspect-ratio bucket."""
    if getattr(args, "buckets", False):
        transform: Any = BucketTransform(image_buckets(rows, args.image_column, args.resolution), args.random_flip)
    else:
        transform = TrainTransform(args.resolution, args.center_crop, args.random_flip)
    return CaptionedImages(rows, args.image_column, args.caption_column, tokenizer, transform, seed)
