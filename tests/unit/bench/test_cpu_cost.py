"""cpu_cost.py: a container's CPU read from either cgroup layout, and the command's own CPU counted apart."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "bench"))

import cpu_cost  # noqa: E402


def test_a_containers_cpu_is_read_from_cgroup_v1_or_v2(tmp_path, monkeypatch):
    v1 = tmp_path / "cpuacct" / "libpod-aaa"
    v1.mkdir(parents=True)
    (v1 / "cpuacct.usage").write_text("2500000000\n")
    v2 = tmp_path / "machine.slice" / "libpod-bbb.scope"
    v2.mkdir(parents=True)
    (v2 / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    monkeypatch.setattr(cpu_cost, "CGROUP_ROOTS", [tmp_path / "cpuacct", tmp_path / "machine.slice"])

    assert cpu_cost.container_cpu_ns("aaa") == 2_500_000_000
    assert cpu_cost.container_cpu_ns("bbb") == 1_500_000_000
    assert cpu_cost.container_cpu_ns("gone") is None


def test_the_commands_cpu_excludes_the_samplers_podman_calls(monkeypatch, capsys):
    monkeypatch.setattr(cpu_cost, "hosts_named", lambda prefix: {})
    rc = cpu_cost.main(["--", sys.executable, "-c", "sum(range(20_000_000))"])
    figures = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rc == 0 and figures["hosts_cpu_s"] == 0
    assert 0.1 < figures["command_cpu_s"] <= figures["wall_s"] + 0.2
