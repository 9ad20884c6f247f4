"""Aspect-ratio buckets and the latent cache on disk (issue 25): bucket assignment, cache keys and
staleness, bounded RAM, and resumed or repeated runs that encode no image twice."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import sdkit_cache
import sdkit_data
from sdkit_env import RunnerError

from test_train_lora import assert_same_lora, base_argv


# --------------------------------------------------------------------------- buckets


@pytest.mark.parametrize("resolution", [256, 512])
def test_buckets_are_multiples_of_64_with_about_the_resolutions_area(resolution):
    sizes = sdkit_data.bucket_sizes(resolution)
    assert (resolution, resolution) in sizes
    for width, height in sizes:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= resolution ** 2
        assert min(width, height) >= resolution // 2
        # The largest height for the width: one step more would exceed the area.
        assert width * (height + 64) > resolution ** 2
    assert sizes == sorted(set(sizes))
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)


@pytest.mark.parametrize("size, bucket", [
    ((512, 512), (256, 256)),      # square: the square bucket, as upstream's crop
    ((144, 208), (192, 320)),      # the photos: portrait, ratio 0.69 -> 0.6 rather than 1
    ((144, 160), (256, 256)),      # nearly square -> square
    ((208, 144), (320, 192)),      # landscape mirrors portrait
    ((1000, 100), (512, 128)),     # beyond 4:1 -> the widest bucket
])
def test_each_image_goes_to_the_bucket_nearest_its_aspect_ratio(size, bucket):
    assert sdkit_data.assign_bucket(*size, sdkit_data.bucket_sizes(256)) == bucket


def png(width: int, height: int, value: int = 0) -> bytes:
    pixels = np.full((height, width, 3), value, dtype=np.uint8)
    pixels[:, : width // 2] = 255 - value  # left half differs, so that a flip shows
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bucket_transform_resizes_into_the_bucket_without_cropping_content():
    import random

    rows = [{"bytes": png(144, 208)}]
    buckets = sdkit_data.image_buckets(rows_dataset(rows), "image", 256)
    assert buckets == [(192, 320)]
    transform = sdkit_data.BucketTransform(buckets, random_flip=False)
    image, _ = sdkit_data.read_image(rows[0], 0)
    tensor, key = transform(image, random.Random(0), 0)
    assert tensor.shape == (3, 320, 192)
    mode, width, height, top, left, flipped = key
    assert (mode, width, height, flipped) == ("bucket", 192, 320, False)
    # Resized to cover 192x320 (222x320): only a 30 px sliver of the width is cropped, at the centre.
    assert top == 0 and left == (222 - 192) // 2
    assert float(tensor.min()) >= -1 and float(tensor.max()) <= 1


class rows_dataset(list):
    """Just enough of datasets.Dataset for the column readers: len() and dataset[a:b][column]."""

    def __getitem__(self, index):
        if isinstance(index, slice):
            return {"image": list.__getitem__(self, index)}
        return list.__getitem__(self, index)


def test_bucket_batches_hold_one_bucket_each_and_are_fixed_by_seed_and_epoch():
    buckets = [(256, 256)] * 5 + [(192, 320)] * 3 + [(320, 192)] * 2
    sampler = sdkit_data.BucketBatchSampler(buckets, batch_size=2, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 1
    assert sorted(row for batch in batches for row in batch) == list(range(10))  # every row once an epoch
    assert all(len({buckets[row] for row in batch}) == 1 for batch in batches)
    assert list(sdkit_data.BucketBatchSampler(buckets, 2, 7)) == batches  # the same seed, the same order
    sampler.set_epoch(1)
    assert list(sampler) != batches
    epoch_1 = list(sampler)
    sampler.set_epoch(1, skip=4)  # a resume inside epoch 1 gets the rest of that epoch's batches
    assert list(sampler) == epoch_1[4:] and len(sampler) == 2
    sampler.set_epoch(1)  # accelerate's own set_epoch(epoch) keeps the skip
    assert len(sampler) == 2


class ChunkOnly:
    """A dataset that serves rows only by slices of at most ``chunk``: a whole column at once is refused."""

    def __init__(self, columns, chunk):
        self.columns, self.chunk, self.reads = columns, chunk, 0

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.stop - index.start > self.chunk:
            raise AssertionError(f"read {index!r}: more than a chunk at once")
        self.reads += 1
        return {name: values[index] for name, values in self.columns.items()}


def test_the_checks_before_training_read_columns_a_chunk_at_a_time():
    """A whole column holds every image's bytes at once: memory would grow with the dataset."""
    rows = 2500
    dataset = ChunkOnly({"image": [{"bytes": png(8, 8, i % 256)} for i in range(rows)],
                         "text": [f"caption {i}" for i in range(rows)]}, chunk=1000)
    sdkit_data.verify_images(dataset, "image")
    sdkit_data.check_captions(dataset, "text")
    assert dataset.reads == 2 * 3


# --------------------------------------------------------------------------- cache keys and staleness


