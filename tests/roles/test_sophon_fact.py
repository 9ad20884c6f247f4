"""The device discovery fact (roles/sophon_libsophon/files/sophon.fact) against fake hosts.

No containers: the fact's collect() takes the filesystem root and the bm-smi path, so each test builds
a small tree (sysfs PCI devices, /dev nodes, /proc/bmsophon, the libsophon symlink) under tmp_path.
bm-smi is the stand-in from tests/standins, which prints the real tool's text format.
"""

import importlib.machinery
import importlib.util
import os
from pathlib import Path

import pytest
from conftest import REPO

FACT = REPO / "roles/sophon_libsophon/files/sophon.fact"


@pytest.fixture(scope="module")
def fact():
    loader = importlib.machinery.SourceFileLoader("sophon_fact", str(FACT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("sophon_fact", loader))
    loader.exec_module(module)
    return module


@pytest.fixture
def bm_smi(tmp_path) -> Path:
    script = tmp_path / "bm-smi"
    script.write_text((REPO / "tests/standins/bm-smi").read_text().replace("@VERSION@", "0.4.9"))
    script.chmod(0o755)
    return script


def make_root(tmp_path: Path, pci=(), nodes=(), driver_version=None, libsophon="0.4.9") -> Path:
    root = tmp_path / "root"
    for bus, vendor, device in pci:
        folder = root / "sys/bus/pci/devices" / bus
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(f"{vendor}\n")
        (folder / "device").write_text(f"{device}\n")
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for index in nodes:
        (root / f"dev/bm-sophon{index}").touch()
    if nodes:
        (root / "dev/bmdev-ctl").touch()
    if driver_version:
        (root / "proc/bmsophon").mkdir(parents=True)
        (root / "proc/bmsophon/driver_version").write_text(f"{driver_version}\n")
    if libsophon:
        (root / f"opt/sophon/libsophon-{libsophon}").mkdir(parents=True)
        os.symlink(root / f"opt/sophon/libsophon-{libsophon}", root / "opt/sophon/libsophon-current")
    return root


def test_two_cards_seen_by_all_three_sources(fact, tmp_path, bm_smi, monkeypatch):
    monkeypatch.setenv("SOPHON_STANDIN_CHIPS", "2")
    root = make_root(tmp_path, pci=[("0000:01:00.0", "0x1f1c", "0x1686"), ("0000:02:00.0", "0x1f1c", "0x1686"),
                                    ("0000:03:00.0", "0x8086", "0x1533")],
                     nodes=[0, 1], driver_version="0.4.9")
    report = fact.collect(str(root), str(bm_smi))
    assert report["chip_count"] == 2 and report["source"] == "bm-smi"
    assert report["pci_devices"] == ["0000:01:00.0", "0000:02:00.0"]
    assert report["dev_nodes"] == ["/dev/bm-sophon0", "/dev/bm-sophon1"] and report["control_node"]
    assert [(c["index"], c["device"], c["bus_id"], c["on_pci"], c["status"]) for c in report["chips"]] == [
        (0, "tpu:0", "0000:01:00.0", True, "Active"), (1, "tpu:1", "0000:02:00.0", True, "Active")]
    assert report["chips"][0]["memory_total_mb"] == 12031
    assert report["driver_version"] == "0.4.9" and report["libsophon_version"] == "0.4.9"
    assert report["driver_loaded"] and report["bm_smi"]["rc"] == 0 and report["bm_smi"]["error"] is None


def test_no_card_reports_bm_smis_error(fact, tmp_path, bm_smi, monkeypatch):
    monkeypatch.delenv("SOPHON_STANDIN_CHIPS", raising=False)
    report = fact.collect(str(make_root(tmp_path)), str(bm_smi))
    assert report["chip_count"] == 0 and report["chips"] == [] and report["source"] is None
    assert "get devcount failed! no sophon device found" in report["bm_smi"]["error"]
    assert not report["driver_loaded"] and report["driver_version"] is None


def test_without_libsophon_the_device_nodes_count(fact, tmp_path):
    root = make_root(tmp_path, pci=[("0000:3b:00.0", "0x1f1c", "0x1686")], nodes=[0], libsophon=None)
    report = fact.collect(str(root), str(tmp_path / "no-bm-smi"))
    assert report["bm_smi"]["present"] is False and report["libsophon_version"] is None
    assert report["chip_count"] == 1 and report["source"] == "/dev/bm-sophon*"
    assert report["chips"][0]["bus_id"] == "0000:3b:00.0" and report["chips"][0]["dev_node"] == "/dev/bm-sophon0"


def test_card_on_pci_without_driver_is_not_usable(fact, tmp_path):
    root = make_root(tmp_path, pci=[("0000:3b:00.0", "0x1f1c", "0x1686")], libsophon=None)
    report = fact.collect(str(root), str(tmp_path / "no-bm-smi"))
    assert report["pci_devices"] == ["0000:3b:00.0"] and report["chip_count"] == 0


def test_bm_smi_that_needs_a_device_range_gets_one_from_the_nodes(fact, tmp_path, bm_smi, monkeypatch):
    # Some bm-smi versions refuse --text_format without --start_dev/--last_dev.
    strict = tmp_path / "bm-smi-strict"
    strict.write_text('#!/bin/sh\ncase "$*" in *--last_dev=*) exec "%s" "$@";; esac\n'
                      'echo "error dev!please input start_dev and last_dev."; exit 234\n' % bm_smi)
    strict.chmod(0o755)
    monkeypatch.setenv("SOPHON_STANDIN_CHIPS", "3")
    report = fact.collect(str(make_root(tmp_path, nodes=[0, 1, 2])), str(strict))
    assert report["chip_count"] == 3 and report["source"] == "bm-smi"


def test_text_lines_with_fault_values_parse(fact):
    lines = ("1684X-SC7 PCIE chip0: 0 000:81:00.0 Active 41C 47C  3.1W 880mV OFF 0 12% 25M 1000M 1000M  3.5A 512MB 12031MB \n"
             " F - F  chip1: 1  F  Fault  F   F   F   F   F   F  N/A  F   F   F   F  0MB 0MB \n")
    chips = fact.parse_bm_smi(lines)
    assert [(c["index"], c["bus_id"], c["status"]) for c in chips] == [(0, "0000:81:00.0", "Active"), (1, None, "Fault")]
    assert chips[0]["memory_used_mb"] == 512


def test_a_faulted_chip_is_listed_but_not_counted(fact, tmp_path, monkeypatch):
    faulty = tmp_path / "bm-smi-faulty"
    faulty.write_text("#!/bin/sh\necho '1684X-SC7 PCIE chip0: 0 000:01:00.0 Active 38C 42C  2.5W 900mV OFF 0 0% 25M "
                      "1000M 1000M  2.8A 0MB 12031MB '\necho ' F -SC7  F  chip1: 1 000:02:00.0 Fault   F   F   F   F  "
                      " F   F  N/A  F   F   F   F  0MB 0MB '\n")
    faulty.chmod(0o755)
    report = fact.collect(str(make_root(tmp_path)), str(faulty))
    assert [(c["device"], c["usable"]) for c in report["chips"]] == [("tpu:0", True), ("tpu:1", False)]
    assert report["chip_count"] == 1
