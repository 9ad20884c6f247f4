"""playbooks/assets.yml: the download share's folders reach the host intact, or nothing changes.

The control node's check of the folder (no SHA256SUMS, a changed or missing file) is a unit test of its action
plugin (tests/unit/roles/sophon_assets); here, that it stops the play before the host changes."""

import hashlib
import subprocess

import pytest
from conftest import REPO

ITEMS = ["CompVis_SD14_pretrained_weights", "dataset", "sayakpau_sd_lora-t4", "SophgoTrained_lroa_weight"]
FILES = {
    "CompVis_SD14_pretrained_weights/model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
    "CompVis_SD14_pretrained_weights/unet/diffusion_pytorch_model.bin": bytes(range(256)) * 64,
    "dataset/data/train-00000-of-00001.parquet": b"PAR1 stand-in rows",
    "sayakpau_sd_lora-t4/pytorch_lora_weights.bin": b"lora t4",
    "SophgoTrained_lroa_weight/pytorch_lora_weights.safetensors": b"lora bm1684x",
}


@pytest.fixture
def bundle(tmp_path):
    """A bundle/ with an assets folder in the share's layout and its SHA256SUMS from `make assets-sums`."""
    for relative, content in FILES.items():
        path = tmp_path / "assets" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    subprocess.run(["make", "-s", "-C", str(REPO), "assets-sums", f"BUNDLE={tmp_path}"], check=True,
                   capture_output=True)
    return tmp_path


def test_corrupt_asset_stops_before_the_host_changes(throwaway_host, bundle):
    (bundle / "assets/dataset/data/train-00000-of-00001.parquet").write_bytes(b"truncated")
    result = throwaway_host.play("assets.yml", {"sophon_assets_src": str(bundle / "assets")})
    assert result.failed
    assert "dataset/data/train-00000-of-00001.parquet: FAILED" in result.output
    assert not throwaway_host.exists("/opt/sophon-sd/assets")


def test_assets_are_staged_intact_and_a_rerun_changes_nothing(throwaway_host, bundle):
    variables = {"sophon_assets_src": str(bundle / "assets")}
    first = throwaway_host.play("assets.yml", variables)
    assert not first.failed, first.output[-2000:]
    for relative, content in FILES.items():
        staged = throwaway_host.check_output(f"sha256sum /opt/sophon-sd/assets/{relative}").split()[0]
        assert staged == hashlib.sha256(content).hexdigest(), relative
    assert sorted(throwaway_host.check_output("ls /opt/sophon-sd/assets").split()) == sorted(ITEMS + ["SHA256SUMS"])
    second = throwaway_host.play("assets.yml", variables)
    assert "changed=0" in second.output and "failed=0" in second.output
