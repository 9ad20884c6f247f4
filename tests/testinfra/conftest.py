"""Shared fixtures for the installed-state checks.

These run against any host testinfra can reach (podman://, ansible://, ssh://). What a host should
hold comes from two places: the pins and patches in this repository, and the manifest the
sophon_upstream role leaves on the host (which source mode it used, where things live).
"""

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIT_ROOT = "/opt/sophon-sd"
ENV_FILE = "/etc/sophon-sd/env"


def not_roots(host, root: str = KIT_ROOT) -> list[str]:
    """Whatever under ROOT is not root:root, or is group- or other-writable (a link's own mode means
    nothing): root and every job run this code, so anyone who could write it could become root."""
    found = host.check_output(f"find {root} \\( ! -user root -o ! -group root -o \\( ! -type l -perm /022 \\) \\) "
                              "-printf '%u:%g %m %p\\n' | head -20")
    return found.splitlines()


@pytest.fixture(scope="module")
def sources_manifest(host) -> dict:
    manifest = host.file(f"{KIT_ROOT}/src/sources.json")
    assert manifest.exists, f"{manifest.path} missing: the sophon_upstream role has not run on this host"
    return json.loads(manifest.content_string)


@pytest.fixture(scope="module")
def venv_python(sources_manifest: dict) -> str:
    return f"{sources_manifest['venv']}/bin/python"


@pytest.fixture(scope="module")
def host_profile(host) -> dict:
    """The pins of the host's profile (profiles/<name>/profile.yml, named by SOPHON_SD_PROFILE in its env
    file): what the kit promises that host, whatever its own manifests say."""
    env = dict(line.split("=", 1) for line in host.file(ENV_FILE).content_string.splitlines()
               if "=" in line and not line.startswith("#"))
    name = env.get("SOPHON_SD_PROFILE", "")
    assert name, f"{ENV_FILE} names no profile (SOPHON_SD_PROFILE): rerun the sophon_host_env role"
    path = REPO / "profiles" / name / "profile.yml"
    assert path.is_file(), f"the host's profile {name} has no {path}"
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def pinned_libraries(host_profile: dict) -> dict[str, dict]:
    return {lib["name"]: lib for lib in host_profile["libraries"]}


def patch_changed_lines(patch_text: str) -> list[str]:
    """The added and removed lines of a unified diff, without file headers or context."""
    return [
        line
        for line in patch_text.splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++ ", "--- "))
    ]



@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Label each report with the host it ran against, for the per-host table below."""
    report = yield
    callspec = getattr(item, "callspec", None)
    testinfra_host = callspec.params.get("_testinfra_host") if callspec else None
    host = testinfra_host.backend.get_hostname() if testinfra_host else "(control node)"
    report.user_properties = [*report.user_properties, ("host", host)]
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line per host: on a fleet, which hosts need attention matters more than which test."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            # A passing setup or teardown is not a test; a failing one is a problem with the host.
            if outcome == "passed" and report.when != "call":
                continue
            host = dict(report.user_properties).get("host", "(unknown)")
            counts.setdefault(host, {"passed": 0, "failed": 0, "error": 0, "skipped": 0})[outcome] += 1
    if not counts:
        return
    terminalreporter.section("installed state per host")
    terminalreporter.write_line(f"{'host':<32} {'result':<6} {'passed':>6} {'failed':>6} {'skipped':>7}")
    for host, count in sorted(counts.items()):
        bad = count["failed"] + count["error"]
        verdict = "FAIL" if bad else "PASS"
        terminalreporter.write_line(f"{host:<32} {verdict:<6} {count['passed']:>6} {bad:>6} {count['skipped']:>7}")
