"""The fixture generator's command line."""

from __future__ import annotations

import json


def test_cli_builds_the_download_share_layout(tmp_path, capsys):
    import make_tiny_fixtures

    assert make_tiny_fixtures.main([str(tmp_path), "--bundle", "--num_images", "3"]) == 0
    for folder in ("CompVis_SD14_pretrained_weights", "dataset", "sayakpau_sd_lora-t4", "SophgoTrained_lroa_weight"):
        assert (tmp_path / folder).is_dir()
    index = json.loads((tmp_path / "CompVis_SD14_pretrained_weights" / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["unet"][1] == "UNet2DConditionModel"
    assert len((tmp_path / "imagefolder" / "metadata.jsonl").read_text().splitlines()) == 3
    assert "model:" in capsys.readouterr().out
