"""The bundle mirror: role sophon_mirror (nginx) serving the verified bundle, and hosts that pull from it
(sophon_sd_bundle_transport: mirror) instead of the control node pushing.

The fleet scenario provisions a mirror and a host that pulls everything from it, reruns both (changed=0)
and checks the mirror's installed state (tests/testinfra/test_mirror.py: read-only, no listings, exactly
the manifest's files). What needs a mirror to be tampered with, or bytes to be counted, is here.
One test host is both the mirror (playbooks/mirror.yml, nginx on port 8080) and the host that pulls from it
over its loopback, so the bytes it receives on its network interface are what the control node sent it.
Tests run in file order on that host: the mirror serves the bundle; a wheel and a source archive changed on
the mirror are refused and named; the mirror's own rerun puts them right; the venv then installs from it,
and the bytes the control node sent the host stay a small share of the wheelhouse a push would send
(the push itself is measured with SDKIT_MEASURE_PUSH=1). Last, since its bundle is newer
than the test bundle: the assets of a small bundle come from the mirror, and one changed there is refused
and named.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import ML_SITE_MOUNT, REPO, TEST_PROFILE, borrow_ml_venv, build_bundle

WHEELS = REPO / "bundle" / "wheelhouse" / TEST_PROFILE
WHEELHOUSE_TAR = REPO / "bundle" / f"wheelhouse-{TEST_PROFILE}.tar"
PODMAN_OPTIONS = [*ML_SITE_MOUNT]
DOCROOT = "/srv/sophon-sd-mirror"
SERVED = f"{DOCROOT}/wheelhouse/{TEST_PROFILE}"
MIRROR = {"sophon_sd_bundle_transport": "mirror", "sophon_sd_bundle_mirror_url": "http://127.0.0.1:8080"}
# The mirror host installs nginx from the bundle's apt repository.
MIRROR_PLAY = {"sophon_sd_mirror_hosts": "all", "sophon_mirror_profiles": [TEST_PROFILE], "sophon_apt_source": "bundle"}
# The smallest wheel: the one the mirror serves changed.
CHANGED = min(WHEELS.glob("*.whl"), key=lambda wheel: wheel.stat().st_size).name
ARCHIVE = "accelerate-0.16.0.tar.gz"
# What mirror mode may cost the control node per host (issue 20): module code and small files only.
MAX_MIRROR_BYTES = 5_000_000


def sent_to_host(host) -> int:
    """Bytes the host has received on its network interfaces (not loopback, where the mirror is): with the
    mirror on the host itself, that is what the control node sent it."""
    table = host.check_output("cat /proc/net/dev").splitlines()[2:]
    return sum(int(line.split(":", 1)[1].split()[0]) for line in table if line.split(":", 1)[0].strip() != "lo")


def recap(output: str) -> str:
    return output.split("PLAY RECAP", 1)[1]


def http(host, method: str, path: str) -> str:
    """The mirror's status code for METHOD on PATH, asked on the host itself."""
    return host.check_output(
        "python3 -c \"import sys, urllib.request, urllib.error\n"
        f"request = urllib.request.Request('http://127.0.0.1:8080{path}', method='{method}')\n"
        "try: print(urllib.request.urlopen(request).status)\n"
        "except urllib.error.HTTPError as error: print(error.code)\"").strip()


def test_the_mirror_serves_the_verified_bundle(throwaway_host):
    first = throwaway_host.play("mirror.yml", MIRROR_PLAY)
    assert not first.failed, first.output[-3000:]
    served = throwaway_host.check_output(f"sha256sum {SERVED}/{CHANGED}").split()[0]
    assert served == hashlib.sha256((WHEELS / CHANGED).read_bytes()).hexdigest()
    assert http(throwaway_host, "GET", f"/wheelhouse/{TEST_PROFILE}/{CHANGED}") == "200"
    # pip's page of links lists every wheel of the profile.
    page = throwaway_host.check_output(f"cat {SERVED}/index.html")
    assert all(wheel.name in page for wheel in WHEELS.glob("*.whl"))


