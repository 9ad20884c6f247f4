"""train_lora.py end to end on the tiny pipeline: the tutorial's commands, resume, interrupts, bad input."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sdkit_lora

REPO = Path(__file__).resolve().parents[3]
RUNNERS = REPO / "runners"
# The tutorial the kit automates, kept beside the repository (not in it) by the project.
TUTORIAL = REPO.parent / "shared" / "seed" / "000_8490e3169b27f017.txt"

# The tutorial's two command lines, flag lines copied verbatim (seed/000_8490e3169b27f017.txt).
SEED_FP32 = r'''
        --mixed_precision="no" \
        --pretrained_model_name_or_path=$MODEL_NAME \
        --dataset_name=$DATASET_NAME --caption_column="text" \
        --resolution=512 --random_flip \
        --train_batch_size=1 \
        --num_train_epochs=10 --checkpointing_steps=500 \
        --learning_rate=1e-04 --lr_scheduler="constant" --lr_warmup_steps=0 \
        --seed=42 \
        --output_dir="sd-pokemon-model-lora_fp32" \
        --validation_prompt="cute dragon creature"
'''
SEED_FP16 = SEED_FP32.replace('--mixed_precision="no"', '--mixed_precision="fp16"').replace(
    "sd-pokemon-model-lora_fp32", "sd-pokemon-model-lora_fp16")

# Kept small so the whole file runs in well under two minutes on two cores.
SMALL = ["--resolution", "16", "--max_train_steps", "2", "--num_validation_images", "1", "--report_to", "none"]


def seed_argv(text: str, model: Path, dataset: Path):
    text = text.replace("\\\n", " ").replace("$MODEL_NAME", str(model)).replace("$DATASET_NAME", str(dataset))
    return shlex.split(text)


def base_argv(tiny, output_dir: Path, *extra):
    return ["--pretrained_model_name_or_path", tiny["model"], "--dataset_name", tiny["parquet"],
            "--resolution", "16", "--train_batch_size", "2", "--learning_rate", "1e-2", "--lr_warmup_steps", "0",
            "--seed", "7", "--report_to", "none", "--output_dir", output_dir, *extra]


def one_error(err: str) -> str:
    """The one error line among progress bars on stderr; fails on a traceback or a second error."""
    errors = re.findall(r"error: [^\r\n]*", err)  # it may follow an unfinished progress bar
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def lora_tensors(folder: Path):
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def assert_same_lora(a: Path, b: Path):
    ta, tb = lora_tensors(a), lora_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-5, atol=1e-6)


def test_seed_lines_match_the_tutorial():
    # A failure, not a skip: a test that skips wherever the file is missing checks nothing unnoticed.
    if not TUTORIAL.is_file():
        pytest.fail(f"the tutorial text is expected at {TUTORIAL} (../shared/seed/ from the repository root); "
                    "put the project's shared/ folder beside the repository")
    text = TUTORIAL.read_text()
    for line in SEED_FP32.strip().splitlines() + SEED_FP16.strip().splitlines():
        assert line.strip() in text


@pytest.fixture(scope="module")
def seed_fp32_run(tiny, tmp_path_factory, reset_accelerate):
    """The tutorial's fp32 command with the tiny model and dataset, run once for several tests."""
    import sdkit_env
    import train_lora

    workdir = tmp_path_factory.mktemp("fp32")
    cwd = os.getcwd()
    os.chdir(workdir)  # the tutorial's relative --output_dir lands here
    reset_accelerate()
    # As the job tool's units get it from the env file (EnvironmentFile=): run.json records it for the report.
    os.environ["SOPHON_SD_PROFILE"] = "tutorial-2023-cpu"
    try:
        argv = seed_argv(SEED_FP32, tiny["model"], tiny["parquet"]) + SMALL
        rc = sdkit_env.run_main(train_lora.main, argv)
    finally:
        del os.environ["SOPHON_SD_PROFILE"]
        os.chdir(cwd)
        reset_accelerate()
        os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    assert rc == 0
    return workdir / "sd-pokemon-model-lora_fp32"


