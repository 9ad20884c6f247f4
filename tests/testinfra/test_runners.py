"""The runners on a provisioned host: deployed, runnable as the runner user, and working end to end.

`make smoke` trains a tiny random model for a few steps and generates with the result; it runs
on the CPU, CUDA or a BM1684X chip alike, so this check is meaningful on any host of a fleet.
"""

import hashlib
import shlex

import pytest
import yaml
from conftest import KIT_ROOT, REPO

SMOKE = "/var/lib/sophon-sd/outputs/smoke"
TARGETS = ["help", "infer", "infer-lora", "train-fp32", "train-fp16", "smoke"]


def test_runners_are_deployed_root_owned(host):
    for runner in sorted(p.name for p in (REPO / "runners").glob("*.py")):
        deployed = host.file(f"{KIT_ROOT}/runners/{runner}")
        assert deployed.exists and deployed.user == "root", runner
        # Compared by checksum: some testinfra backends strip trailing whitespace from file contents.
        expected = hashlib.sha256((REPO / "runners" / runner).read_bytes()).hexdigest()
        assert deployed.sha256sum == expected, f"{runner} differs from the repo"


def test_host_makefile_lists_the_tutorials_targets(host):
    listing = host.check_output(f"make -C {KIT_ROOT} help")
    for target in TARGETS:
        assert f"make {target} " in listing


def test_train_targets_use_the_tutorials_flags(host):
    dry_run = host.check_output(f"make -C {KIT_ROOT} -n train-fp16")
    tutorial = yaml.safe_load((REPO / "data" / "train-flags.yml").read_text())
    assert "--resolution=512" in tutorial["flags"] and "--validation_prompt=cute dragon creature" in tutorial["flags"]
    for flag in ['--mixed_precision="fp16"', f'--pretrained_model_name_or_path="{tutorial["model"]}"',
                 *map(shlex.quote, tutorial["flags"]), "sd-pokemon-model-lora_fp16"]:
        assert flag in dry_run
    assert f"python3 {KIT_ROOT}/runners/sdkit_as_runner.py sophon-sd -- env" in dry_run, \
        "root must run the targets as the runner user, with no terminal"


@pytest.fixture(scope="module")
def smoke_run(host):
    return host.run(f"make -C {KIT_ROOT} smoke")


def test_smoke_trains_and_generates(host, smoke_run):
    assert smoke_run.rc == 0, smoke_run.stderr[-2000:]
    for output in ["lora/pytorch_lora_weights.safetensors", "lora/metrics.jsonl", "images/pokemon_lora.png"]:
        produced = host.file(f"{SMOKE}/{output}")
        assert produced.exists and produced.size > 0, output
        assert produced.user == "sophon-sd", f"{output} must belong to the runner user"
    assert host.file(f"{SMOKE}/lora/validation").is_directory
    assert len(host.file(f"{SMOKE}/lora/metrics.jsonl").content_string.splitlines()) == 6


def test_smoke_lora_loads_with_the_profiles_loaders(host, smoke_run, venv_python, host_profile):
    """Upstream's own loader reads the smoke run's LoRA: pipe.load_lora_weights in every profile, and on
    the attention-processor flow (diffusers 0.20) also unet.load_attn_procs, as the tutorial does."""
    assert smoke_run.rc == 0
    attn_procs = f"pipe.unet.load_attn_procs('{SMOKE}/lora');" if host_profile["training_flow"] == "attn_processors" else ""
    probe = (
        "from diffusers import StableDiffusionPipeline;"
        f"pipe = StableDiffusionPipeline.from_pretrained('{SMOKE}/fixtures/tiny-sd', safety_checker=None);"
        f"{attn_procs}"
        f"pipe.load_lora_weights('{SMOKE}/lora');"
        # LoRA weights in the UNet: attention processors' (0.20) or peft adapters' (0.29) parameters.
        "print(sum('lora' in name for name, _ in pipe.unet.named_parameters()))"
    )
    loaded = host.check_output(f"{venv_python} -c \"{probe}\" 2>/dev/null")
    assert int(loaded.strip().splitlines()[-1]) > 0