def test_a_wheel_changed_on_the_mirror_is_refused_and_named(throwaway_host):
    throwaway_host.check_output(f"printf x >> {SERVED}/{CHANGED}")
    result = throwaway_host.play("stack.yml", MIRROR, tags="venv")
    assert result.failed
    message = [line for line in result.output.splitlines() if "did not serve" in line and "file(s)" in line]
    assert message, result.output[-3000:]
    assert f"wheelhouse/{TEST_PROFILE}/{CHANGED}" in message[0] and "changed file" in message[0]
    # Only the changed wheel is named; pip checked the others against the manifest's hashes.
    assert "1 file(s)" in message[0]
    # The hashes came from the control node's manifest, in pip's requirements file.
    requirements = throwaway_host.check_output("cat /opt/sophon-sd/requirements-mirror.txt")
    assert re.search(r"--hash=sha256:[0-9a-f]{64}", requirements) and "--hash" in requirements.splitlines()[-1]
    assert not throwaway_host.exists("/opt/sophon-sd/venv")


def test_a_source_archive_changed_on_the_mirror_is_refused_and_named(throwaway_host):
    throwaway_host.check_output(f"printf x >> {DOCROOT}/sources/{ARCHIVE}")
    result = throwaway_host.play("stack.yml", {**MIRROR, "sophon_upstream_source": "bundle"}, tags="upstream")
    assert result.failed
    message = [line for line in result.output.splitlines() if "did not serve" in line and "file(s)" in line]
    assert message, result.output[-3000:]
    assert f"sources/{ARCHIVE}" in message[0] and "changed file" in message[0] and "1 file(s)" in message[0]
    assert not throwaway_host.exists(f"/opt/sophon-sd/src/.archives/{ARCHIVE}")


def test_the_mirror_put_right_installs_and_sends_the_host_little(throwaway_host):
    # The mirror's own run finds both changed files against the manifest and serves the signed ones again.
    repaired = throwaway_host.play("mirror.yml", MIRROR_PLAY)
    assert not repaired.failed and re.search(r"changed=[1-9]", recap(repaired.output)), repaired.output[-3000:]
    assert throwaway_host.run(f"cd {DOCROOT} && sha256sum --check --quiet /etc/sophon-sd/mirror.sha256").returncode == 0

    borrow_ml_venv(throwaway_host, with_pip=True)
    before = sent_to_host(throwaway_host)
    first = throwaway_host.play("stack.yml", MIRROR, tags="venv")
    mirror_bytes = sent_to_host(throwaway_host) - before
    assert not first.failed, first.output[-3000:]
    # pip took the wheels from the mirror itself: no copy of them on the host, pushed or downloaded.
    assert not throwaway_host.exists("/opt/sophon-sd/wheelhouse")
    assert not throwaway_host.exists("/opt/sophon-sd/wheelhouse.tar")

    # Its rerun and --check (changed=0) are the fleet scenario's: its offline host pulls from its own mirror.
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "mirror-bytes.json").write_text(json.dumps(
        {"profile": TEST_PROFILE, "wheels": len(list(WHEELS.glob("*.whl"))), "mirror_bytes": mirror_bytes}))
    assert mirror_bytes <= MAX_MIRROR_BYTES, mirror_bytes
    # A push sends at least the wheelhouse tar.
    assert mirror_bytes * 20 < WHEELHOUSE_TAR.stat().st_size, mirror_bytes


@pytest.mark.skipif(not os.environ.get("SDKIT_MEASURE_PUSH"),
                    reason="a measurement, not a check: set SDKIT_MEASURE_PUSH=1 to push the wheelhouse and record its bytes")
def test_the_same_install_by_push_costs_the_wheelhouse(throwaway_host):
    """The figure docs/bundle.md quotes beside the mirror's: the same venv step by push, into another wheelhouse
    folder (a 300 MB copy over SSH: out of make test, where it cost minutes of both cores)."""
    before = sent_to_host(throwaway_host)
    pushed = throwaway_host.play("stack.yml", {"sophon_venv_wheelhouse_dir": "/opt/pushed-wheelhouse"}, tags="venv")
    push_bytes = sent_to_host(throwaway_host) - before
    assert not pushed.failed, pushed.output[-3000:]
    record = REPO / "build" / "mirror-bytes.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "push_bytes": push_bytes}))
    assert push_bytes >= WHEELHOUSE_TAR.stat().st_size, push_bytes