def test_seed_fp32_command_trains_and_writes_outputs(seed_fp32_run):
    out = seed_fp32_run
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["epoch-0_0.png"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert set(lines[0]) == {"step", "epoch", "loss", "lr", "step_time_s"}
    assert lines[0]["lr"] == pytest.approx(1e-4)
    run = json.loads((out / "run.json").read_text())
    assert run["resolution"] == 16 and run["rank"] == 4 and run["finished"] is True


def test_run_json_records_the_settings_and_the_total_steps(seed_fp32_run):
    """sdkit_job reports step/total from run.json; the settings there are what a resume is checked against."""
    run = json.loads((seed_fp32_run / "run.json").read_text())
    assert run["total_steps"] == 2 and run["finished"] is True
    assert (run["learning_rate"], run["train_batch_size"], run["seed"], run["resolution"]) == (1e-4, 1, 42, 16)
    # What the report shows of a run besides the fingerprint (issue 20: a TINY run's report showed no settings).
    assert (run["validation_prompt"], run["profile"]) == ("cute dragon creature", "tutorial-2023-cpu")


def has_lora(unet) -> bool:
    """LoRA attention processors (diffusers 0.20) or a peft adapter (diffusers 0.29) are in place."""
    return (any("LoRA" in type(p).__name__ for p in unet.attn_processors.values())
            or bool(getattr(unet, "peft_config", None)))


def test_trained_lora_loads_with_the_profiles_loader_and_generates(seed_fp32_run, tiny):
    from diffusers import StableDiffusionPipeline

    def generate(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("cute dragon creature", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]

    base = generate(StableDiffusionPipeline.from_pretrained(tiny["model"], safety_checker=None))
    pipe = StableDiffusionPipeline.from_pretrained(tiny["model"], safety_checker=None)
    pipe.load_lora_weights(str(seed_fp32_run), weight_name="pytorch_lora_weights.safetensors")  # both flows' loader
    assert has_lora(pipe.unet)
    image = generate(pipe)
    assert image.shape == (16, 16, 3) and abs(image - base).max() > 0

    if not sdkit_lora.uses_peft():  # the tutorial's own call reads the same file
        pipe2 = StableDiffusionPipeline.from_pretrained(tiny["model"], safety_checker=None)
        pipe2.unet.load_attn_procs(str(seed_fp32_run))
        assert abs(generate(pipe2) - image).max() == 0


def test_trained_lora_is_in_the_flows_format(seed_fp32_run):
    keys = list(lora_tensors(seed_fp32_run))
    if sdkit_lora.uses_peft():
        assert all(k.startswith("unet.") and ".lora." in k and ".processor." not in k for k in keys), keys[:3]
    else:
        assert all(".processor." in k and "_lora." in k for k in keys), keys[:3]


def test_trained_lora_with_infer_runner(seed_fp32_run, tiny, tmp_path, run_runner):
    rc = run_runner("infer", ["--model", tiny["model"], "--lora", seed_fp32_run, "--output_dir", tmp_path,
                              "--steps", "2"])
    assert rc == 0 and (tmp_path / "pokemon_lora.png").is_file()


def test_seed_fp16_command_on_cpu_trains_fp32_with_warning(tiny, tmp_path, monkeypatch, run_runner, caplog):
    monkeypatch.chdir(tmp_path)
    argv = seed_argv(SEED_FP16, tiny["model"], tiny["parquet"]) + SMALL
    with caplog.at_level(logging.WARNING):
        assert run_runner("train_lora", argv) == 0
    assert "fp16 on the CPU is not supported" in caplog.text
    out = tmp_path / "sd-pokemon-model-lora_fp16"
    tensors = lora_tensors(out)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_no_validation_prompt_and_gradient_checkpointing(tiny, tmp_path, run_runner, monkeypatch):
    """Upstream crashes at the end without --validation_prompt and never applies --gradient_checkpointing."""
    import torch.utils.checkpoint as checkpoint_module

    calls = []
    original = checkpoint_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "checkpoint", counting)
    out = tmp_path / "out"
    rc = run_runner("train_lora", base_argv(tiny, out, "--max_train_steps", "2", "--gradient_checkpointing",
                                            "--train_data_dir", tiny["imagefolder"]))
    assert rc == 0
    assert calls, "gradient checkpointing was not used in the UNet"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert not (out / "validation").exists()
    assert any(t.abs().sum() > 0 for k, t in lora_tensors(out).items() if "up" in k)  # LoRA actually trained


def test_gradient_checkpointing_enabled_and_lora_gets_gradients(tiny):
    import train_lora

    _, _, _, _, unet = train_lora.load_models(str(tiny["model"]), None)
    unet.requires_grad_(False)
    train_lora.add_lora(unet, 4)
    train_lora.enable_gradient_checkpointing(unet)
    assert unet.is_gradient_checkpointing and unet.training
    out = unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32)).sample
    out.pow(2).mean().backward()
    grads = [p.grad for p in sdkit_lora.lora_layers(unet).parameters()]
    assert grads and all(g is not None for g in grads)