def test_the_content_hash_changes_with_the_image_and_says_what_was_hashed():
    _, a = sdkit_data.read_image({"bytes": png(32, 48, 10)}, 0)
    _, same = sdkit_data.read_image({"bytes": png(32, 48, 10)}, 0)
    _, changed = sdkit_data.read_image({"bytes": png(32, 48, 11)}, 0)
    assert a == same and a != changed
    # A cell that is already an image is hashed by its decoded pixels.
    image = Image.open(io.BytesIO(png(32, 48, 10)))
    _, pixels = sdkit_data.read_image(image, 0)
    _, pixels_changed = sdkit_data.read_image(Image.open(io.BytesIO(png(32, 48, 11))), 0)
    assert pixels != a and pixels != pixels_changed


def item(content="c1", flipped=False):
    return (content, "bucket", 192, 320, 0, 14, flipped)


def test_a_latent_is_found_only_under_everything_that_made_it(tmp_path):
    value = torch.randn(8, 40, 24)
    cache = sdkit_cache.LatentCache(tmp_path / "cache", "vae-a:float32:cpu", ram_bytes=0)
    cache.put(item(), value)
    # A new process (no RAM) reads it back from disk, exactly.
    again = sdkit_cache.LatentCache(tmp_path / "cache", "vae-a:float32:cpu", ram_bytes=0)
    assert torch.equal(again.get(item(), (8, 40, 24)), value) and again.stats["hits_disk"] == 1
    assert again.get(item(content="c2")) is None  # a changed image
    assert again.get(item(flipped=True)) is None
    assert again.get(("c1", "bucket", 256, 256, 0, 0, False)) is None  # another bucket
    other_vae = sdkit_cache.LatentCache(tmp_path / "cache", "vae-b:float32:cpu", ram_bytes=0)
    assert other_vae.get(item()) is None
    half = sdkit_cache.LatentCache(tmp_path / "cache", "vae-a:torch.float16:cpu", ram_bytes=0)
    assert half.get(item()) is None
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # written under a temporary name, then renamed


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "other_key"])
def test_a_damaged_entry_is_encoded_again_not_a_crash(tmp_path, damage):
    cache = sdkit_cache.LatentCache(tmp_path / "cache", "vae", ram_bytes=0)
    cache.put(item(), torch.randn(8, 40, 24))
    path = cache.path(sdkit_cache.entry_key("vae", item()))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif damage == "other_key":  # another entry's file put under this name
        cache.put(item(content="c2"), torch.randn(8, 40, 24))
        shutil.copy(cache.path(sdkit_cache.entry_key("vae", item(content="c2"))), path)
    fresh = sdkit_cache.LatentCache(tmp_path / "cache", "vae", ram_bytes=0)
    shape = (8, 20, 12) if damage == "wrong_shape" else (8, 40, 24)
    assert fresh.get(item(), shape) is None
    assert fresh.stats["rejected"] == 1 and not path.exists()