# The assets test's download share: a model file big enough that a push would show in the bytes sent.
ASSET_FILES = {"CompVis_SD14_pretrained_weights/unet/diffusion_pytorch_model.bin": 12_000_000,
               "dataset/data/train-00000-of-00001.parquet": 2_000}
ASSETS_ON_HOST = "/opt/sophon-sd/assets"


def test_assets_come_from_the_mirror_checked_against_the_manifest(throwaway_host, tmp_path):
    # A signed bundle with the test bundle's apt repository and the share's folders (make assets-sums).
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle/apt", bundle / "apt")
    shutil.copy2(REPO / "bundle/apt.tar", bundle / "apt.tar")
    for relative, size in ASSET_FILES.items():
        (bundle / "assets" / relative).parent.mkdir(parents=True, exist_ok=True)
        (bundle / "assets" / relative).write_bytes(hashlib.sha256(relative.encode()).digest() * (size // 32))
    subprocess.run(["make", "-s", "-C", str(REPO), "assets-sums", f"BUNDLE={bundle}"], check=True, capture_output=True)
    build_bundle(bundle)
    small = {"sophon_sd_bundle_dir": str(bundle)}
    served = throwaway_host.play("mirror.yml", {**MIRROR_PLAY, **small, "sophon_mirror_profiles": []})
    assert not served.failed, served.output[-3000:]

    pull = {**MIRROR, **small, "sophon_assets_items": ["CompVis_SD14_pretrained_weights", "dataset"]}
    before = sent_to_host(throwaway_host)
    first = throwaway_host.play("assets.yml", pull)
    sent = sent_to_host(throwaway_host) - before
    assert not first.failed, first.output[-3000:]
    for relative in [*ASSET_FILES, "SHA256SUMS"]:
        staged = throwaway_host.check_output(f"sha256sum {ASSETS_ON_HOST}/{relative}").split()[0]
        assert staged == hashlib.sha256((bundle / "assets" / relative).read_bytes()).hexdigest(), relative
    assert throwaway_host.run(f"cd {ASSETS_ON_HOST} && sha256sum --check --quiet SHA256SUMS").returncode == 0
    # The model file came over the mirror's loopback: the control node sent modules and small files only.
    assert sent <= MAX_MIRROR_BYTES and sent < sum(ASSET_FILES.values()) / 2, sent
    rerun = throwaway_host.play("assets.yml", pull)
    assert not rerun.failed and "changed=0" in recap(rerun.output), rerun.output[-3000:]
    checked = throwaway_host.play("assets.yml", pull, check=True)
    assert not checked.failed and "changed=0" in recap(checked.output), checked.output[-3000:]

    # A file changed on the mirror is refused by the manifest's sha256, and named; the host keeps no copy.
    dataset = "dataset/data/train-00000-of-00001.parquet"
    throwaway_host.check_output(f"printf x >> {DOCROOT}/assets/{dataset} && rm {ASSETS_ON_HOST}/{dataset}")
    refused = throwaway_host.play("assets.yml", pull)
    assert refused.failed
    message = [line for line in refused.output.splitlines() if "did not serve" in line and "file(s)" in line]
    assert message, refused.output[-3000:]
    assert f"assets/{dataset}" in message[0] and "changed file" in message[0] and "1 file(s)" in message[0]
    assert not throwaway_host.exists(f"{ASSETS_ON_HOST}/{dataset}")

    # The mirror's own rerun finds the changed asset against the manifest and serves the signed one again.
    repaired = throwaway_host.play("mirror.yml", {**MIRROR_PLAY, **small, "sophon_mirror_profiles": []})
    assert not repaired.failed and re.search(r"changed=[1-9]", recap(repaired.output)), repaired.output[-3000:]
    again = throwaway_host.play("assets.yml", pull)
    assert not again.failed, again.output[-3000:]
    assert throwaway_host.run(f"cd {ASSETS_ON_HOST} && sha256sum --check --quiet SHA256SUMS").returncode == 0
