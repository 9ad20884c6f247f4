"""The photos benchmark's cheap parts: the upstream script's refusal, both sides' flags, the step-time hook."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(REPO / "runners"), str(REPO / "tests" / "bench")]

pytest.importorskip("torch")

import bench_photos  # noqa: E402
import bench_sd14  # noqa: E402
import sdkit_lora  # noqa: E402

# The tutorial's fp32 command (seed: python train_text_to_image_lora.py ...), less what the benchmark
# changes (model, dataset, resolution, epochs, output folder) and --validation_prompt, which it leaves out.
SEED_FP32_FLAGS = {"--mixed_precision": "no", "--caption_column": "text", "--random_flip": None,
                   "--train_batch_size": "1", "--checkpointing_steps": "500", "--learning_rate": "1e-04",
                   "--lr_scheduler": "constant", "--lr_warmup_steps": "0", "--seed": "42"}


def flags(argv):
    """{flag: value or None} of a command line's options."""
    parsed, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            parsed[argv[i]] = value
            i += 1 if value is None else 2
        else:
            i += 1
    return parsed


def fake_checkout(root: Path, text: str) -> Path:
    script = root / bench_photos.UPSTREAM_SCRIPT
    script.parent.mkdir(parents=True)
    script.write_text(text)
    return script


def test_upstream_script_refuses_a_file_that_is_not_v0_20_0s(tmp_path):
    script = fake_checkout(tmp_path, "# an edited train_text_to_image_lora.py\n")

    with pytest.raises(SystemExit) as refused:
        bench_photos.upstream_script(script)
    message = str(refused.value)
    assert "is not that of diffusers v0.20.0's" in message and bench_photos.UPSTREAM_SHA256 in message
    assert "check out the tag v0.20.0" in message


def test_upstream_script_says_what_to_give_when_the_path_holds_no_script(tmp_path):
    with pytest.raises(SystemExit, match="no such file.*git checkout v0.20.0"):
        bench_photos.upstream_script(tmp_path)  # a folder, but no checkout


def test_upstream_script_takes_the_file_or_its_checkout_when_the_hash_matches(tmp_path, monkeypatch):
    import hashlib

    script = fake_checkout(tmp_path, "print('v0.20.0')\n")
    monkeypatch.setattr(bench_photos, "UPSTREAM_SHA256", hashlib.sha256(script.read_bytes()).hexdigest())

    assert bench_photos.upstream_script(script) == script
    assert bench_photos.upstream_script(tmp_path) == script


def test_upstream_site_without_torchvision_says_how_to_install_it_there(tmp_path):
    with pytest.raises(SystemExit, match="has no torchvision.*--require-hashes --target"):
        bench_photos.upstream_site(tmp_path)


def test_both_sides_get_the_seed_fp32_flags_and_only_upstream_runs_the_real_script(tmp_path):
    args = argparse.Namespace(resolution=256, epochs=10, images=4)
    argv = bench_photos.upstream_argv(Path("/x/train_text_to_image_lora.py"), Path("/m"), Path("/d"), args,
                                      tmp_path / "out")
    upstream = flags(argv)

    assert argv[:2] == [sys.executable, "/x/train_text_to_image_lora.py"]
    assert {k: upstream[k] for k in SEED_FP32_FLAGS} == SEED_FP32_FLAGS
    assert (upstream["--resolution"], upstream["--num_train_epochs"], upstream["--max_train_samples"]) == (
        "256", "10", "4")
    assert (upstream["--pretrained_model_name_or_path"], upstream["--dataset_name"]) == ("/m", "/d")
    # Nothing v0.20.0's parser lacks (the runner's own options), and no per-epoch validation.
    assert not {"--device", "--no_cache", "--buckets", "--report_to", "--validation_prompt"} & set(upstream)