def test_a_cache_folder_others_can_write_is_refused(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(RunnerError, match="writable by anyone"):
        sdkit_cache.LatentCache(folder, "vae", ram_bytes=0)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(RunnerError, match="is a link"):
        sdkit_cache.LatentCache(link, "vae", ram_bytes=0)


def test_ram_stays_under_its_byte_limit_whatever_the_number_of_latents(tmp_path):
    one = torch.randn(8, 32, 32)
    size = one.element_size() * one.nelement()
    cache = sdkit_cache.LatentCache(tmp_path / "cache", "vae", ram_bytes=3 * size)
    for i in range(50):
        cache.put(item(content=f"c{i}"), torch.randn(8, 32, 32))
        assert cache.ram.bytes <= 3 * size
    assert len(cache.ram) == 3
    assert cache.get(item(content="c0"), (8, 32, 32)) is not None  # evicted from RAM, still on disk
    report = cache.report()
    assert report["entries"] == 50 and report["bytes"] >= 50 * size


def vae_weights(model: Path) -> Path:
    return model / "vae" / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def other_vae_model(tiny, tmp_path_factory):
    """The tiny pipeline with one VAE encoder weight changed: another VAE under the same layout."""
    model = tmp_path_factory.mktemp("other-vae") / "tiny-sd"
    shutil.copytree(tiny["model"], model)
    tensors = load_file(str(vae_weights(model)))
    name = next(k for k in sorted(tensors) if k.startswith("encoder.") and k.endswith("weight"))
    tensors[name] = tensors[name] + 0.05
    save_file(tensors, str(vae_weights(model)))
    return model


def test_the_vae_identity_is_its_files_not_its_name(tiny, other_vae_model, tmp_path):
    ours = sdkit_cache.vae_identity(str(tiny["model"]), None, vae=None)
    assert sdkit_cache.vae_identity(str(tiny["model"]), None, vae=None) == ours
    copy = tmp_path / "copy"
    shutil.copytree(tiny["model"], copy)
    assert sdkit_cache.vae_identity(str(copy), None, vae=None) == ours  # same files elsewhere: same latents
    assert sdkit_cache.vae_identity(str(other_vae_model), None, vae=None) != ours


# --------------------------------------------------------------------------- end to end on the tiny model


def cache_stats(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["latent_cache"]


@pytest.fixture(scope="module")
def photos(tiny, tmp_path_factory):
    """8 rows of three aspect ratios (square, tall, wide), as a parquet like pokemon-blip-captions."""
    import datasets

    sizes = [(24, 24)] * 4 + [(12, 36)] * 2 + [(40, 12)] * 2
    path = tmp_path_factory.mktemp("photos") / "photos.parquet"
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.Dataset.from_dict(
        {"image": [{"bytes": png(w, h, 20 * i), "path": None} for i, (w, h) in enumerate(sizes)],
         "text": [f"a photo number {i}" for i in range(len(sizes))]}, features=features).to_parquet(str(path))
    return path


def photos_argv(tiny, photos, out: Path, *extra):
    argv = base_argv(tiny, out, *extra)
    argv[argv.index("--dataset_name") + 1] = photos
    return argv


def test_buckets_train_on_non_square_images_and_report_the_cache(tiny, photos, tmp_path, run_runner, monkeypatch):
    shapes = []
    original = sdkit_data.collate

    def recording(examples):
        batch = original(examples)
        shapes.append(tuple(batch["pixel_values"].shape[-2:]))
        return batch

    monkeypatch.setattr(sdkit_data, "collate", recording)
    out = tmp_path / "out"
    assert run_runner("train_lora", photos_argv(tiny, photos, out, "--buckets", "--max_train_steps", "8")) == 0
    # At 16 px the buckets are (8, 32), (16, 16), (24, 8): the tall and wide images keep their shape.
    assert set(shapes) == {(16, 16), (32, 8), (8, 24)}
    stats = cache_stats(out)
    # Two epochs without --random_flip: each image encoded once, read back in the second epoch.
    assert stats["encoded"] == 8 and stats["entries"] == 8 and stats["hits_ram"] == 8
    assert stats["bytes"] > 0 and stats["dir"] == str(out / "latent_cache")


@pytest.mark.parametrize("mode", [["--center_crop"], ["--buckets"]])
def test_a_resumed_run_encodes_no_image_again(tiny, photos, tmp_path, run_runner, mode):
    extra = [*mode, "--max_train_steps", "8", "--checkpointing_steps", "4"]
    full = tmp_path / "full"
    assert run_runner("train_lora", photos_argv(tiny, photos, full, *extra)) == 0
    assert cache_stats(full)["encoded"] == 8  # the first epoch (steps 1-4) encodes every image

    # The run interrupted after checkpoint-4, resumed in its own folder (whose cache it finds).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint-4", "latent_cache"):
        shutil.copytree(full / name, resumed / name)
    shutil.copy(full / "run.json", resumed / "run.json")
    (resumed / "latent_cache").chmod(0o700)
    assert run_runner("train_lora", photos_argv(tiny, photos, resumed, *extra, "--resume_from_checkpoint",
                                                "latest")) == 0
    stats = cache_stats(resumed)
    assert stats["encoded"] == 0 and stats["hits_disk"] == 8
    assert_same_lora(full, resumed)  # latents read from disk are the ones the uninterrupted run used


def test_a_repeated_run_reuses_the_cache_but_not_for_a_changed_image_or_vae(tiny, other_vae_model, tmp_path,
                                                                             run_runner):
    cache = tmp_path / "shared-cache"
    extra = ["--center_crop", "--max_train_steps", "4", "--latent_cache_dir", cache]
    first = tmp_path / "first"
    assert run_runner("train_lora", base_argv(tiny, first, *extra)) == 0
    assert cache_stats(first)["encoded"] == 8

    # The same run again, started over in its folder: every latent comes from disk.
    assert run_runner("train_lora", base_argv(tiny, first, *extra, "--overwrite_output_dir")) == 0
    assert cache_stats(first)["encoded"] == 0 and cache_stats(first)["hits_disk"] == 8

    # Another VAE, same images, same cache folder: nothing is reused.
    argv = base_argv(tiny, tmp_path / "other-vae", *extra)
    argv[argv.index("--pretrained_model_name_or_path") + 1] = other_vae_model
    assert run_runner("train_lora", argv) == 0
    assert cache_stats(tmp_path / "other-vae")["encoded"] == 8
    assert cache_stats(tmp_path / "other-vae")["hits_disk"] == 0

    # One image changed in place: that one image is encoded again, the other seven are reused.
    import datasets

    edited = tmp_path / "edited.parquet"
    rows = datasets.Dataset.from_parquet(str(tiny["parquet"]))
    data = rows.to_dict()
    data["image"][3] = {"bytes": png(24, 24, 99), "path": None}
    datasets.Dataset.from_dict(data, features=rows.features).to_parquet(str(edited))
    argv = base_argv(tiny, tmp_path / "edited", *extra)
    argv[argv.index("--dataset_name") + 1] = edited
    assert run_runner("train_lora", argv) == 0
    stats = cache_stats(tmp_path / "edited")
    assert stats["hits_disk"] == 7
    assert stats["encoded"] == 2  # a batch with one miss is encoded whole (see train_lora.latent_parameters)
    assert os.stat(cache).st_mode & 0o777 == 0o700
