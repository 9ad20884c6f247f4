"""tools/sdkit_measured.py: docs/measured.md matches its records, and record/render on a scratch folder."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import sdkit_measured as measured  # noqa: E402


def test_the_kits_measured_page_is_current(capsys):
    """Fails while docs/measured.md is stale against docs/measured/*.json, or a record is malformed."""
    code = measured.main(["render", "--check"])
    assert code == 0, capsys.readouterr().out


def test_every_kept_record_says_when_where_and_how_to_rerun():
    records, problems = measured.load_records(measured.RECORDS_DIR)
    assert not problems
    assert len(records) >= 10
    for record in records:
        assert record["date"][:4].isdigit(), record["name"]
        assert record["machine"], record["name"]
        assert record["command"].strip(), record["name"]


@pytest.fixture
def scratch(tmp_path: Path) -> dict:
    bench = tmp_path / "build" / "bench-threads.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps({"cpus": 2, "results": {"share": {"wall_s": 9.6}}, "losses": list(range(40))}))
    return {"bench": bench, "records": tmp_path / "docs" / "measured", "page": tmp_path / "docs" / "measured.md"}


def run(scratch: dict, *argv: str) -> int:
    return measured.main([*argv, "--records-dir", str(scratch["records"]), "--page", str(scratch["page"])])


def test_record_copies_the_figures_with_date_machine_and_command(scratch):
    assert run(scratch, "record", str(scratch["bench"]), "--name", "bench-threads",
               "--command", "make bench-threads") == 0
    record = json.loads((scratch["records"] / "bench-threads.json").read_text())
    assert record["command"] == "make bench-threads"
    assert set(record["machine"]) == {"nproc", "cpu", "memory", "load_average"}
    assert record["machine"]["nproc"] >= 1
    datetime.datetime.strptime(record["date"], "%Y-%m-%d %H:%M UTC")
    rows = dict(map(tuple, record["rows"]))
    assert rows["cpus"] == "2" and rows["results.share.wall_s"] == "9.6"
    # A loss per step would be a 40-number cell: its length and ends instead.
    assert rows["losses"] == "40 values: 0 ... 39"
    page = scratch["page"].read_text()
    assert "## bench-threads" in page and "`make bench-threads`" in page and "| results.share.wall_s | 9.6 |" in page


def test_a_new_run_keeps_the_records_heading_and_place(scratch):
    scratch["records"].mkdir(parents=True)
    (scratch["records"] / "bench-threads.json").write_text(json.dumps(
        {"name": "bench-threads", "order": 80, "title": "Trainer threads side by side"}))
    assert run(scratch, "record", str(scratch["bench"]), "--name", "bench-threads", "--command", "make x") == 0
    record = json.loads((scratch["records"] / "bench-threads.json").read_text())
    assert (record["title"], record["order"]) == ("Trainer threads side by side", 80)


def test_a_stale_page_fails_the_check_and_render_fixes_it(scratch, capsys):
    assert run(scratch, "record", str(scratch["bench"]), "--name", "one", "--command", "make x") == 0
    assert run(scratch, "render", "--check") == 0
    path = scratch["records"] / "one.json"
    record = json.loads(path.read_text())
    record["rows"][0][1] = "3"
    path.write_text(json.dumps(record))
    capsys.readouterr()
    assert run(scratch, "render", "--check") == 1
    assert "out of date" in capsys.readouterr().out
    assert run(scratch, "render") == 0
    assert run(scratch, "render", "--check") == 0


def test_a_missing_bench_file_says_what_to_run(scratch, capsys):
    code = run(scratch, "record", str(scratch["bench"].with_name("bench-fleet.json")), "--name", "x",
               "--command", "make bench-fleet")
    assert code == 2
    assert "run the benchmark that writes it first" in capsys.readouterr().out
    assert not scratch["records"].exists()


def test_a_bad_name_is_refused(scratch, capsys):
    assert run(scratch, "record", str(scratch["bench"]), "--name", "../x", "--command", "c") == 2
    assert "lower case letters" in capsys.readouterr().out


def test_records_with_long_cells_or_missing_fields_are_named(scratch, capsys):
    scratch["records"].mkdir(parents=True)
    good = {"name": "long", "title": "t", "date": "2026-12-07", "machine": "m", "command": "c", "source": "s",
            "columns": ["a", "b"], "rows": [["x", "y" * 201]]}
    (scratch["records"] / "long.json").write_text(json.dumps(good))
    (scratch["records"] / "bare.json").write_text(json.dumps({"name": "bare"}))
    assert run(scratch, "render") == 1
    out = capsys.readouterr().out
    assert "long.json: row 1 has a cell over 200 characters" in out
    assert "bare.json: no title" in out and "bare.json: no command" in out