def test_runner_side_adds_only_its_own_options_to_the_same_flags(tmp_path, monkeypatch):
    seen = {}

    def fake_run(argv, env, log, what):
        seen.update(argv=argv, env=env)
        return {"wall_s": 1.0}

    monkeypatch.setattr(bench_sd14, "run_process", fake_run)
    out = tmp_path / "runner"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    args = argparse.Namespace(resolution=256, epochs=10, images=4, threads=2)
    bench_sd14.run_loop({"model": Path("/m"), "parquet": Path("/d.parquet")}, out, args, cached=True,
                        extra=("--buckets",))
    runner = flags(seen["argv"])
    upstream = flags(bench_photos.upstream_argv(Path("/s"), Path("/m"), Path("/d.parquet"), args, out))

    assert {k: v for k, v in runner.items() if k in upstream} == upstream
    assert set(runner) - set(upstream) == {"--report_to", "--device", "--buckets"}
    assert "PYTHONPATH" not in seen["env"] or str(bench_photos.UPSTREAM_HOOK) not in seen["env"]["PYTHONPATH"]


def test_upstream_env_puts_the_hook_then_torchvision_first_on_its_path_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/already")
    env = bench_photos.upstream_env(tmp_path / "steps.jsonl", tmp_path / "site", 2, tmp_path / "cache")

    assert env["PYTHONPATH"].split(os.pathsep) == [str(bench_photos.UPSTREAM_HOOK), str(tmp_path / "site"),
                                                   "/already"]
    assert env["SDKIT_UPSTREAM_METRICS"] == str(tmp_path / "steps.jsonl")
    assert (env["OMP_NUM_THREADS"], env["HF_DATASETS_CACHE"]) == ("2", str(tmp_path / "cache"))
    assert os.environ["PYTHONPATH"] == "/already"  # the benchmark's own process is left as it was


def test_upstream_metrics_turns_the_hook_times_into_step_times_and_epochs():
    rows = [{"step": 1, "loss": 0.5, "time": 3.0}, {"step": 2, "loss": 0.4, "time": 5.5},
            {"step": 3, "loss": 0.3, "time": 6.5}, {"saved": 7.0}]

    metrics = bench_photos.upstream_metrics(rows, steps_per_epoch=2)

    assert [(m["epoch"], m["step_time_s"], m["loss"]) for m in metrics] == [(0, 3.0, 0.5), (0, 2.5, 0.4),
                                                                             (1, 1.0, 0.3)]


def test_upstream_metrics_refuses_a_run_that_never_saved_its_lora():
    with pytest.raises(SystemExit, match="never saved its LoRA"):
        bench_photos.upstream_metrics([{"step": 1, "loss": 0.5, "time": 1.0}], steps_per_epoch=1)


@pytest.mark.skipif(sdkit_lora.uses_peft(), reason="the hook wraps diffusers 0.20's API, as v0.20.0's script uses it")
def test_hook_logs_each_step_and_ends_the_process_once_the_lora_is_saved(tmp_path):
    steps = tmp_path / "steps.jsonl"
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'runners')!r})
        import accelerate, make_tiny_fixtures, train_lora
        accelerator = accelerate.Accelerator(cpu=True)
        accelerator.init_trackers("t")
        accelerator.log({{"train_loss": 0.25}}, step=1)
        accelerator.log({{"lr": 1e-4}}, step=1)
        unet = make_tiny_fixtures.build_models(make_tiny_fixtures.TINY, vocab_size=64)[0]
        train_lora.add_lora(unet, 4, False)  # v0.20.0's LoRAAttnProcessor, as the script sets
        unet.save_attn_procs({str(tmp_path / 'lora')!r})
        print("after the save")
    """)
    env = dict(os.environ, PYTHONPATH=str(bench_photos.UPSTREAM_HOOK), SDKIT_UPSTREAM_METRICS=str(steps))
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert "after the save" not in done.stdout  # the process ended at the saved LoRA
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    assert [sorted(row) for row in rows] == [["loss", "step", "time"], ["saved"]]
    assert rows[0]["step"] == 1 and rows[0]["loss"] == 0.25 and 0 <= rows[0]["time"] <= rows[1]["saved"]
    assert any((tmp_path / "lora").iterdir())
