"""The wheelhouse pulled from a bundle mirror (sophon_sd_bundle_transport: mirror) instead of pushed.

The mirror here is a plain HTTP server on the test host's loopback, serving the repo bundle's unpacked
wheelhouse as bundle/ lays it out; what is under test is the pulling side, which checks every wheel
against the manifest the play verified on the control node. Tests run in file order on one host:
a mirror that serves a changed wheel is refused and names it, then the same mirror put right installs,
a rerun changes nothing, and the bytes the control node sent the host are compared with a push.
"""

import json
import re

from conftest import ML_SITE_MOUNT, REPO, TEST_PROFILE, borrow_ml_venv

WHEELS = REPO / "bundle" / "wheelhouse" / TEST_PROFILE
PODMAN_OPTIONS = ["-v", f"{WHEELS}:/srv/wheels:ro", "-v", f"{REPO / 'bundle' / 'apt'}:/srv/mirror/apt:ro",
                  "-v", f"{REPO / 'bundle' / 'sources'}:/srv/sources:ro", *ML_SITE_MOUNT]
SERVED = f"/srv/mirror/wheelhouse/{TEST_PROFILE}"
MIRROR = {"sophon_sd_bundle_transport": "mirror", "sophon_sd_bundle_mirror_url": "http://127.0.0.1:8080"}
# The smallest wheel: the one the mirror serves changed.
CHANGED = min(WHEELS.glob("*.whl"), key=lambda wheel: wheel.stat().st_size).name
HOST_WHEELHOUSE = "/opt/sophon-sd/wheelhouse"


def sent_to_host(host) -> int:
    """Bytes the host has received on its network interfaces (not loopback, where the mirror is): with the
    mirror on the host itself, that is what the control node sent it."""
    table = host.check_output("cat /proc/net/dev").splitlines()[2:]
    return sum(int(line.split(":", 1)[1].split()[0]) for line in table if line.split(":", 1)[0].strip() != "lo")


def recap(output: str) -> str:
    return output.split("PLAY RECAP", 1)[1]


def test_a_wheel_changed_on_the_mirror_is_refused_and_named(throwaway_host):
    throwaway_host.check_output(
        f"mkdir -p {SERVED} && ln -sf /srv/wheels/*.whl {SERVED}/ && rm {SERVED}/{CHANGED} && "
        f"cp /srv/wheels/{CHANGED} {SERVED}/{CHANGED} && printf x >> {SERVED}/{CHANGED} && "
        "systemd-run --unit sdkit-mirror python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/mirror && "
        "for i in $(seq 50); do python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/')\" "
        "2>/dev/null && break; sleep 0.2; done")
    result = throwaway_host.play("stack.yml", MIRROR, tags="venv")
    assert result.failed
    message = [line for line in result.output.splitlines() if "did not serve" in line and "file(s)" in line]
    assert message, result.output[-3000:]
    assert f"wheelhouse/{TEST_PROFILE}/{CHANGED}" in message[0] and "changed file" in message[0]
    # Only the changed wheel is named; the others downloaded and matched.
    assert "1 file(s)" in message[0]
    assert not throwaway_host.exists(f"{HOST_WHEELHOUSE}/{CHANGED}")
    assert not throwaway_host.exists("/opt/sophon-sd/venv")


def test_a_source_archive_changed_on_the_mirror_is_refused_and_named(throwaway_host):
    archive = "accelerate-0.16.0.tar.gz"
    throwaway_host.check_output(f"mkdir -p /srv/mirror/sources && ln -sf /srv/sources/* /srv/mirror/sources/ && "
                                f"rm /srv/mirror/sources/{archive} && cp /srv/sources/{archive} /srv/mirror/sources/ && "
                                f"printf x >> /srv/mirror/sources/{archive}")
    result = throwaway_host.play("stack.yml", {**MIRROR, "sophon_upstream_source": "bundle"}, tags="upstream")
    assert result.failed
    message = [line for line in result.output.splitlines() if "did not serve" in line and "file(s)" in line]
    assert message, result.output[-3000:]
    assert f"sources/{archive}" in message[0] and "changed file" in message[0] and "1 file(s)" in message[0]
    assert not throwaway_host.exists(f"/opt/sophon-sd/src/.archives/{archive}")


def test_the_mirror_put_right_installs_and_a_rerun_changes_nothing(throwaway_host):
    borrow_ml_venv(throwaway_host, with_pip=True)
    throwaway_host.check_output(f"ln -sf /srv/wheels/{CHANGED} {SERVED}/{CHANGED}")
    before = sent_to_host(throwaway_host)
    first = throwaway_host.play("stack.yml", MIRROR, tags="venv")
    mirror_bytes = sent_to_host(throwaway_host) - before
    assert not first.failed, first.output[-3000:]
    pulled = set(throwaway_host.check_output(f"ls {HOST_WHEELHOUSE}").split())
    assert pulled == {wheel.name for wheel in WHEELS.glob("*.whl")}
    assert not throwaway_host.exists(f"{HOST_WHEELHOUSE}.tar")

    rerun = throwaway_host.play("stack.yml", MIRROR, tags="venv")
    assert not rerun.failed and "changed=0" in recap(rerun.output), rerun.output[-3000:]
    checked = throwaway_host.play("stack.yml", MIRROR, tags="venv", check=True)
    assert not checked.failed and "changed=0" in recap(checked.output), checked.output[-3000:]

    # The same install by push, into another wheelhouse folder, for the comparison the README quotes.
    before = sent_to_host(throwaway_host)
    pushed = throwaway_host.play("stack.yml", {"sophon_venv_wheelhouse_dir": "/opt/pushed-wheelhouse"}, tags="venv")
    push_bytes = sent_to_host(throwaway_host) - before
    assert not pushed.failed, pushed.output[-3000:]
    (REPO / "build").mkdir(exist_ok=True)
    (REPO / "build" / "mirror-bytes.json").write_text(json.dumps(
        {"profile": TEST_PROFILE, "wheels": len(pulled), "mirror_bytes": mirror_bytes, "push_bytes": push_bytes}))
    # The wheelhouse alone is hundreds of MB; a mirror host gets module code and a manifest's worth of small files.
    assert mirror_bytes * 20 < push_bytes, (mirror_bytes, push_bytes)
    assert re.search(r"changed=[1-9]", recap(first.output))


def test_apt_reads_the_bundle_repository_from_the_mirror(throwaway_host):
    variables = {**MIRROR, "sophon_apt_source": "bundle"}
    result = throwaway_host.play("apt.yml", variables)
    assert not result.failed, result.output[-3000:]
    source = throwaway_host.check_output("cat /etc/apt/sources.list.d/sophon-sd-bundle.sources")
    assert "URIs: http://127.0.0.1:8080/apt/" in source and "Signed-By: /etc/apt/keyrings/sophon-sd-bundle.asc" in source
    assert not throwaway_host.exists("/opt/sophon-sd/apt.tar")
    # apt took the index from the mirror, checked by the bundle's key.
    assert "127.0.0.1:8080/apt" in throwaway_host.check_output("apt-cache policy git")
    rerun = throwaway_host.play("apt.yml", variables)
    assert not rerun.failed and "changed=0" in recap(rerun.output), rerun.output[-3000:]
