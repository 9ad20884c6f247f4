"""A corrupt bundle stops site.yml on the control node, before any host is contacted."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("tags", ["all", "apt,venv"])
def test_corrupt_bundle_file_is_named_before_any_host_changes(tmp_path, tags):
    """Whatever part of site.yml runs (issue 9, item 3: TAGS=apt used to skip the check)."""
    bundle = tmp_path / "bundle"
    # The pinned libraries' source archives are the smallest complete bundle (no wheels, no apt).
    shutil.copytree(REPO / "bundle/sources", bundle / "sources")
    (bundle / "vendor").mkdir()
    vendor_file = bundle / "vendor" / "sophon-libsophon_0.4.9_amd64.deb"
    vendor_file.write_bytes(b"the file Sophgo published")
    built = subprocess.run([sys.executable, str(REPO / "tools/sdkit_bundle.py"), "build", "--bundle-dir", str(bundle),
                            "--profile", "torch-2.13.0-py3.11", "--no-wheelhouse", "--no-apt"],
                           capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    vendor_file.write_bytes(b"the file, damaged on the way")

    # A host that does not exist: reaching any host at all would fail differently.
    result = subprocess.run(["ansible-playbook", str(REPO / "playbooks/site.yml"), "-i", "bm-node-unreachable,",
                             "-e", "sophon_sd_hosts=bm-node-unreachable", "-e", f"sophon_sd_bundle_dir={bundle}",
                             "--tags", tags],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"})
    assert result.returncode != 0
    assert "vendor/sophon-libsophon_0.4.9_amd64.deb" in result.stdout
    assert "bm-node-unreachable" not in result.stdout.split("PLAY RECAP", 1)[-1], "a host was contacted"
