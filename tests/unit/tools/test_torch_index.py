"""make wheelhouse takes a profile's torch and torchvision from the index the profile names (torch_index).

A local PEP 503 index on 127.0.0.1 serves this machine's CPU wheel of torch; a second one stands in for
the default index and serves a small wheel made here. Both stop when the test ends.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml

TOOL = Path(__file__).resolve().parents[3] / "tools" / "sdkit_bundle.py"
CPU_TORCH = sorted(Path("/opt/wheels").glob("torch-2.13.0+cpu-cp311-*.whl"))


class Index:
    """A simple index served from ROOT on 127.0.0.1; `requests` lists every path asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: List[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args) -> None:
                requests.append(urllib.parse.unquote(self.path))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def publish(root: Path, project: str, wheel: Path) -> None:
    """ROOT/simple/PROJECT/index.html linking to ROOT/files/<wheel> (a link to it, not a copy of 190 MB)."""
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / wheel.name).symlink_to(wheel)
    page = root / "simple" / project / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="../../files/{urllib.parse.quote(wheel.name)}">{wheel.name}</a></body></html>\n')


def small_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel with nothing in it but its metadata."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{rel},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text)}\n" for rel, text in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for rel, text in {**files, f"{name}-{version}.dist-info/RECORD": record}.items():
            archive.writestr(rel, text)
    return path


@pytest.fixture
def indexes(tmp_path) -> Iterator[tuple]:
    if not CPU_TORCH:
        pytest.skip("no CPU wheel of torch 2.13.0 for cp311 in /opt/wheels on this machine")
    publish(tmp_path / "torch-index", "torch", CPU_TORCH[-1])
    publish(tmp_path / "default-index", "sdkit-probe", small_wheel(tmp_path, "sdkit_probe", "1.0"))
    torch_index, default_index = Index(tmp_path / "torch-index"), Index(tmp_path / "default-index")
    yield torch_index, default_index
    torch_index.close()
    default_index.close()


def throwaway_profile(folder: Path, index_url: str, constraints: str) -> Path:
    profile = folder / "cpu-probe"
    profile.mkdir(parents=True)
    (profile / "profile.yml").write_text(yaml.safe_dump({"python": "3.11", "torch": "2.13.0", "torchvision": "",
                                                         "libraries": [], "torch_index": "local-cpu"}))
    (profile / "constraints.txt").write_text(constraints)
    (folder / "torch-indexes.yml").write_text(yaml.safe_dump({"local-cpu": index_url}))
    return folder


def wheelhouse(profiles: Path, bundle: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "wheelhouse", "--profiles-dir", str(profiles), "--bundle-dir",
                           str(bundle), "--profile", "cpu-probe"], capture_output=True, text=True, timeout=300, env=env)


def test_torch_comes_from_the_profiles_index_and_the_rest_from_the_default_one(tmp_path, indexes):
    torch_index, default_index = indexes
    profiles = throwaway_profile(tmp_path / "profiles", torch_index.url, "sdkit-probe==1.0\ntorch==2.13.0+cpu\n")
    # The default index is also an extra index, and this machine's wheel folder a find-links: neither may serve torch.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": default_index.url,
           "PIP_EXTRA_INDEX_URL": default_index.url, "PIP_FIND_LINKS": str(CPU_TORCH[-1].parent)}
    result = wheelhouse(profiles, tmp_path / "bundle", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"/files/{CPU_TORCH[-1].name}" in torch_index.requests
    assert not [path for path in torch_index.requests if "sdkit" in path]
    assert not [path for path in default_index.requests if "torch" in path]
    assert "/files/sdkit_probe-1.0-py3-none-any.whl" in default_index.requests
    with tarfile.open(tmp_path / "bundle" / "wheelhouse-cpu-probe.tar") as tar:
        assert sorted(tar.getnames()) == sorted([CPU_TORCH[-1].name, "sdkit_probe-1.0-py3-none-any.whl"])


def test_an_unreachable_torch_index_is_named_before_pip_runs(tmp_path, indexes):
    torch_index, _ = indexes
    url = torch_index.url
    torch_index.close()
    profiles = throwaway_profile(tmp_path / "profiles", url, "torch==2.13.0+cpu\n")
    result = wheelhouse(profiles, tmp_path / "bundle", {**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the torch index local-cpu ({url}, " in result.stderr and "did not answer for torch" in result.stderr
    assert not (tmp_path / "bundle" / "wheelhouse").exists()


@pytest.mark.parametrize("url", ["http://mirror.example/simple", "ftp://127.0.0.1/simple", "/srv/simple"])
def test_a_torch_index_without_https_is_refused(tmp_path, url):
    profiles = throwaway_profile(tmp_path / "profiles", url, "torch==2.13.0+cpu\n")
    result = wheelhouse(profiles, tmp_path / "bundle", dict(os.environ))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"local-cpu is {url!r}, not an https URL" in result.stderr


def test_a_profile_naming_an_unmapped_index_says_where_to_map_it(tmp_path):
    profiles = throwaway_profile(tmp_path / "profiles", "https://mirror.example/simple", "torch==2.13.0+cpu\n")
    (profiles / "torch-indexes.yml").write_text("other: https://mirror.example/simple\n")
    result = wheelhouse(profiles, tmp_path / "bundle", dict(os.environ))
    assert result.returncode == 2
    assert "takes torch from the index 'local-cpu', which" in result.stderr and "add `local-cpu: <the index's simple URL>`" in result.stderr


def test_an_index_whose_url_is_not_set_says_to_set_it(tmp_path):
    # The kit ships profiles/torch-indexes.yml with empty URLs: it names no index host; the operator sets one.
    profiles = throwaway_profile(tmp_path / "profiles", "", "torch==2.13.0+cpu\n")
    result = wheelhouse(profiles, tmp_path / "bundle", dict(os.environ))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "whose URL" in result.stderr and "leaves empty" in result.stderr and "set `local-cpu: <its https" in result.stderr
    assert not (tmp_path / "bundle" / "wheelhouse").exists()