def test_imagefolder_dataset(tiny, tmp_path, run_runner):
    out = tmp_path / "out"
    argv = ["--pretrained_model_name_or_path", tiny["model"], "--train_data_dir", tiny["imagefolder"],
            "--resolution", "16", "--center_crop", "--max_train_steps", "1", "--report_to", "tensorboard",
            "--output_dir", out, "--train_batch_size", "4"]
    assert run_runner("train_lora", argv) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert list((out / "logs").rglob("events.out.tfevents*"))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny, tmp_path, run_runner):
    # 8 rows, batch 2: 4 steps per epoch; resuming at step 3 skips 3 batches, then crosses into epoch 1.
    extra = ["--max_train_steps", "7", "--checkpointing_steps", "3", "--random_flip"]
    full = tmp_path / "full"
    assert run_runner("train_lora", base_argv(tiny, full, *extra)) == 0
    assert sorted(p.name for p in full.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(full / "run.json", resumed / "run.json")
    assert run_runner("train_lora", base_argv(tiny, resumed, *extra, "--resume_from_checkpoint", "latest")) == 0
    assert_same_lora(full, resumed)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 5, 6, 7]
    full_losses = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    resumed_losses = [json.loads(line)["loss"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert resumed_losses == pytest.approx(full_losses[3:], rel=1e-5)


def test_checkpoints_total_limit(tiny, tmp_path, run_runner):
    out = tmp_path / "out"
    assert run_runner("train_lora", base_argv(tiny, out, "--max_train_steps", "3", "--checkpointing_steps", "1",
                                              "--checkpoints_total_limit", "2", "--no_cache")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not list(out.glob(".checkpoint-*"))


def interrupt_run(tiny, out: Path, env, signum: int, max_steps: int = 12):
    """Start a training run as a process, send ``signum`` after its second step; return (process, stderr)."""
    argv = [sys.executable, str(RUNNERS / "train_lora.py"),
            *map(str, base_argv(tiny, out, "--max_train_steps", str(max_steps), "--checkpointing_steps", "1000"))]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    return proc, stderr


def latest_step(out: Path) -> int:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints
    return int(checkpoints[-1].name.split("-")[1])


def test_ctrl_c_saves_checkpoint_and_resume_matches(tiny, tmp_path, subprocess_env, run_runner):
    out = tmp_path / "interrupted"
    proc, stderr = interrupt_run(tiny, out, subprocess_env, signal.SIGINT)
    assert proc.returncode == 130, stderr[-2000:]
    step = latest_step(out)
    assert step < 12 and f"checkpoint-{step}" in stderr and "Traceback" not in stderr
    assert not (out / "pytorch_lora_weights.safetensors").exists()

    # Resume with the same settings and compare with an uninterrupted run.
    target = ["--max_train_steps", "12", "--checkpointing_steps", "1000"]
    assert run_runner("train_lora", base_argv(tiny, out, *target, "--resume_from_checkpoint", "latest")) == 0
    straight = tmp_path / "straight"
    assert run_runner("train_lora", base_argv(tiny, straight, *target)) == 0
    assert_same_lora(out, straight)


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tiny, tmp_path, subprocess_env):
    """Issue 9 (SIGTERM loses up to 500 steps): a shutdown, systemctl stop or scancel sends SIGTERM."""
    out = tmp_path / "terminated"
    proc, stderr = interrupt_run(tiny, out, subprocess_env, signal.SIGTERM)
    assert proc.returncode == 130, stderr[-2000:]
    step = latest_step(out)
    assert "SIGTERM received" in stderr and f"interrupted at step {step}" in stderr and "Traceback" not in stderr
    assert json.loads((out / f"checkpoint-{step}" / "run.json").read_text())["step"] == step


def test_missing_column_lists_columns(tiny, tmp_path, run_runner, capsys):
    rc = run_runner("train_lora", base_argv(tiny, tmp_path / "o", "--caption_column", "caption"))
    err = capsys.readouterr().err
    assert rc == 2 and "--caption_column 'caption'" in err and "columns found: image, text" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_image_names_the_file(tiny, tmp_path, run_runner, capsys):
    folder = tmp_path / "images"
    shutil.copytree(tiny["imagefolder"], folder)
    (folder / "0003.png").write_bytes(b"not a png at all")
    rc = run_runner("train_lora", base_argv(tiny, tmp_path / "o", "--train_data_dir", folder,
                                            "--dataset_name", folder))
    err = capsys.readouterr().err
    assert rc == 2 and "0003.png" in err and "cannot read the image" in err


def test_unreadable_image_in_parquet_names_the_row(tiny, tmp_path, run_runner, capsys):
    import datasets

    broken = datasets.Dataset.from_parquet(str(tiny["parquet"]))
    broken = broken.cast_column("image", datasets.Image(decode=False))
    rows = broken.to_dict()
    rows["image"][5] = {"bytes": b"garbage", "path": None}
    path = tmp_path / "broken.parquet"
    datasets.Dataset.from_dict(rows, features=broken.features).to_parquet(str(path))
    rc = run_runner("train_lora", base_argv(tiny, tmp_path / "o", "--dataset_name", path))
    err = capsys.readouterr().err
    assert rc == 2 and "row 5" in err


def test_missing_model_folder(tiny, tmp_path, run_runner, capsys):
    argv = base_argv(tiny, tmp_path / "o")
    argv[1] = tmp_path / "no-such-model"
    assert run_runner("train_lora", argv) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "model_index.json" in err


def test_resume_from_another_runs_checkpoint_is_refused(seed_fp32_run, tiny, tmp_path, run_runner, capsys):
    out = tmp_path / "other"
    out.mkdir()
    assert run_runner("train_lora", base_argv(tiny, out, "--max_train_steps", "1", "--checkpointing_steps", "1",
                                              "--rank", "8")) == 0
    capsys.readouterr()
    # Same output folder, different rank: the folder and its checkpoints belong to another run.
    rc = run_runner("train_lora", base_argv(tiny, out, "--resume_from_checkpoint", "latest", "--max_train_steps", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "other settings" in err and "rank: 8 there, 4 now" in err


def test_checkpoint_outside_the_output_dir_is_refused(tiny, tmp_path, run_runner, capsys):
    """Issue 9 item 4 (checkpoint paths accepted from anywhere): load_state unpickles, so only the run's own."""
    out = tmp_path / "own"
    assert run_runner("train_lora", base_argv(tiny, out, "--max_train_steps", "1", "--checkpointing_steps", "1")) == 0
    capsys.readouterr()
    fresh = tmp_path / "fresh"
    rc = run_runner("train_lora", base_argv(tiny, fresh, "--resume_from_checkpoint", out / "checkpoint-1",
                                            "--max_train_steps", "1", "--checkpointing_steps", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "is not a checkpoint-N folder of --output_dir" in err and "pickles" in err
    assert len(err.strip().splitlines()) == 1 and not fresh.exists()
    # A link inside the folder to a checkpoint elsewhere is refused too ("latest" would pick it).
    fresh.mkdir()
    shutil.copy(out / "run.json", fresh / "run.json")
    (fresh / "checkpoint-1").symlink_to(out / "checkpoint-1")
    rc = run_runner("train_lora", base_argv(tiny, fresh, "--resume_from_checkpoint", "latest",
                                            "--max_train_steps", "1", "--checkpointing_steps", "1"))
    assert rc == 2 and "is not a checkpoint-N folder" in capsys.readouterr().err
    # So is a file anyone may have replaced.
    (out / "checkpoint-1" / "optimizer.bin").chmod(0o666)
    rc = run_runner("train_lora", base_argv(tiny, out, "--resume_from_checkpoint", "checkpoint-1",
                                            "--max_train_steps", "1", "--checkpointing_steps", "1"))
    assert rc == 2 and "writable by anyone" in capsys.readouterr().err


def test_every_flag_is_classified_for_the_run_identity():
    """Issue 9 (identity check misses learning rate, batch size, seed): a new flag must be placed in one list."""
    import train_lora

    flags = set(vars(train_lora.parse_args(["--pretrained_model_name_or_path", "m", "--dataset_name", "d"])))
    identity, other = set(train_lora.IDENTITY_FLAGS), set(train_lora.NOT_IDENTITY_FLAGS)
    assert not identity & other
    assert flags == identity | other
    assert {"learning_rate", "train_batch_size", "seed", "resolution", "rank", "max_train_steps",
            "num_train_epochs", "random_flip", "center_crop", "snr_gamma", "noise_offset"} <= identity


@pytest.fixture(scope="module")
def one_step_run(tiny, tmp_path_factory, reset_accelerate):
    """A 1-step run with a checkpoint: the folder later runs are checked against."""
    import sdkit_env
    import train_lora

    out = tmp_path_factory.mktemp("identity") / "out"
    reset_accelerate()
    try:
        rc = sdkit_env.run_main(train_lora.main, [str(a) for a in base_argv(
            tiny, out, "--max_train_steps", "1", "--checkpointing_steps", "1")])
    finally:
        reset_accelerate()
    assert rc == 0
    return out


@pytest.mark.parametrize("flag, value, shown", [
    ("--learning_rate", "0.5", "learning_rate: 0.01 there, 0.5 now"),
    ("--train_batch_size", "4", "train_batch_size: 2 there, 4 now"),
    ("--seed", "8", "seed: 7 there, 8 now"),
    ("--max_train_steps", "3", "max_train_steps: 1 there, 3 now"),
    ("--random_flip", None, "random_flip: False there, True now"),
    ("--snr_gamma", "5", "snr_gamma: None there, 5.0 now"),
])
def test_resume_with_other_settings_is_refused(one_step_run, tiny, run_runner, capsys, flag, value, shown):
    """Issue 9 (a changed learning rate, batch size or seed passes the run-identity check)."""
    extra = [flag] + ([value] if value else [])
    argv = base_argv(tiny, one_step_run, "--max_train_steps", "1", "--checkpointing_steps", "1",
                     "--resume_from_checkpoint", "latest")
    rc = run_runner("train_lora", argv + extra)
    err = capsys.readouterr().err
    assert rc == 2 and shown in err and "resume it with the same settings, or pass --overwrite_output_dir" in err
    assert len(err.strip().splitlines()) == 1


def test_rerun_into_an_existing_output_is_refused_unless_overwritten(tiny, tmp_path, run_runner, capsys):
    """Issue 9 (rerunning make train-fp16 into an existing OUTPUT restarts at step 0, overwriting checkpoints)."""
    out = tmp_path / "out"
    common = ["--max_train_steps", "2", "--checkpointing_steps", "1"]
    assert run_runner("train_lora", base_argv(tiny, out, *common)) == 0
    before = (out / "checkpoint-2" / "optimizer.bin").read_bytes()
    capsys.readouterr()
    assert run_runner("train_lora", base_argv(tiny, out, *common)) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints up to checkpoint-2 of this run" in err
    assert "--resume_from_checkpoint latest" in err and "--overwrite_output_dir" in err
    assert run_runner("train_lora", base_argv(tiny, out, "--learning_rate", "0.5", *common)) == 2
    assert "other settings (learning_rate" in capsys.readouterr().err
    assert (out / "checkpoint-2" / "optimizer.bin").read_bytes() == before
    # Starting over is explicit: the old checkpoints and metrics go, the new run's replace them.
    assert run_runner("train_lora", base_argv(tiny, out, "--learning_rate", "0.5", "--max_train_steps", "1",
                                              "--checkpointing_steps", "1", "--overwrite_output_dir")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((out / "run.json").read_text())["learning_rate"] == 0.5


def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(tiny, tmp_path, run_runner, capsys,
                                                                           monkeypatch):
    """Issue 9 (a full disk during a checkpoint gives a traceback and leaves .checkpoint-N.partial)."""
    import errno

    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def save_until_full(self, output_dir):
        if "checkpoint-2" not in output_dir:
            return save_state(self, output_dir)
        Path(output_dir).mkdir()
        (Path(output_dir) / "optimizer.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Accelerator, "save_state", save_until_full)
    out = tmp_path / "out"
    assert run_runner("train_lora", base_argv(tiny, out, "--max_train_steps", "3", "--checkpointing_steps", "1")) == 2
    err = one_error(capsys.readouterr().err)
    assert "cannot write checkpoint-2" in err and "No space left on device" in err and "checkpoint-1 is intact" in err
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    assert json.loads((out / "checkpoint-1" / "run.json").read_text())["step"] == 1


def test_resolution_not_a_multiple_of_8_is_refused(tiny, tmp_path, run_runner, capsys):
    """Issue 9 (early validation of flags)."""
    argv = base_argv(tiny, tmp_path / "o")
    argv[argv.index("--resolution") + 1] = "20"
    assert run_runner("train_lora", argv) == 2
    err = capsys.readouterr().err
    assert err == "error: --resolution 20 is not a positive multiple of 8 (the VAE turns each 8x8 block of " \
                  "pixels into one latent); use 16 or 24\n"


def write_parquet(tiny, path: Path, edit) -> Path:
    import datasets

    rows = datasets.Dataset.from_parquet(str(tiny["parquet"]))
    features = rows.features
    data = edit(rows.to_dict())
    if "text" in data and any(not isinstance(t, str) for t in data["text"]):
        features = None  # let datasets infer the column type
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    return path


@pytest.mark.parametrize("case, edit, says", [
    ("empty", lambda rows: {k: [] for k in rows}, "has no rows"),
    ("caption", lambda rows: {**rows, "text": [*rows["text"][:3], None, *rows["text"][4:]]},
     "caption of row 3 in column 'text' is NoneType"),
])
def test_bad_dataset_fails_before_the_models_load(tiny, tmp_path, run_runner, capsys, monkeypatch, case, edit, says):
    """Issue 9 (an empty dataset or a non-string caption fails late): one line, before minutes of model loading."""
    import train_lora

    def no_models(*args):
        raise AssertionError("the models were loaded before the dataset was checked")

    monkeypatch.setattr(train_lora, "load_models", no_models)
    path = write_parquet(tiny, tmp_path / f"{case}.parquet", edit)
    out = tmp_path / "o"
    rc = run_runner("train_lora", base_argv(tiny, out, "--dataset_name", path))
    assert rc == 2 and says in one_error(capsys.readouterr().err)
    assert not (out / "run.json").exists()  # a corrected rerun is not taken for another run


def test_bundle_layout_with_tutorial_hub_ids(tiny_bundle, tmp_path, run_runner, monkeypatch):
    monkeypatch.setenv("SOPHON_SD_ASSETS", str(tiny_bundle["bundle"]))
    argv = ["--pretrained_model_name_or_path", "CompVis/stable-diffusion-v1-4",
            "--dataset_name", "lambdalabs/pokemon-blip-captions", "--output_dir", tmp_path / "o", *SMALL]
    assert run_runner("train_lora", argv) == 0


def test_two_processes_with_accelerate_launch(tiny, tmp_path, subprocess_env):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
           str(RUNNERS / "train_lora.py"), *map(str, base_argv(tiny, out, "--max_train_steps", "3",
                                                               "--checkpointing_steps", "2", "--verbose"))]
    env = dict(subprocess_env, MASTER_PORT="29517")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "checkpoint-2").is_dir()
    assert "2 process(es)" in result.stderr
    # Gradients are averaged across processes: both end with the same LoRA weights.
    checksums = {line.split("checksum")[1].strip() for line in result.stderr.splitlines() if "checksum" in line}
    assert len(checksums) == 1, result.stderr[-3000:]


def test_hub_dataset_unreachable_says_what_to_do(tiny, tmp_path, run_runner, capsys, monkeypatch):
    monkeypatch.delenv("SOPHON_SD_ASSETS", raising=False)
    argv = base_argv(tiny, tmp_path / "o")
    argv[3] = "lambdalabs/pokemon-blip-captions"
    assert run_runner("train_lora", argv) == 2
    err = capsys.readouterr().err
    assert "lambdalabs/pokemon-blip-captions" in err and "SOPHON_SD_ASSETS" in err


def test_cached_latents_match_encoding_every_step(tiny, tmp_path, run_runner, monkeypatch):
    """The latent/text cache is a speed-up only: same result as upstream's encode-every-step loop.

    Both runs use v0.20.0's attention processor here: SDPA rounds differently, and Adam turns
    those last-bit differences of near-zero gradients into visible ones within a few steps (its
    own test below compares the gradients instead).
    """
    import train_lora

    monkeypatch.setattr(train_lora, "use_sdpa", lambda no_cache, device_type: False)
    extra = ["--max_train_steps", "6", "--random_flip", "--checkpointing_steps", "100"]
    assert run_runner("train_lora", base_argv(tiny, tmp_path / "cached", *extra)) == 0
    assert run_runner("train_lora", base_argv(tiny, tmp_path / "plain", *extra, "--no_cache")) == 0
    assert_same_lora(tmp_path / "cached", tmp_path / "plain")


def test_sdpa_only_for_the_cached_loop_and_not_on_tpu():
    import train_lora

    assert train_lora.use_sdpa(no_cache=False, device_type="cpu")
    assert train_lora.use_sdpa(no_cache=False, device_type="cuda")
    assert not train_lora.use_sdpa(no_cache=True, device_type="cpu")  # v0.20.0's step, processor included
    assert not train_lora.use_sdpa(no_cache=False, device_type="tpu")


@pytest.mark.skipif(sdkit_lora.uses_peft(), reason="LoRA attention processors exist only on the tutorial flow "
                    "(diffusers 0.20); diffusers 0.29's default processor is already SDPA")
def test_sdpa_lora_matches_v0_20_processor_and_saves_the_same_keys(tiny, tmp_path):
    """LoRAAttnProcessor2_0 computes what LoRAAttnProcessor does, with the same parameter names."""
    import train_lora

    _, _, _, _, unet = train_lora.load_models(str(tiny["model"]), None)
    unet.requires_grad_(False)
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 16, 32))
    results = []
    for sdpa in (False, True):
        torch.manual_seed(0)
        train_lora.add_lora(unet, 4, sdpa=sdpa)
        for proc in unet.attn_processors.values():  # LoRA "up" starts at zero; make it count
            for name, param in proc.named_parameters():
                torch.nn.init.normal_(param, std=0.1)
        loss = unet(*inputs).sample.pow(2).mean()
        loss.backward()
        results.append((loss.detach(), {f"{n}.{k}": v.grad for n, proc in unet.attn_processors.items()
                                        for k, v in proc.named_parameters()}))
        unet.save_attn_procs(str(tmp_path / str(sdpa)))
    (loss_classic, grads_classic), (loss_sdpa, grads_sdpa) = results
    torch.testing.assert_close(loss_sdpa, loss_classic, rtol=1e-5, atol=1e-6)
    assert grads_sdpa.keys() == grads_classic.keys()
    for key in grads_classic:
        torch.testing.assert_close(grads_sdpa[key], grads_classic[key], rtol=1e-4, atol=1e-6)
    assert lora_tensors(tmp_path / "True").keys() == lora_tensors(tmp_path / "False").keys()


# --------------------------------------------------------------------------- what loads code (issue 21 item 5)


def test_a_pickled_base_model_is_refused_before_anything_loads(tiny, tiny_pickled, tmp_path, run_runner, capsys,
                                                               monkeypatch):
    """A model folder with .bin weights only was loaded with torch.load's full unpickler: transformers loads a
    local pytorch_model.bin even with use_safetensors=True, so the runner checks the folder itself."""
    import sdkit_data

    def no_data(*args):
        raise AssertionError("the dataset was loaded before the model's weights were checked")

    with monkeypatch.context() as patch:
        patch.setattr(sdkit_data, "load_rows", no_data)
        argv = base_argv(tiny, tmp_path / "o", "--max_train_steps", "1")
        argv[1] = tiny_pickled
        assert run_runner("train_lora", argv) == 2
    error = one_error(capsys.readouterr().err)
    assert "text_encoder weights only as a pickle (pytorch_model.bin)" in error and "--allow_pickle" in error
    assert not (tmp_path / "o").exists()
    assert run_runner("train_lora", argv + ["--allow_pickle"]) == 0


# Writes a file when datasets imports it: the proof that the script ran. FOLDER is the dataset's folder
# (datasets imports a copy of the script from its modules cache, so __file__ is not there).
DATASET_SCRIPT = '''
from pathlib import Path
import datasets
import pyarrow.parquet as pq
HERE = Path("FOLDER")
HERE.parent.joinpath("script-ran").write_text("yes")


class Scripted(datasets.GeneratorBasedBuilder):
    def _info(self):
        features = {"image": datasets.Image(), "text": datasets.Value("string")}
        return datasets.DatasetInfo(features=datasets.Features(features))

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN)]

    def _generate_examples(self):
        for i, row in enumerate(pq.read_table(str(HERE / "rows.parquet")).to_pylist()):
            yield i, row
'''


@pytest.fixture
def scripted_dataset(tiny, tmp_path):
    """A local dataset folder that ships a loading script (<folder>/<folder>.py), as hub datasets did."""
    folder = tmp_path / "scripted"
    folder.mkdir()
    (folder / "scripted.py").write_text(DATASET_SCRIPT.replace("FOLDER", str(folder)))
    shutil.copy(tiny["parquet"], folder / "rows.parquet")
    return folder


def test_a_dataset_with_a_loading_script_is_refused_unless_allowed(scripted_dataset, tmp_path, tiny, run_runner,
                                                                   capsys):
    """datasets 2.14 imports a dataset's script without asking; the runner now refuses it in one line."""
    argv = base_argv(tiny, tmp_path / "o", "--max_train_steps", "1")
    argv[3] = scripted_dataset
    assert run_runner("train_lora", argv) == 2
    error = one_error(capsys.readouterr().err)
    assert f"ships a loading script ({scripted_dataset / 'scripted.py'})" in error
    assert "--allow_dataset_script" in error
    assert not (tmp_path / "script-ran").exists()
    assert run_runner("train_lora", argv + ["--allow_dataset_script"]) == 0
    assert (tmp_path / "script-ran").exists()


def test_a_hub_dataset_that_resolves_to_a_script_is_found_without_running_it(scripted_dataset, tmp_path):
    """hub_script resolves what datasets would load (the hub, or its cache offline) without importing it."""
    import sdkit_data

    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(scripted_dataset / "rows.parquet", plain)
    assert sdkit_data.hub_script(str(scripted_dataset), str(tmp_path / "cache"))
    assert sdkit_data.hub_script(str(plain), str(tmp_path / "cache")) is None
    assert not (tmp_path / "script-ran").exists()
