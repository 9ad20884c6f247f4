"""A bundle mirror's installed state (role sophon_mirror), on any host that is one: nginx serves, read-only
and without listings, exactly the files of the verified manifest the last run recorded
(/etc/sophon-sd/mirror.sha256), from a docroot only root can change. Hosts that are not mirrors are skipped."""

import pytest

DOCROOT = "/srv/sophon-sd-mirror"
SUMS = "/etc/sophon-sd/mirror.sha256"
PORT = 8080


@pytest.fixture(scope="module")
def served(host) -> list[str]:
    """The served files' paths under the docroot, from the sums the mirror's last run wrote."""
    if not host.file(SUMS).exists:
        pytest.skip(f"not a bundle mirror ({SUMS} is absent)")
    return [line.split(None, 1)[1] for line in host.file(SUMS).content_string.splitlines() if line.strip()]


def status(host, method: str, path: str) -> str:
    """The mirror's HTTP status for METHOD on PATH, asked on the host itself."""
    return host.check_output(
        "python3 -c \"import urllib.request, urllib.error\n"
        f"request = urllib.request.Request('http://127.0.0.1:{PORT}{path}', method='{method}')\n"
        "try: print(urllib.request.urlopen(request).status)\n"
        "except urllib.error.HTTPError as error: print(error.code)\"").strip()


def test_mirror_serves_exactly_the_manifests_files(host, served):
    assert served, f"{SUMS} lists no files"
    check = host.run(f"cd {DOCROOT} && sha256sum --check --quiet {SUMS}")
    assert check.rc == 0, check.stdout + check.stderr
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    assert status(host, "GET", f"/{served[0]}") == "200"


def test_mirror_gives_no_listings_and_takes_nothing(host, served):
    folder = served[0].rsplit("/", 1)[0]
    assert status(host, "GET", f"/{folder}/") in ("403", "404")
    assert status(host, "POST", f"/{served[0]}") in ("403", "405")


def test_mirror_docroot_is_roots_and_nginx_cannot_change_it(host, served):
    found = host.check_output(f"find {DOCROOT} \\( ! -user root -o ! -group root -o -perm /022 \\) -printf '%m %u %p\\n' "
                              "| head -5")
    assert found == "", f"under {DOCROOT}, not root's or writable by others: {found}"
    assert host.run(f"runuser -u www-data -- touch {DOCROOT}/{served[0]}").rc != 0
